// Device pieces both DCNv4 CUDA kernels use: chunk loads/stores of V channels converted to float32
// (V = 8: one 16-byte load for 16-bit types, two for float32), and the sampling position of a point.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cc/kernels/dcnv4/dcnv4_layout.h"
#include "cc/kernels/dcnv4/dcnv4_params.h"

namespace visionssm::dcnv4 {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T, int V>
__device__ __forceinline__ void load_chunk(const T* __restrict__ p, float (&x)[V]) {
  if constexpr (V == 1) {
    x[0] = to_float(p[0]);
  } else if constexpr (sizeof(T) == 4) {
    static_assert(V % 4 == 0);
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 f = *reinterpret_cast<const float4*>(p + i);
      x[i] = f.x; x[i + 1] = f.y; x[i + 2] = f.z; x[i + 3] = f.w;
    }
  } else {
    static_assert(V % 8 == 0 && sizeof(T) == 2);
#pragma unroll
    for (int i = 0; i < V; i += 8) {
      const uint4 u = *reinterpret_cast<const uint4*>(p + i);
      const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int j = 0; j < 8; ++j) x[i + j] = to_float(h[j]);
    }
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_chunk(T* __restrict__ p, const float (&x)[V]) {
  if constexpr (V == 1) {
    p[0] = from_float<T>(x[0]);
  } else if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < V; i += 4)
      *reinterpret_cast<float4*>(p + i) = make_float4(x[i], x[i + 1], x[i + 2], x[i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < V; i += 8) {
      uint4 u;
      T* h = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int j = 0; j < 8; ++j) h[j] = from_float<T>(x[i + j]);
      *reinterpret_cast<uint4*>(p + i) = u;
    }
  }
}

// Output pixel (n, ho, wo) of pixel index q.
struct Pixel {
  int64_t n, ho, wo;
};
__device__ __forceinline__ Pixel pixel_of(const Params& p, int64_t q) {
  // 32-bit divisions: pixel counts fit (Geometry::fits_32bit, checked before every launch).
  const uint32_t hw = static_cast<uint32_t>(p.out_height * p.out_width), ow = static_cast<uint32_t>(p.out_width);
  const uint32_t qq = static_cast<uint32_t>(q), n = qq / hw, r = qq - n * hw, ho = r / ow;
  return {n, ho, r - ho * ow};
}

// Sampling position of point k (pixel coordinates of the unpadded input), as in dcnv4_cpu.cc:
//   w = wo*sw - pw + half_w + (i*dw - half_w + dx)*s, h likewise; inside = the sample is taken.
struct Sample {
  float h, w;
  bool inside;
};
__device__ __forceinline__ Sample sample_position(const Params& p, const Pixel& px, int64_t k, float dx, float dy) {
  const int64_t half_w = p.dilation_w * (p.kernel_w - 1) / 2, half_h = p.dilation_h * (p.kernel_h - 1) / 2;
  const Point pt = kernel_point(k, p.kernel_h, p.kernel_w, p.remove_center);
  const float s = static_cast<float>(p.offset_scale);
  const float base_w = static_cast<float>(px.wo * p.stride_w - p.pad_w + half_w);
  const float base_h = static_cast<float>(px.ho * p.stride_h - p.pad_h + half_h);
  const float w = base_w + (static_cast<float>(pt.i * p.dilation_w - half_w) + dx) * s;
  const float h = base_h + (static_cast<float>(pt.j * p.dilation_h - half_h) + dy) * s;
  // NaN compares false: treated as outside, like the CPU kernel.
  const bool inside = h > -1.f && w > -1.f && h < static_cast<float>(p.height) && w < static_cast<float>(p.width);
  return {h, w, inside};
}

}  // namespace visionssm::dcnv4
