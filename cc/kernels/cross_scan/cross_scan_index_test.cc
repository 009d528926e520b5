// Host-side test of the standalone cross-scan/merge kernels' tiling (cross_scan_layout.h): for odd
// H/W every pixel is read once per pass, every element of the (B, 4, C, L) output written once, no
// index leaves its tensor, and the launch's CTA count equals the tile count.
#include <cstdio>
#include <vector>

#include "cc/kernels/cross_scan/cross_scan_layout.h"

namespace cs = visionssm::cross_scan;

static int failures = 0;
#define EXPECT(cond, msg, ...)                                                          \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      ++failures;                                                                       \
      std::fprintf(stderr, "FAIL %s:%d: %s | " msg "\n", __FILE__, __LINE__, #cond, __VA_ARGS__); \
    }                                                                                   \
  } while (0)

void check(int64_t B, int64_t C, int64_t H, int64_t W) {
  const cs::TileGrid grid(H, W, C, B);
  const int64_t L = H * W;
  EXPECT(grid.num_blocks() == B * C * ((H + 31) / 32) * ((W + 31) / 32), "%lld", (long long)grid.num_blocks());
  std::vector<int> out_seen(B * 4 * C * L, 0), row_pass(B * C * L, 0), col_pass(B * C * L, 0);
  for (int64_t block = 0; block < grid.num_blocks(); ++block) {
    const auto crd = grid.decode(block);
    const int64_t w0 = cute::get<0>(crd) * cs::kTile, h0 = cute::get<1>(crd) * cs::kTile;
    const int64_t c = cute::get<2>(crd), b = cute::get<3>(crd);
    for (int ty = 0; ty < cs::kThreadsY; ++ty)
      for (int tx = 0; tx < cs::kThreadsX; ++tx)
        for (int j = 0; j < cs::kRowsPerThread; ++j) {
          // row-wise pass (traversals 0, 2)
          int64_t h = h0 + cs::tile_row(tx, ty, j), w = w0 + cs::tile_col(tx, ty, j);
          if (h < H && w < W) {
            ++row_pass[(b * C + c) * L + h * W + w];
            ++out_seen[((b * 4 + 0) * C + c) * L + h * W + w];
            ++out_seen[((b * 4 + 2) * C + c) * L + L - 1 - (h * W + w)];
          }
          // column-wise pass (traversals 1, 3): row and column swapped
          h = h0 + cs::tile_col(tx, ty, j);
          w = w0 + cs::tile_row(tx, ty, j);
          if (h < H && w < W) {
            ++col_pass[(b * C + c) * L + h * W + w];
            ++out_seen[((b * 4 + 1) * C + c) * L + w * H + h];
            ++out_seen[((b * 4 + 3) * C + c) * L + L - 1 - (w * H + h)];
          }
        }
  }
  for (int v : row_pass) EXPECT(v == 1, "row pass covered a pixel %d times (H %lld W %lld)", v, (long long)H, (long long)W);
  for (int v : col_pass) EXPECT(v == 1, "column pass covered a pixel %d times (H %lld W %lld)", v, (long long)H, (long long)W);
  for (int v : out_seen) EXPECT(v == 1, "output element written %d times (H %lld W %lld)", v, (long long)H, (long long)W);
}

int main() {
  // Within a warp (fixed ty, j) the 32 lanes of the column-wise pass cover 32 consecutive h: coalesced.
  for (int j = 0; j < cs::kRowsPerThread; ++j)
    for (int tx = 1; tx < 32; ++tx) EXPECT(cs::tile_col(tx, 0, j) == cs::tile_col(tx - 1, 0, j) + 1, "lane %d", tx);
  const int64_t sizes[][4] = {{1, 1, 1, 1}, {2, 3, 7, 5}, {1, 2, 33, 31}, {2, 1, 56, 57}, {1, 3, 64, 64}, {1, 1, 1, 100}};
  for (const auto& s : sizes) check(s[0], s[1], s[2], s[3]);
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("cross_scan index math: all checks passed\n");
  return 0;
}
