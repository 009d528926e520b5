// Index math of the standalone cross-scan/cross-merge CUDA kernels, shared with the host-side test
// (cross_scan_index_test.cc). A CTA moves one 32 x 32 tile of one (batch, channel) plane; thread
// (tx, ty) of 32 x 8 handles rows ty, ty + 8, ty + 16, ty + 24. Row-major traversals (k = 0, 2) are
// written along w, column-major ones (k = 1, 3) along h after a transpose through shared memory,
// so every warp access is 32 consecutive elements.
#pragma once

#include <cute/layout.hpp>

#include <cstdint>

namespace visionssm::cross_scan {

constexpr int kTile = 32, kThreadsX = 32, kThreadsY = 8, kRowsPerThread = kTile / kThreadsY;

// CTA index -> (tile w, tile h, channel, batch), tile w fastest.
struct TileGrid {
  int64_t tiles_w, tiles_h, channels, batch;

  CUTE_HOST_DEVICE TileGrid(int64_t height, int64_t width, int64_t channels_, int64_t batch_)
      : tiles_w((width + kTile - 1) / kTile), tiles_h((height + kTile - 1) / kTile), channels(channels_),
        batch(batch_) {}
  CUTE_HOST_DEVICE auto shape() const { return cute::make_shape(tiles_w, tiles_h, channels, batch); }
  CUTE_HOST_DEVICE int64_t num_blocks() const { return cute::size(shape()); }
  CUTE_HOST_DEVICE auto decode(int64_t block) const { return cute::idx2crd(block, shape()); }
};

// (tx, ty, j) -> (row, col) in the tile: the layout of the row-wise pass. The column-wise pass
// uses it with row and col swapped.
using ThreadTile = cute::Layout<cute::Shape<cute::Int<kThreadsX>, cute::Int<kThreadsY>, cute::Int<kRowsPerThread>>,
                                cute::Stride<cute::_1, cute::Int<kTile>, cute::Int<kTile * kThreadsY>>>;

CUTE_HOST_DEVICE int tile_row(int tx, int ty, int j) { return ThreadTile{}(tx, ty, j) / kTile; }
CUTE_HOST_DEVICE int tile_col(int tx, int ty, int j) { return ThreadTile{}(tx, ty, j) % kTile; }

}  // namespace visionssm::cross_scan
