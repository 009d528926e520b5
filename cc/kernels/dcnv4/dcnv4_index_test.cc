// Host-side test of the DCNv4 CUDA kernels' work partition (dcnv4_layout.h): every output element,
// (pixel, group) unit, lane reduction step, sort entry and grad_value row is covered exactly once
// and stays inside its tensor, for odd sizes, both chunk widths and partial CTAs.
#include <cstdio>
#include <vector>

#include "cc/kernels/dcnv4/dcnv4_layout.h"

namespace dc = visionssm::dcnv4;

static int failures = 0;
#define EXPECT(cond, msg, ...)                                                                    \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      ++failures;                                                                                 \
      std::fprintf(stderr, "FAIL %s:%d: %s | " msg "\n", __FILE__, __LINE__, #cond, __VA_ARGS__); \
    }                                                                                             \
  } while (0)

dc::Params make(int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t G, int64_t D, int64_t kh, int64_t kw,
                bool rc) {
  dc::Params p;
  p.batch = N; p.height = H; p.width = W; p.out_height = Ho; p.out_width = Wo;
  p.group = G; p.group_channels = D; p.kernel_h = kh; p.kernel_w = kw; p.remove_center = rc;
  p.offset_channels = (3 * G * p.points() + 7) / 8 * 8;
  return p;
}

// Point order of dcnv4_cpu.cc kernel_points: column i outer, row j inner, centre skipped.
void check_points(int64_t kh, int64_t kw, bool rc) {
  int64_t k = 0;
  for (int64_t i = 0; i < kw; ++i)
    for (int64_t j = 0; j < kh; ++j) {
      if (rc && i == kw / 2 && j == kh / 2) continue;
      const dc::Point pt = dc::kernel_point(k, kh, kw, rc);
      EXPECT(pt.i == i && pt.j == j, "k %lld of %lldx%lld rc %d -> (%lld, %lld)", (long long)k, (long long)kh,
             (long long)kw, (int)rc, (long long)pt.i, (long long)pt.j);
      ++k;
    }
}

void check_forward(const dc::Params& p, int vec) {
  const dc::Geometry geo(p, vec);
  const int64_t C = p.group * p.group_channels, n_out = geo.pixels * C;
  std::vector<int> seen(n_out, 0);
  EXPECT(geo.forward_blocks() * dc::kBlockThreads >= geo.forward_threads() &&
             (geo.forward_blocks() - 1) * dc::kBlockThreads < geo.forward_threads(),
         "%lld blocks", (long long)geo.forward_blocks());
  for (int64_t t = 0; t < geo.forward_threads(); ++t) {
    int64_t q, g, chunk;
    geo.decode_forward(t, &q, &g, &chunk);
    EXPECT(q >= 0 && q < geo.pixels && g >= 0 && g < p.group && chunk >= 0 && chunk < geo.chunks, "t %lld", (long long)t);
    for (int i = 0; i < vec; ++i) {
      const int64_t o = q * C + g * p.group_channels + chunk * vec + i;
      if (o >= 0 && o < n_out) ++seen[o];
    }
    if (t % 32 != 0) {  // within a warp, the next chunk of the same (pixel, group) is the next 8 channels
      int64_t q0, g0, c0;
      geo.decode_forward(t - 1, &q0, &g0, &c0);
      if (q0 == q && g0 == g) EXPECT(chunk == c0 + 1, "t %lld", (long long)t);
    }
  }
  for (int64_t o = 0; o < n_out; ++o) EXPECT(seen[o] == 1, "output %lld written %d times", (long long)o, seen[o]);
  // The gather pass writes every grad_value element once.
  const int64_t n_val = geo.dests * p.group_channels;
  std::vector<int> val_seen(n_val, 0);
  for (int64_t t = 0; t < geo.gather_threads(); ++t) {
    const int64_t d = t / geo.chunks, chunk = t % geo.chunks;
    for (int i = 0; i < vec; ++i) ++val_seen[d * p.group_channels + chunk * vec + i];
  }
  for (int64_t o = 0; o < n_val; ++o) EXPECT(val_seen[o] == 1, "grad_value %lld written %d times", (long long)o, val_seen[o]);
}

