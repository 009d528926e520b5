// Work partition of the DCNv4 CUDA kernels, shared with the host-side test (dcnv4_index_test.cc)
// and mirrored by the float64 CPU model (py/ops/tests/dcnv4_cuda_model.py). Plain C++: no CUDA
// headers needed on the host.
//
// Forward: one thread per (output pixel q, group g, channel chunk c) with c fastest, so a warp's
// stores are consecutive channels. A chunk is kVec = 8 channels read with 16-byte loads (the vector
// path: group_channels % 8 == 0 and 16-byte aligned rows) or 1 channel (the scalar path, any shape).
// Backward: a unit = (q, g) is `lanes` consecutive threads of one CTA (units never straddle CTAs);
// lane l handles chunks l, l + lanes, ... and the unit's offset/mask gradients are reduced over its
// lanes through shared memory in a fixed tree (`tree_reduce_order`), so they are deterministic.
// Deterministic value gradient: every (q, g, point k, corner) is one entry e (`entry_index`) whose
// key is its destination row ((n*H + y)*W + x)*G + g of grad_value, or the sentinel `dests` when the
// corner is outside or the sample is skipped; a stable radix sort by key (cub) keeps entries of one
// destination in ascending e, and a gather pass sums each destination's segment in that order.
#pragma once

#include <cstdint>

#include "cc/kernels/dcnv4/dcnv4_params.h"

#if defined(__CUDACC__)
#define DCNV4_HD __host__ __device__ __forceinline__
#else
#define DCNV4_HD inline
#endif

namespace visionssm::dcnv4 {

constexpr int kVec = 8;                 // channels per thread on the vector path (16 bytes of 16-bit data)
constexpr int kBlockThreads = 256;      // forward and gather CTAs
constexpr int kMaxLanes = 32;           // backward: threads per (pixel, group) at most
constexpr int kCornersPerPoint = 4;
constexpr int64_t kWorkspaceAlign = 256;

// Kernel point k -> (i, j) (column i outer, row j inner, the centre skipped when remove_center),
// the order of py/ops/dcnv4.py _points and dcnv4_cpu.cc kernel_points.
struct Point {
  int64_t i, j;
};
DCNV4_HD Point kernel_point(int64_t k, int64_t kernel_h, int64_t kernel_w, bool remove_center) {
  const int64_t centre = (kernel_w / 2) * kernel_h + kernel_h / 2;
  const uint32_t flat = static_cast<uint32_t>(k + ((remove_center && k >= centre) ? 1 : 0));
  const uint32_t kh = static_cast<uint32_t>(kernel_h), i = flat / kh;  // 32-bit: see decode_forward
  return {i, flat - i * kh};
}

struct Geometry {
  int64_t pixels;   // N * Ho * Wo
  int64_t G, D, K;
  int vec;          // channels per chunk: kVec or 1
  int64_t chunks;   // D / vec
  int lanes;        // backward threads per (pixel, group)
  int units_per_block;
  int64_t dests;    // N * H * W * G: destination rows of grad_value (also the sort's sentinel key)
  int64_t entries;  // pixels * G * K * 4

  DCNV4_HD Geometry(const Params& p, int vec_)
      : pixels(p.batch * p.out_height * p.out_width), G(p.group), D(p.group_channels),
        K(p.kernel_h * p.kernel_w - (p.remove_center ? 1 : 0)),
        vec(vec_), chunks(vec_ > 0 ? p.group_channels / vec_ : 0),
        lanes(static_cast<int>(chunks < kMaxLanes ? (chunks > 0 ? chunks : 1) : kMaxLanes)),
        units_per_block(kBlockThreads / lanes), dests(p.batch * p.height * p.width * p.group),
        entries(pixels * p.group * K * kCornersPerPoint) {}

