// Hello-world CUDA kernel of the build chain: strided axpy on float32.
#include <cuda_runtime.h>

#include <cutlass/version.h>

#include <string>

#include "cc/kernels/hello_cuda.h"

namespace visionssm::hello {
namespace {

__global__ void axpy_kernel(int64_t n, float alpha, const float* x, int64_t xs, float* y, int64_t ys) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    y[i * ys] += alpha * x[i * xs];
  }
}

}  // namespace

std::string axpy_f32(int64_t n, float alpha, std::uintptr_t x, int64_t x_stride, std::uintptr_t y,
                     int64_t y_stride, std::uintptr_t stream) {
  if (n == 0) return "";
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  axpy_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), threads, 0,
                reinterpret_cast<cudaStream_t>(stream)>>>(
      n, alpha, reinterpret_cast<const float*>(x), x_stride, reinterpret_cast<float*>(y), y_stride);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

int device_count(std::string* error) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    *error = cudaGetErrorString(err);
    return -1;
  }
  return count;
}

std::string cutlass_version() {
  return std::to_string(CUTLASS_MAJOR) + "." + std::to_string(CUTLASS_MINOR) + "." +
         std::to_string(CUTLASS_PATCH);
}

}  // namespace visionssm::hello
