// Host-side test of the selective-scan kernels' index math: the same Geometry/RowTiling/cross2d
// CuTe layouts the kernels use (selective_scan_layout.h, selective_scan_config.h), enumerated on
// the CPU for ragged sizes. Checks that every element of every tensor is read/written by exactly
// one (CTA, warp, lane, chunk, item), that no index leaves its tensor, and that the CTA count of the
// launch equals the number of row tiles.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cc/kernels/selective_scan/selective_scan_config.h"

namespace ss = visionssm::selective_scan;

static int failures = 0;
#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      ++failures;                                           \
      std::fprintf(stderr, "FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                    \
      std::fprintf(stderr, "\n");                           \
    }                                                       \
  } while (0)

// Rows and positions: every (b, d, l) of a (batch, dim, L) tensor once; padding warps touch nothing.
template <typename Geo>
void check_rows(int64_t batch, int64_t dim, int64_t groups, int64_t L) {
  const int64_t cpg = dim / groups;
  const ss::RowTiling tiling(cpg, groups, batch, Geo::kRows);
  EXPECT(tiling.num_blocks() == batch * groups * ((cpg + Geo::kRows - 1) / Geo::kRows), "blocks %lld",
         (long long)tiling.num_blocks());
  const int64_t nchunks = (L + ss::kChunkLen - 1) / ss::kChunkLen;
  std::vector<int> seen(batch * dim * L, 0);
  for (int64_t block = 0; block < tiling.num_blocks(); ++block) {
    const auto crd = tiling.decode(block);
    const int64_t rb = cute::get<0>(crd), g = cute::get<1>(crd), b = cute::get<2>(crd);
    EXPECT(b < batch && g < groups && rb < tiling.blocks_per_group, "decode of block %lld", (long long)block);
    for (int warp = 0; warp < Geo::kRows; ++warp) {
      const int64_t c = rb * Geo::kRows + warp;
      if (c >= cpg) continue;  // padding warp (the kernels' row.valid)
      const int64_t d = g * cpg + c;
      for (int64_t chunk = 0; chunk < nchunks; ++chunk)
        for (int lane = 0; lane < 32; ++lane)
          for (int item = 0; item < Geo::kItems; ++item) {
            const int64_t l = Geo::position(chunk, item, lane);
            if (l >= L) continue;  // masked in load_items/store_items
            const int64_t idx = (b * dim + d) * L + l;
            EXPECT(idx >= 0 && idx < int64_t(seen.size()), "index %lld out of range", (long long)idx);
            if (idx >= 0 && idx < int64_t(seen.size())) ++seen[idx];
          }
    }
  }
  for (size_t i = 0; i < seen.size(); ++i)
    if (seen[i] != 1) {
      EXPECT(seen[i] == 1, "element %zu touched %d times (batch %lld dim %lld groups %lld L %lld)", i, seen[i],
             (long long)batch, (long long)dim, (long long)groups, (long long)L);
      break;
    }
}

// Backward dB/dC partial sums: every (slice, b, g, n, l) of (slices, batch, groups, N, L) written
// once by the (thread, iteration) split of each (chunk, state tile).
template <typename Geo>
void check_reduction(int64_t batch, int64_t dim, int64_t groups, int64_t N, int64_t L) {
  const int64_t cpg = dim / groups;
  const ss::RowTiling tiling(cpg, groups, batch, Geo::kRows);
  const int64_t slices = tiling.blocks_per_group, nchunks = (L + ss::kChunkLen - 1) / ss::kChunkLen;
  const int64_t ntiles = Geo::kNTile == 1 ? 1 : (N + Geo::kNTile - 1) / Geo::kNTile;
  std::vector<int> seen(slices * batch * groups * N * L, 0);
  // the (thread, iteration) -> tile offset split is a bijection
  std::vector<int> tile_seen(Geo::kNTile * Geo::kChunk, 0);
  for (int t = 0; t < Geo::kThreads; ++t)
    for (int it = 0; it < Geo::kReduceIters; ++it) ++tile_seen[typename Geo::ReduceLayout{}(t, it)];
  for (int v : tile_seen) EXPECT(v == 1, "reduction tile offset covered %d times", v);
  for (int64_t block = 0; block < tiling.num_blocks(); ++block) {
    const auto crd = tiling.decode(block);
    const int64_t slice = cute::get<0>(crd), g = cute::get<1>(crd), b = cute::get<2>(crd);
    const int64_t base = ((slice * batch + b) * groups + g) * N * L;
    for (int64_t chunk = 0; chunk < nchunks; ++chunk)
      for (int64_t tile = 0; tile < ntiles; ++tile)
        for (int t = 0; t < Geo::kThreads; ++t)
          for (int it = 0; it < Geo::kReduceIters; ++it) {
            const int off = typename Geo::ReduceLayout{}(t, it);
            const auto ps = typename Geo::ReduceTile{}.get_hier_coord(off);
            const int64_t l = chunk * Geo::kChunk + cute::get<0>(ps), n = tile * Geo::kNTile + cute::get<1>(ps);
            if (l >= L || n >= N) continue;
            const int64_t idx = base + n * L + l;
            EXPECT(idx < int64_t(seen.size()), "dB_part index out of range");
            if (idx < int64_t(seen.size())) ++seen[idx];
          }
  }
  for (size_t i = 0; i < seen.size(); ++i)
    if (seen[i] != 1) {
      EXPECT(seen[i] == 1, "dB_part element %zu written %d times (N %lld L %lld)", i, seen[i], (long long)N,
             (long long)L);
      break;
    }
}

// Cross-2D: each traversal visits every pixel once, as the spec's formulas say, for any strides.
void check_cross2d(int H, int W, int64_t sh, int64_t sw) {
  const int L = H * W;
  for (int k = 0; k < 4; ++k) {
    std::vector<int> seen(L, 0);
    for (int l = 0; l < L; ++l) {
      const int64_t off = ss::cross2d_offset(k, l, H, W, sh, sw);
      const int64_t h = off / sh, w = (off % sh) / sw;  // strides chosen so this inverts (sh > (W-1)*sw)
      EXPECT(h >= 0 && h < H && w >= 0 && w < W, "k %d l %d -> off %lld outside %dx%d", k, l, (long long)off, H, W);
      if (!(h >= 0 && h < H && w >= 0 && w < W)) return;
      const int64_t l0 = h * W + w, l1 = w * H + h;
      const int64_t want = k == 0 ? l0 : k == 1 ? l1 : k == 2 ? L - 1 - l0 : L - 1 - l1;
      EXPECT(want == l, "traversal %d: pixel (%lld, %lld) at %d, spec says %lld", k, (long long)h, (long long)w, l,
             (long long)want);
      ++seen[h * W + w];
    }
    for (int v : seen) EXPECT(v == 1, "traversal %d of %dx%d: pixel visited %d times", k, H, W, v);
  }
}

int main() {
  const int64_t lengths[] = {1, 7, 255, 256, 257, 3136, 2 * 2048 + 5};
  for (int64_t L : lengths) {
    check_rows<ss::FwdN1>(2, 12, 4, L);   // 3 channels per group: padding warps
    check_rows<ss::FwdTiled>(3, 10, 2, L);
    check_rows<ss::BwdN1>(2, 36, 4, L);   // 9 per group with 8 rows per CTA
    check_rows<ss::BwdTiled>(1, 6, 1, L);
  }
  for (int64_t L : {1, 200, 513}) {
    check_reduction<ss::BwdN1>(2, 36, 4, 1, L);
    for (int64_t N : {2, 3, 16, 17}) check_reduction<ss::BwdTiled>(2, 10, 2, N, L);
  }
  check_cross2d(1, 1, 1, 1);
  check_cross2d(7, 5, 5, 1);       // odd H, W, contiguous
  check_cross2d(56, 57, 57, 1);
  check_cross2d(5, 7, 7 * 3 + 2, 3);  // strided map (e.g. a channel-last view)
  check_cross2d(56, 56, 56 * 96, 96);
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("selective_scan index math: all checks passed\n");
  return 0;
}