  // Forward (and gather): thread t -> (q or destination, g, chunk).
  DCNV4_HD int64_t forward_threads() const { return pixels * G * chunks; }
  DCNV4_HD int64_t forward_blocks() const { return (forward_threads() + kBlockThreads - 1) / kBlockThreads; }
  // Index decodes in 32 bits (64-bit division is a slow subroutine call on the GPU); the launchers
  // check that every count fits (`fits_32bit`).
  DCNV4_HD void decode_forward(int64_t t, int64_t* q, int64_t* g, int64_t* chunk) const {
    const uint32_t tt = static_cast<uint32_t>(t), nc = static_cast<uint32_t>(chunks), ng = static_cast<uint32_t>(G);
    const uint32_t pg = tt / nc;
    *chunk = tt - pg * nc;
    *q = pg / ng;
    *g = pg - (pg / ng) * ng;
  }
  DCNV4_HD int64_t gather_threads() const { return dests * chunks; }
  DCNV4_HD int64_t gather_blocks() const { return (gather_threads() + kBlockThreads - 1) / kBlockThreads; }

  // Backward: CTA b, thread x -> unit (q, g) and lane; valid = the unit exists.
  DCNV4_HD int backward_block_threads() const { return units_per_block * lanes; }
  DCNV4_HD int64_t backward_units() const { return pixels * G; }
  DCNV4_HD int64_t backward_blocks() const {
    return (backward_units() + units_per_block - 1) / units_per_block;
  }
  DCNV4_HD bool decode_backward(int64_t block, int thread, int64_t* q, int64_t* g, int* lane) const {
    const uint32_t unit = static_cast<uint32_t>(block) * units_per_block + static_cast<uint32_t>(thread) / lanes;
    const uint32_t ng = static_cast<uint32_t>(G > 0 ? G : 1);
    *lane = thread % lanes;
    *q = unit / ng;
    *g = unit - (unit / ng) * ng;
    return unit < static_cast<uint64_t>(backward_units());
  }
  DCNV4_HD bool fits_32bit() const {
    const int64_t lim = 0x7fffffff;
    return forward_threads() <= lim && gather_threads() <= lim && entries <= lim && dests < lim &&
           backward_blocks() * units_per_block <= lim;
  }

  DCNV4_HD int64_t entry_index(int64_t q, int64_t g, int64_t k, int corner) const {
    return ((q * G + g) * K + k) * kCornersPerPoint + corner;
  }
  DCNV4_HD int64_t entry_pixel(int64_t e) const {
    return static_cast<uint32_t>(e) / static_cast<uint32_t>(G * K * kCornersPerPoint);
  }
};

// The tree of the lane reduction: for stride s = half the next power of two >= lanes, down to 1,
// lane l < s adds lane l + s when that exists. The result is in lane 0.
DCNV4_HD int first_tree_stride(int lanes) {
  int s = 1;
  while (s < lanes) s *= 2;
  return s / 2;
}

// Bits of the radix sort's keys: enough for the sentinel `dests`.
DCNV4_HD int key_bits(int64_t dests) {
  int bits = 1;
  while (bits < 63 && (int64_t{1} << bits) <= dests) ++bits;
  return bits;
}

// The vector path needs group_channels % 8 == 0 and 16-byte aligned rows of every tensor read or
// written by channel chunks (value, out / grad_output, grad_value).
DCNV4_HD bool aligned16(std::uintptr_t ptr, const int64_t* strides, int n, int64_t elem_bytes) {
  if (ptr % 16 != 0) return false;
  for (int i = 0; i < n; ++i)
    if ((strides[i] * elem_bytes) % 16 != 0) return false;
  return true;
}

// Byte offsets of the deterministic backward's workspace: keys in/out, entry ids in/out, weights
// (float32), then cub's scratch (cub_bytes); each part 256-byte aligned.
struct Workspace {
  int64_t keys_in, keys_out, ids_in, ids_out, weights, cub, total;
};
DCNV4_HD int64_t align_up(int64_t x) { return (x + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }
DCNV4_HD Workspace workspace_layout(int64_t entries, int64_t cub_bytes) {
  const int64_t part = align_up(entries * 4);
  Workspace w{};
  w.keys_in = 0;
  w.keys_out = part;
  w.ids_in = 2 * part;
  w.ids_out = 3 * part;
  w.weights = 4 * part;
  w.cub = 5 * part;
  w.total = w.cub + align_up(cub_bytes);
  return w;
}

}  // namespace visionssm::dcnv4