void check_backward(const dc::Params& p, int vec) {
  const dc::Geometry geo(p, vec);
  EXPECT(geo.backward_block_threads() <= dc::kBlockThreads && geo.backward_block_threads() % geo.lanes == 0,
         "%d threads", geo.backward_block_threads());
  std::vector<int> unit_lanes(geo.backward_units(), 0), chunk_seen(geo.backward_units() * geo.chunks, 0);
  for (int64_t b = 0; b < geo.backward_blocks(); ++b) {
    int64_t first_unit_block = -1;
    for (int x = 0; x < geo.backward_block_threads(); ++x) {
      int64_t q, g;
      int lane;
      if (!geo.decode_backward(b, x, &q, &g, &lane)) continue;
      EXPECT(q < geo.pixels && g < p.group && lane < geo.lanes, "block %lld thread %d", (long long)b, x);
      const int64_t unit = q * p.group + g;
      if (lane == 0) first_unit_block = b;
      EXPECT(lane != 0 || x % geo.lanes == 0, "lane 0 at thread %d", x);  // a unit never straddles CTAs
      EXPECT(first_unit_block == b, "unit %lld", (long long)unit);
      ++unit_lanes[unit];
      for (int64_t c = lane; c < geo.chunks; c += geo.lanes) ++chunk_seen[unit * geo.chunks + c];
    }
  }
  for (int64_t u = 0; u < geo.backward_units(); ++u)
    EXPECT(unit_lanes[u] == geo.lanes, "unit %lld has %d lanes", (long long)u, unit_lanes[u]);
  for (size_t i = 0; i < chunk_seen.size(); ++i) EXPECT(chunk_seen[i] == 1, "chunk %zu seen %d times", i, chunk_seen[i]);
  // Sort entries: a bijection onto [0, entries), and entry_pixel inverts entry_index.
  std::vector<int> entry_seen(geo.entries, 0);
  for (int64_t q = 0; q < geo.pixels; ++q)
    for (int64_t g = 0; g < p.group; ++g)
      for (int64_t k = 0; k < geo.K; ++k)
        for (int corner = 0; corner < 4; ++corner) {
          const int64_t e = geo.entry_index(q, g, k, corner);
          if (e >= 0 && e < geo.entries) ++entry_seen[e];
          EXPECT(geo.entry_pixel(e) == q, "entry %lld", (long long)e);
        }
  for (int64_t e = 0; e < geo.entries; ++e) EXPECT(entry_seen[e] == 1, "entry %lld made %d times", (long long)e, entry_seen[e]);
  const int bits = dc::key_bits(geo.dests);
  EXPECT(bits < 32 && (int64_t{1} << bits) > geo.dests, "bits %d for %lld", bits, (long long)geo.dests);
  EXPECT(geo.fits_32bit(), "%lld entries", (long long)geo.entries);
}

// The lane tree: lane 0 ends with every lane's value exactly once.
void check_tree(int lanes) {
  std::vector<std::vector<int>> has(lanes, std::vector<int>(lanes, 0));
  for (int l = 0; l < lanes; ++l) has[l][l] = 1;
  const int first = dc::first_tree_stride(lanes);
  EXPECT(lanes == 1 ? first == 0 : (first < lanes && 2 * first >= lanes), "first stride %d for %d lanes", first, lanes);
  for (int s = first; s > 0; s /= 2)  // writes go to slots < s, reads come from slots >= s
    for (int l = 0; l < s && l + s < lanes; ++l)
      for (int j = 0; j < lanes; ++j) has[l][j] += has[l + s][j];
  for (int j = 0; j < lanes; ++j) EXPECT(has[0][j] == 1, "lanes %d: lane %d counted %d times", lanes, j, has[0][j]);
}

void check_workspace(int64_t entries, int64_t cub) {
  const dc::Workspace w = dc::workspace_layout(entries, cub);
  const int64_t starts[] = {w.keys_in, w.keys_out, w.ids_in, w.ids_out, w.weights, w.cub, w.total};
  for (int i = 0; i < 6; ++i) {
    EXPECT(starts[i] % dc::kWorkspaceAlign == 0, "part %d at %lld", i, (long long)starts[i]);
    EXPECT(starts[i + 1] - starts[i] >= (i < 5 ? entries * 4 : cub), "part %d too small", i);
  }
}

int main() {
  for (int64_t kh : {1, 2, 3, 5})
    for (int64_t kw : {1, 3, 4})
      for (bool rc : {false, true})
        if (!rc || (kh % 2 == 1 && kw % 2 == 1 && kh * kw > 1)) check_points(kh, kw, rc);
  // (N, H, W, Ho, Wo, G, D, kh, kw, remove_center)
  const int64_t shapes[][10] = {{1, 5, 7, 5, 7, 1, 8, 3, 3, 0},   {2, 9, 6, 9, 6, 3, 16, 3, 3, 1},
                                {1, 4, 4, 2, 2, 2, 64, 3, 3, 0},  {3, 7, 5, 4, 3, 4, 24, 1, 3, 0},
                                {1, 3, 3, 3, 3, 1, 512, 3, 3, 0}, {2, 6, 6, 6, 6, 5, 8, 5, 5, 1}};
  for (const auto& s : shapes) {
    const dc::Params p = make(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9] != 0);
    for (int vec : {dc::kVec, 1}) {
      check_forward(p, vec);
      check_backward(p, vec);
    }
  }
  // A scalar path with D not a multiple of 8.
  const dc::Params odd = make(2, 5, 4, 5, 4, 3, 5, 3, 3, false);
  check_forward(odd, 1);
  check_backward(odd, 1);
  for (int lanes = 1; lanes <= dc::kMaxLanes; ++lanes) check_tree(lanes);
  check_workspace(0, 0);
  check_workspace(1000, 777);
  // The vector path's alignment predicate.
  const int64_t good[3] = {64, 16, 8}, bad[3] = {64, 12, 8};
  EXPECT(dc::aligned16(0x1000, good, 3, 2), "%s", "16-bit rows of 8 elements");
  EXPECT(!dc::aligned16(0x1000, bad, 3, 2), "%s", "12 elements of 2 bytes is not 16-byte aligned");
  EXPECT(dc::aligned16(0x1000, bad, 3, 4), "%s", "12 floats = 48 bytes");
  EXPECT(!dc::aligned16(0x1008, good, 3, 2), "%s", "misaligned base");
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("dcnv4 index math: all checks passed\n");
  return 0;
}
