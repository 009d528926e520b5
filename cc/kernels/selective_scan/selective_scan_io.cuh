// Per-lane loads and stores of kItems consecutive sequence positions, converted to/from float.
// Not yet run on a GPU.
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "cc/kernels/common/cuda_math.cuh"
#include "cc/kernels/selective_scan/selective_scan_layout.h"

namespace visionssm::selective_scan {

// Positions at or past `seqlen` read as 0 (callers treat them as the identity step).
template <typename T, int kItems>
__device__ __forceinline__ void load_items(const T* row, int64_t start, int64_t seqlen, float (&out)[kItems]) {
  const T* p = row + start;
  static_assert((kItems * sizeof(T)) % 16 == 0, "a lane's segment must be whole 16-byte vectors");
  if (start + kItems <= seqlen && reinterpret_cast<std::uintptr_t>(p) % 16 == 0) {
    // CuTe: the lane's kItems elements as a static-size gmem tensor, copied to a register fragment
    // with 16-byte alignment asserted, so the copy is kItems * sizeof(T) / 16 LDG.128 instead of
    // kItems scalar loads (the scan is bandwidth-bound; wide loads keep the memory pipe full).
    auto src = cute::make_tensor(cute::make_gmem_ptr(p), cute::make_layout(cute::Int<kItems>{}));
    auto frag = cute::make_tensor<T>(cute::make_layout(cute::Int<kItems>{}));
    cute::copy(cute::AutoVectorizingCopyWithAssumedAlignment<128>{}, src, frag);
#pragma unroll
    for (int i = 0; i < kItems; ++i) out[i] = cuda::to_float(frag(i));
  } else {  // the ragged last chunk, or a row whose strides break 16-byte alignment
#pragma unroll
    for (int i = 0; i < kItems; ++i) out[i] = start + i < seqlen ? cuda::to_float(p[i]) : 0.f;
  }
}

template <typename T, int kItems>
__device__ __forceinline__ void store_items(T* row, int64_t start, int64_t seqlen, const float (&in)[kItems]) {
  T* p = row + start;
  if (start + kItems <= seqlen && reinterpret_cast<std::uintptr_t>(p) % 16 == 0) {
    // CuTe: register fragment -> gmem as 16-byte vector stores (STG.128), as in load_items.
    auto frag = cute::make_tensor<T>(cute::make_layout(cute::Int<kItems>{}));
#pragma unroll
    for (int i = 0; i < kItems; ++i) frag(i) = cuda::from_float<T>(in[i]);
    auto dst = cute::make_tensor(cute::make_gmem_ptr(p), cute::make_layout(cute::Int<kItems>{}));
    cute::copy(cute::AutoVectorizingCopyWithAssumedAlignment<128>{}, frag, dst);
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (start + i < seqlen) p[i] = cuda::from_float<T>(in[i]);
  }
}

// Cross-2D: position l of traversal k lives at cross2d_offset(k, l, ...) of the map (scalar
// accesses; the column-major traversals are strided, see the README's performance notes).
template <typename T, int kItems>
__device__ __forceinline__ void load_items_2d(const T* map, int k, int64_t start, int64_t height, int64_t width,
                                              int64_t h_stride, int64_t w_stride, float (&out)[kItems]) {
  const int h = int(height), w = int(width), first = int(start);
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    out[i] = first + i < h * w ? cuda::to_float(map[cross2d_offset(k, first + i, h, w, h_stride, w_stride)]) : 0.f;
}

template <typename T, int kItems>
__device__ __forceinline__ void store_items_2d(T* map, int k, int64_t start, int64_t height, int64_t width,
                                               const float (&in)[kItems]) {
  const int h = int(height), w = int(width), first = int(start);
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    if (first + i < h * w) map[cross2d_offset(k, first + i, h, w, w, 1)] = cuda::from_float<T>(in[i]);
}

}  // namespace visionssm::selective_scan
