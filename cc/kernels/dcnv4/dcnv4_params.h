// One set of arguments for the DCNv4 kernels on either backend: Python fills it once
// (py/ops/dcnv4.py: kernel_params) as a dict, and the CPU and CUDA modules both read it with
// dcnv4_params_dict.h. Plain host data, also seen by nvcc (dcnv4_cuda.h).
#pragma once

#include "cc/kernels/common/dtype.h"

#include <cstdint>

namespace visionssm::dcnv4 {

using DType = ::visionssm::DType;  // cc/kernels/common/dtype.h

struct Params {
  DType dtype = DType::kFloat32;
  // value (N, H, W, group*group_channels); offset_mask and out (N, Ho, Wo, *), P = offset_mask's last dim.
  int64_t batch = 0, height = 0, width = 0, out_height = 0, out_width = 0, offset_channels = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1, group = 0, group_channels = 0;
  double offset_scale = 1.0;
  bool remove_center = false;
  // Element strides (n, h, w, c); value and grad_output need c stride 1.
  int64_t value_strides[4] = {0, 0, 0, 1}, offset_mask_strides[4] = {0, 0, 0, 1};
  int64_t grad_output_strides[4] = {0, 0, 0, 1};
  // Inputs, and outputs (contiguous, fully written: out; grad_value; grad_offset_mask, padding 0).
  std::uintptr_t value = 0, offset_mask = 0, grad_output = 0;
  std::uintptr_t out = 0, grad_value = 0, grad_offset_mask = 0;
  int threads = 0;  // CPU only: OpenMP threads (0 = all)
  // CUDA only: the stream; the backward's scratch (bytes from backward_workspace_bytes) and mode.
  std::uintptr_t stream = 0, workspace = 0;
  int64_t workspace_bytes = 0;
  bool deterministic = true;  // false: grad_value by float32 atomics (faster, run-to-run noise)

  int64_t points() const { return kernel_h * kernel_w - (remove_center ? 1 : 0); }
  int64_t channels() const { return group * group_channels; }
};

}  // namespace visionssm::dcnv4
