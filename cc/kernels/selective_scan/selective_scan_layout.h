// Index math of the selective-scan kernels, as CuTe layouts, shared by the kernels (device) and the
// host-side coverage test (selective_scan_index_test.cc), so the test checks the very maps the
// kernels use.
//
// Work split: one warp scans one (batch, channel) row, chunk by chunk; within a chunk lane j owns
// kItems consecutive positions (blocked), scans them sequentially and joins the other lanes with a
// warp scan. A CTA holds kRows warps = kRows consecutive channels of one group (the backward sums
// dB/dC over them in shared memory).
#pragma once

#include <cute/layout.hpp>

#include <cstdint>

namespace visionssm::selective_scan {

template <int kItems_, int kRows_, int kNTile_>
struct Geometry {
  static constexpr int kLanes = 32;
  static constexpr int kItems = kItems_;  // positions per lane per chunk
  static constexpr int kRows = kRows_;    // warps (channels) per CTA
  static constexpr int kNTile = kNTile_;  // states processed together per pass (register tile)
  static constexpr int kThreads = kLanes * kRows;
  static constexpr int kChunk = kLanes * kItems;

  // (item, lane) -> position in the chunk. Blocked, so a lane's items are contiguous in memory and
  // its loads are 16-byte vectors.
  using ChunkLayout =
      cute::Layout<cute::Shape<cute::Int<kItems>, cute::Int<kLanes>>, cute::Stride<cute::_1, cute::Int<kItems>>>;

  // Backward cross-row reduction of a (kNTile, kChunk) tile of dB/dC: (thread, iteration) -> tile
  // offset (position fastest), so a warp's stores are consecutive positions (coalesced).
  static_assert((kNTile * kChunk) % kThreads == 0, "reduction tile must split evenly over the CTA");
  static constexpr int kReduceIters = kNTile * kChunk / kThreads;
  using ReduceLayout = cute::Layout<cute::Shape<cute::Int<kThreads>, cute::Int<kReduceIters>>,
                                    cute::Stride<cute::_1, cute::Int<kThreads>>>;
  using ReduceTile = cute::Layout<cute::Shape<cute::Int<kChunk>, cute::Int<kNTile>>>;  // offset -> (pos, s)

  CUTE_HOST_DEVICE static int64_t position(int64_t chunk, int item, int lane) {
    return chunk * kChunk + ChunkLayout{}(item, lane);
  }
};

// CTA index -> (row block, group, batch). Row block fastest: neighbouring CTAs share batch and group
// and hence the B/C rows (L2 reuse).
struct RowTiling {
  int64_t blocks_per_group, groups, batch;

  CUTE_HOST_DEVICE RowTiling(int64_t channels_per_group, int64_t groups_, int64_t batch_, int rows)
      : blocks_per_group((channels_per_group + rows - 1) / rows), groups(groups_), batch(batch_) {}

  CUTE_HOST_DEVICE auto shape() const { return cute::make_shape(blocks_per_group, groups, batch); }
  CUTE_HOST_DEVICE int64_t num_blocks() const { return cute::size(shape()); }
  // (row block, group, batch) of CTA `block`.
  CUTE_HOST_DEVICE auto decode(int64_t block) const { return cute::idx2crd(block, shape()); }
};

// VMamba's four traversals of an H x W map (spec section 3.1): sequence index l of traversal k ->
// memory offset of its pixel, for a map with strides (h_stride, w_stride).
//   k = 0 row-major (w fastest), k = 1 column-major (h fastest), k = 2 / 3: k = 0 / 1 backwards.
// As CuTe layouts over the 1-D index: shape (W, H) : stride (w_stride, h_stride) for rows, shape
// (H, W) : stride (h_stride, w_stride) for columns. The div/mod runs on 32-bit shapes (H * W < 2^31
// is checked at launch), the offset on 64-bit strides.
CUTE_HOST_DEVICE int64_t cross2d_offset(int k, int l, int height, int width, int64_t h_stride, int64_t w_stride) {
  const int m = k >= 2 ? height * width - 1 - l : l;
  if (k % 2 == 0) return cute::make_layout(cute::make_shape(width, height), cute::make_stride(w_stride, h_stride))(m);
  return cute::make_layout(cute::make_shape(height, width), cute::make_stride(h_stride, w_stride))(m);
}

}  // namespace visionssm::selective_scan
