// Standalone cross-scan / cross-merge CUDA kernels (VMamba's four traversals, spec section 3).
// Pure data movement through 32 x 32 shared-memory tiles. Not yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/cross_scan/cross_scan_cuda.h"
#include "cc/kernels/cross_scan/cross_scan_layout.h"

namespace visionssm::cross_scan {
namespace {

template <typename T>
struct Acc { using type = float; };
template <>
struct Acc<double> { using type = double; };

template <typename T>
__device__ __forceinline__ typename Acc<T>::type widen(T x) { return static_cast<typename Acc<T>::type>(x); }
template <typename T>
__device__ __forceinline__ T narrow(typename Acc<T>::type x) { return static_cast<T>(x); }
template <>
__device__ __forceinline__ __half narrow<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

struct Geometry {
  int64_t b, c, h0, w0, H, W, L;
  __device__ Geometry(int64_t batch, int64_t channels, int64_t height, int64_t width)
      : H(height), W(width), L(height * width) {
    const auto crd = TileGrid(height, width, channels, batch).decode(blockIdx.x);
    w0 = cute::get<0>(crd) * kTile;
    h0 = cute::get<1>(crd) * kTile;
    c = cute::get<2>(crd);
    b = cute::get<3>(crd);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreadsX * kThreadsY)
    cross_scan_kernel(const T* __restrict__ x, int64_t sb, int64_t sc, int64_t sh, int64_t sw, T* __restrict__ out,
                      int64_t batch, int64_t channels, int64_t height, int64_t width) {
  __shared__ T tile[kTile][kTile + 1];  // +1: the column-wise read hits 32 different banks
  const Geometry g(batch, channels, height, width);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const T* plane = x + g.b * sb + g.c * sc;
  // out[b, k, c, :] for k = 0..3
  T* seq[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) seq[k] = out + ((g.b * 4 + k) * channels + g.c) * g.L;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {  // row-wise: load, and write traversals 0 and 2
    const int r = tile_row(tx, ty, j), col = tile_col(tx, ty, j);
    const int64_t h = g.h0 + r, w = g.w0 + col;
    if (h < g.H && w < g.W) {
      const T v = plane[h * sh + w * sw];
      tile[r][col] = v;
      seq[0][h * g.W + w] = v;
      seq[2][g.L - 1 - (h * g.W + w)] = v;
    }
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {  // column-wise: traversals 1 and 3, h fastest across lanes
    const int r = tile_col(tx, ty, j), col = tile_row(tx, ty, j);
    const int64_t h = g.h0 + r, w = g.w0 + col;
    if (h < g.H && w < g.W) {
      const T v = tile[r][col];
      seq[1][w * g.H + h] = v;
      seq[3][g.L - 1 - (w * g.H + h)] = v;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreadsX * kThreadsY)
    cross_merge_kernel(const T* __restrict__ y, T* __restrict__ out, int64_t batch, int64_t channels, int64_t height,
                       int64_t width) {
  using A = typename Acc<T>::type;
  __shared__ A tile[kTile][kTile + 1];
  const Geometry g(batch, channels, height, width);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const T* seq[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) seq[k] = y + ((g.b * 4 + k) * channels + g.c) * g.L;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {  // column-wise: y1 + reversed y3, as the reference pairs them
    const int r = tile_col(tx, ty, j), col = tile_row(tx, ty, j);
    const int64_t h = g.h0 + r, w = g.w0 + col;
    if (h < g.H && w < g.W) {
      const int64_t l1 = w * g.H + h;
      tile[r][col] = widen(seq[1][l1]) + widen(seq[3][g.L - 1 - l1]);
    }
  }
  __syncthreads();
  T* dst = out + (g.b * channels + g.c) * g.L;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {  // row-wise: (y0 + reversed y2) + the column pair
    const int r = tile_row(tx, ty, j), col = tile_col(tx, ty, j);
    const int64_t h = g.h0 + r, w = g.w0 + col;
    if (h < g.H && w < g.W) {
      const int64_t l0 = h * g.W + w;
      dst[l0] = narrow<T>((widen(seq[0][l0]) + widen(seq[2][g.L - 1 - l0])) + tile[r][col]);
    }
  }
}

void check_sizes(const char* op, int64_t batch, int64_t channels, int64_t height, int64_t width) {
  if (batch < 1 || channels < 1 || height < 1 || width < 1)
    fail(op, ": B, C, H, W must be >= 1 (empty sizes are handled before the launch), got ", batch, ", ", channels,
         ", ", height, ", ", width);
  if (num_blocks(batch, channels, height, width) > INT_MAX) fail(op, ": tensor too large for one launch");
}

std::string last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T>
void launch_scan(std::uintptr_t x, const int64_t* s, std::uintptr_t out, int64_t batch, int64_t channels,
                 int64_t height, int64_t width, cudaStream_t stream) {
  cross_scan_kernel<T><<<unsigned(num_blocks(batch, channels, height, width)), dim3(kThreadsX, kThreadsY), 0,
                         stream>>>(reinterpret_cast<const T*>(x), s[0], s[1], s[2], s[3], reinterpret_cast<T*>(out),
                                   batch, channels, height, width);
}

template <typename T>
void launch_merge(std::uintptr_t y, std::uintptr_t out, int64_t batch, int64_t channels, int64_t height,
                  int64_t width, cudaStream_t stream) {
  cross_merge_kernel<T><<<unsigned(num_blocks(batch, channels, height, width)), dim3(kThreadsX, kThreadsY), 0,
                          stream>>>(reinterpret_cast<const T*>(y), reinterpret_cast<T*>(out), batch, channels,
                                    height, width);
}

}  // namespace

int64_t num_blocks(int64_t batch, int64_t channels, int64_t height, int64_t width) {
  return TileGrid(height, width, channels, batch).num_blocks();
}

std::string scan(DType dtype, std::uintptr_t x, const int64_t* x_strides, std::uintptr_t out, int64_t batch,
                 int64_t channels, int64_t height, int64_t width, std::uintptr_t stream) {
  check_sizes("cross_scan", batch, channels, height, width);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: launch_scan<float>(x, x_strides, out, batch, channels, height, width, s); break;
    case DType::kFloat16: launch_scan<__half>(x, x_strides, out, batch, channels, height, width, s); break;
    case DType::kBFloat16: launch_scan<__nv_bfloat16>(x, x_strides, out, batch, channels, height, width, s); break;
    case DType::kFloat64: launch_scan<double>(x, x_strides, out, batch, channels, height, width, s); break;
  }
  return last_error();
}

std::string merge(DType dtype, std::uintptr_t y, std::uintptr_t out, int64_t batch, int64_t channels,
                  int64_t height, int64_t width, std::uintptr_t stream) {
  check_sizes("cross_merge", batch, channels, height, width);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: launch_merge<float>(y, out, batch, channels, height, width, s); break;
    case DType::kFloat16: launch_merge<__half>(y, out, batch, channels, height, width, s); break;
    case DType::kBFloat16: launch_merge<__nv_bfloat16>(y, out, batch, channels, height, width, s); break;
    case DType::kFloat64: launch_merge<double>(y, out, batch, channels, height, width, s); break;
  }
  return last_error();
}

}  // namespace visionssm::cross_scan
