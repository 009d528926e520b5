// Host API of the standalone cross-scan/cross-merge CUDA kernels (cross_scan_cuda.cu).
// Not yet run on a GPU.
#pragma once

#include <cstdint>
#include <string>

#include "cc/kernels/cross_scan/cross_scan_params.h"  // DType (one definition, shared with the CPU kernels)

namespace visionssm::cross_scan {

// x (B, C, H, W) with strides x_strides[4] -> out (B, 4, C, H*W) contiguous.
std::string scan(DType dtype, std::uintptr_t x, const int64_t* x_strides, std::uintptr_t out, int64_t batch,
                 int64_t channels, int64_t height, int64_t width, std::uintptr_t stream);
// y (B, 4, C, H*W) contiguous -> out (B, C, H*W) contiguous, the adjoint of scan.
std::string merge(DType dtype, std::uintptr_t y, std::uintptr_t out, int64_t batch, int64_t channels,
                  int64_t height, int64_t width, std::uintptr_t stream);
int64_t num_blocks(int64_t batch, int64_t channels, int64_t height, int64_t width);

}  // namespace visionssm::cross_scan
