// One set of arguments for cross_scan / cross_merge on either backend: Python fills it once
// (py/ops/cross_scan.py: kernel_params) as a dict, and the CPU and CUDA modules both read it with
// cross_scan_params_dict.h. Plain host data, also seen by nvcc (cross_scan_cuda.h).
#pragma once

#include "cc/kernels/common/dtype.h"

#include <cstdint>
#include <vector>

namespace visionssm::cross_scan {

using DType = ::visionssm::DType;  // cc/kernels/common/dtype.h

struct Params {
  DType dtype = DType::kFloat32;
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  // scan:  input x (B, C, H, W), strides (b, c, h, w)       -> output (B, 4, C, H*W) contiguous
  // merge: input y (B, 4, C, H, W), strides (b, k, c, h, w) -> output (B, C, H*W) contiguous
  std::uintptr_t input = 0, output = 0;
  std::vector<int64_t> input_strides;
  std::uintptr_t stream = 0;  // CUDA only: the cudaStream_t to launch on
};

}  // namespace visionssm::cross_scan
