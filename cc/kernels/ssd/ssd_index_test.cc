// Host-side test of the SSD CUDA kernels' index math (ssd_layout.h, ssd_tile_layout.h), for ragged
// sizes: the CuTe tiled MMA's accumulator partition covers each element of the 64 x 64 tile exactly
// once over the 128 threads, and its A/B partitions read every operand element (twice: the 2 x 2
// warp grid shares rows/columns); the chunk grid decodes every (batch, head, chunk) once; the
// output tiles write every (token, feature) / (token, state) once; the causal block loops meet
// every pair j <= i of a chunk exactly once, in both directions; every partial-sum index stays
// inside its Workspace size.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cc/kernels/ssd/ssd_layout.h"
#include "cc/kernels/ssd/ssd_tile_layout.h"

namespace sd = visionssm::ssd;

static int failures = 0;
#define EXPECT(cond, ...)                                                    \
  do {                                                                       \
    if (!(cond)) {                                                           \
      ++failures;                                                            \
      std::fprintf(stderr, "FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                     \
      std::fprintf(stderr, "\n");                                            \
    }                                                                        \
  } while (0)

template <typename T>
void check_mma_partition(const char* name) {
  using G = sd::TileGemm<T>;
  typename G::TiledMma mma;
  EXPECT(int(cute::size(mma)) == sd::kMmaThreads, "%s: %d threads", name, int(cute::size(mma)));
  std::vector<int> c(sd::kTile * sd::kTile, 0), a(c.size(), 0), b(c.size(), 0);
  const auto ident = cute::make_identity_tensor(typename G::TileShape{});
  for (int t = 0; t < sd::kMmaThreads; ++t) {
    auto thr = mma.get_thread_slice(t);
    auto tc = thr.partition_C(ident);
    auto ta = thr.partition_A(ident);
    auto tb = thr.partition_B(ident);
    EXPECT(int(cute::size(tc)) == sd::kTile * sd::kTile / sd::kMmaThreads, "%s: %d accumulators per thread", name,
           int(cute::size(tc)));
    for (int i = 0; i < int(cute::size(tc)); ++i) ++c[cute::get<0>(tc(i)) * sd::kTile + cute::get<1>(tc(i))];
    for (int i = 0; i < int(cute::size(ta)); ++i) ++a[cute::get<0>(ta(i)) * sd::kTile + cute::get<1>(ta(i))];
    for (int i = 0; i < int(cute::size(tb)); ++i) ++b[cute::get<0>(tb(i)) * sd::kTile + cute::get<1>(tb(i))];
  }
  for (size_t e = 0; e < c.size(); ++e) {
    EXPECT(c[e] == 1, "%s: accumulator (%zu, %zu) owned %d times", name, e / sd::kTile, e % sd::kTile, c[e]);
    EXPECT(a[e] == 2, "%s: A (%zu, %zu) read %d times", name, e / sd::kTile, e % sd::kTile, a[e]);
    EXPECT(b[e] == 2, "%s: B (%zu, %zu) read %d times", name, e / sd::kTile, e % sd::kTile, b[e]);
    if (c[e] != 1 || a[e] != 2 || b[e] != 2) break;
  }
  // The shared tile is K-major with a padded leading dimension: element (r, k) at r * kLd + k.
  const typename G::SmemLayout s{};
  EXPECT(s(1, 0) == G::kLd && s(0, 1) == 1 && G::kLd >= sd::kTile && G::kLd * int(sizeof(typename G::E)) % 16 == 0,
         "%s: shared layout", name);
}

sd::Params params(int64_t b, int64_t L, int64_t h, int64_t p, int64_t g, int64_t n, int64_t chunk, bool causal) {
  sd::Params q;
  q.batch = b, q.seqlen = L, q.heads = h, q.headdim = p, q.groups = g, q.dstate = n, q.chunk_size = chunk;
  q.causal = causal;
  return q;
}

void check_geometry(int64_t b, int64_t L, int64_t h, int64_t p, int64_t g, int64_t n, int64_t chunk, bool causal) {
  const sd::Geometry geo = sd::Geometry::of(params(b, L, h, p, g, n, chunk, causal));
  const sd::Workspace ws = sd::Workspace::of(geo);
  const int64_t Q = causal ? chunk : sd::kNonCausalChunk;
  EXPECT(geo.Q == Q && geo.chunks == (L + Q - 1) / Q, "chunks of L=%lld Q=%lld", (long long)L, (long long)Q);
  std::vector<int> chunk_seen(b * h * geo.chunks, 0), y_seen(b * L * h * p, 0), bc_seen(b * L * h * n, 0);
  for (int64_t bx = 0; bx < geo.chunk_block_count(); ++bx) {
    const sd::ChunkCoord cc = sd::decode_chunk(geo, bx);
    EXPECT(cc.batch < b && cc.head < h && cc.chunk < geo.chunks, "decode of %lld", (long long)bx);
    ++chunk_seen[(cc.batch * h + cc.head) * geo.chunks + cc.chunk];
    EXPECT(geo.head_group(cc.head) == cc.head / (h / g), "group of head %lld", (long long)cc.head);
    const int64_t q = geo.tokens(cc.chunk), t0 = cc.chunk * Q;
    EXPECT(q >= 1 && q <= Q && t0 + q <= L, "tokens of chunk %lld", (long long)cc.chunk);
    const int64_t bhc = geo.bhc(cc.batch, cc.head, cc.chunk);
    EXPECT(bhc == (cc.batch * h + cc.head) * geo.chunks + cc.chunk && (bhc + 1) * Q <= ws.dt, "bhc %lld", (long long)bhc);
    const int64_t so = geo.state_offset(cc.batch, cc.chunk, cc.head);
    EXPECT(so >= 0 && so + p * n <= ws.states, "state offset %lld", (long long)so);
    for (int64_t blk = 0; blk < geo.state_blocks; ++blk)
      EXPECT(geo.extra_index(bhc, blk) < ws.extra, "extra index of block %lld", (long long)blk);
    // chunk_scan / bwd_dx tiles (rows tokens, cols features) and bwd_dbc tiles (rows tokens, cols states)
    for (int64_t by = 0; by < geo.qblocks * geo.pblocks; ++by) {
      const sd::TileCoord tc = sd::decode_tile(by, geo.pblocks);
      if (tc.row0 >= q) continue;  // the kernels' early exit
      for (int r = 0; r < sd::kTile; ++r)
        for (int k = 0; k < sd::kTile; ++k)
          if (tc.row0 + r < q && tc.col0 + k < p) ++y_seen[((cc.batch * L + t0 + tc.row0 + r) * h + cc.head) * p + tc.col0 + k];
      for (int r = 0; r < sd::kTile; ++r)
        if (tc.row0 + r < Q) {
          const int64_t xz = geo.xz_index(bhc, tc.row0 + r, tc.col0 / sd::kTile);
          EXPECT(xz >= 0 && xz < ws.xz, "ws_xz index %lld of %lld", (long long)xz, (long long)ws.xz);
        }
      const int64_t dD = geo.dD_index(bhc, tc.row0 / sd::kTile, tc.col0);
      EXPECT(dD >= 0 && dD + std::min<int64_t>(sd::kTile, p - tc.col0) <= ws.dD, "dD index %lld", (long long)dD);
    }
    for (int64_t by = 0; by < geo.qblocks * geo.nblocks; ++by) {
      const sd::TileCoord tc = sd::decode_tile(by, geo.nblocks);
      if (tc.row0 >= q) continue;
      for (int r = 0; r < sd::kTile; ++r) {
        for (int k = 0; k < sd::kTile; ++k)
          if (tc.row0 + r < q && tc.col0 + k < n) ++bc_seen[((cc.batch * L + t0 + tc.row0 + r) * h + cc.head) * n + tc.col0 + k];
        if (tc.row0 + r < Q) {
          const int64_t dcs = geo.dcumsum_index(bhc, tc.row0 + r, tc.col0 / sd::kTile);
          EXPECT(dcs >= 0 && dcs < ws.dcumsum, "ws_dcumsum index %lld", (long long)dcs);
        }
      }
    }
    // The causal block loops: pairs (i, j) met from the i side (forward, dC) and the j side (dx, dB).
    if (causal) {
      std::vector<int> from_i(q * q, 0), from_j(q * q, 0);
      for (int64_t row0 = 0; row0 < q; row0 += sd::kTile) {
        const sd::BlockRange up = sd::blocks_up_to(row0), down = sd::blocks_from(row0, q);
        for (int64_t o0 = up.begin; o0 < up.end; o0 += sd::kTile)
          for (int r = 0; r < sd::kTile; ++r)
            for (int k = 0; k < sd::kTile; ++k)
              if (sd::causal_pair(row0 + r, o0 + k, q)) ++from_i[(row0 + r) * q + o0 + k];
        for (int64_t o0 = down.begin; o0 < down.end; o0 += sd::kTile)
          for (int r = 0; r < sd::kTile; ++r)
            for (int k = 0; k < sd::kTile; ++k)
              if (sd::causal_pair(o0 + k, row0 + r, q)) ++from_j[(o0 + k) * q + row0 + r];
      }
      for (int64_t i = 0; i < q; ++i)
        for (int64_t j = 0; j < q; ++j) {
          const int want = j <= i ? 1 : 0;
          EXPECT(from_i[i * q + j] == want && from_j[i * q + j] == want, "pair (%lld, %lld): %d / %d (q=%lld)",
                 (long long)i, (long long)j, from_i[i * q + j], from_j[i * q + j], (long long)q);
        }
    }
  }
  for (size_t i = 0; i < chunk_seen.size(); ++i) EXPECT(chunk_seen[i] == 1, "chunk slot %zu: %d", i, chunk_seen[i]);
  for (size_t i = 0; i < y_seen.size(); ++i)
    if (y_seen[i] != 1) {
      EXPECT(y_seen[i] == 1, "y element %zu written %d times (L=%lld p=%lld Q=%lld)", i, y_seen[i], (long long)L,
             (long long)p, (long long)Q);
      break;
    }
  for (size_t i = 0; i < bc_seen.size(); ++i)
    if (bc_seen[i] != 1) {
      EXPECT(bc_seen[i] == 1, "dB/dC element %zu written %d times", i, bc_seen[i]);
      break;
    }
  // State passing: (p, n) elements over state_blocks CTAs of kPassThreads.
  EXPECT(geo.state_blocks * sd::kPassThreads >= p * n && (geo.state_blocks - 1) * sd::kPassThreads < p * n,
         "state blocks %lld for p*n=%lld", (long long)geo.state_blocks, (long long)(p * n));
  EXPECT(ws.extra == b * h * geo.chunks * geo.state_blocks && ws.states == b * geo.chunks * h * p * n, "sizes");
}

int main() {
  check_mma_partition<__half>("fp16");
  check_mma_partition<__nv_bfloat16>("bf16");
  check_mma_partition<float>("tf32");
  // (batch, L, heads, headdim, groups, dstate, chunk, causal)
  check_geometry(2, 150, 4, 16, 2, 24, 64, true);    // ragged last chunk
  check_geometry(1, 200, 2, 70, 1, 70, 100, true);   // headdim, dstate and Q past one tile
  check_geometry(1, 256, 2, 64, 2, 64, 256, true);   // exact tiles
  check_geometry(1, 7, 3, 5, 3, 3, 1, true);         // chunk 1
  check_geometry(2, 300, 2, 20, 2, 16, 64, false);   // non-causal: 256-token blocks
  check_geometry(1, 513, 1, 130, 1, 129, 200, true); // three p and n blocks
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("ssd index test: ok\n");
  return 0;
}
