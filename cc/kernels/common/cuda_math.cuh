// Scalar helpers shared by the CUDA kernels: dtype conversion to/from float and the activations of
// the selective scan (softplus with PyTorch's threshold, sigmoid, silu). Device code only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace visionssm::cuda {

constexpr float kLog2e = 1.4426950408889634f;

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

// torch.nn.functional.softplus(x) with beta 1, threshold 20: identity above 20 (exp would overflow
// the difference away anyway), log1p(exp(x)) below.
__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

__device__ __forceinline__ float silu(float x) { return x * sigmoid(x); }

}  // namespace visionssm::cuda
