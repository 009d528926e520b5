// Host API of the standalone cross-scan/cross-merge CUDA kernels (cross_scan_cuda.cu).
// Not yet run on a GPU.
#pragma once

#include <cstdint>
#include <string>

namespace visionssm::cross_scan {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// x (B, C, H, W) with strides x_strides[4] -> out (B, 4, C, H*W) contiguous.
std::string scan(DType dtype, std::uintptr_t x, const int64_t* x_strides, std::uintptr_t out, int64_t batch,
                 int64_t channels, int64_t height, int64_t width, std::uintptr_t stream);
// y (B, 4, C, H*W) contiguous -> out (B, C, H*W) contiguous, the adjoint of scan.
std::string merge(DType dtype, std::uintptr_t y, std::uintptr_t out, int64_t batch, int64_t channels,
                  int64_t height, int64_t width, std::uintptr_t stream);
int64_t num_blocks(int64_t batch, int64_t channels, int64_t height, int64_t width);

}  // namespace visionssm::cross_scan
