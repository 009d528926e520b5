// Everything one selective-scan call needs, filled once from Python (a dict whose keys are the
// field names, selective_scan_params_dict.h): pointers, sizes, strides, flags. Plain C++ (no CUDA
// types): the CPU kernels (selective_scan_cpu.cc) and the CUDA kernels take the same struct.
//
// Strides are in elements. The time axis of u, delta, z, B, C, dout has stride 1; outputs are
// contiguous. In cross-2D mode (VMamba's SS2D), u and dout are read and y and du written through
// the four traversals of an H x W map (selective_scan_layout.h), so no (B, 4, C, L) copy exists.
#pragma once

#include "cc/kernels/common/dtype.h"

#include <cstdint>

namespace visionssm::selective_scan {

// float64: CPU only. There every float pointer below points to doubles (state included).
using DType = ::visionssm::DType;  // cc/kernels/common/dtype.h

// Largest d_state the kernels support (state carries live in shared memory, 4 bytes each).
constexpr int64_t kMaxDState = 256;

struct Params {
  // ---- sizes and flags
  int64_t batch = 0, dim = 0, seqlen = 0, dstate = 0, groups = 1;
  DType dtype = DType::kFloat32;
  bool softplus = false;
  // Cross-2D: groups == 4 (one per traversal k), channel d = k * (dim / 4) + c reads channel c of
  // the map; seqlen == H * W.
  bool cross2d = false;
  int64_t height = 0, width = 0;
  // Set by the launcher from the kernel that runs (chunk_len()): sequence positions per iteration.
  int64_t chunk = 0, nchunks = 0;
  // Leading size of dB_part/dC_part. CPU: chosen by the caller (>= 1); CUDA: bwd_slices(), and
  // this field is ignored.
  int64_t slices = 0;

  // ---- inputs
  // u (batch, dim, L); cross-2D: the map x (batch, dim / 4, H, W) with any h/w strides.
  const void* u = nullptr;
  int64_t u_batch_stride = 0, u_dim_stride = 0, u_h_stride = 0, u_w_stride = 0;
  const void* delta = nullptr;  // (batch, dim, L)
  int64_t delta_batch_stride = 0, delta_dim_stride = 0;
  const float* A = nullptr;  // (dim, dstate), float32; CUDA: contiguous
  // CPU only (the CUDA kernels read A, D, delta_bias contiguous and ignore these).
  int64_t A_dim_stride = 0, A_state_stride = 0, D_stride = 0, delta_bias_stride = 0;
  const void* B = nullptr;   // (batch, groups, dstate, L)
  int64_t B_batch_stride = 0, B_group_stride = 0, B_state_stride = 0;
  const void* C = nullptr;
  int64_t C_batch_stride = 0, C_group_stride = 0, C_state_stride = 0;
  const float* D = nullptr;           // (dim,) float32 or null
  const float* delta_bias = nullptr;  // (dim,) float32 or null
  const void* z = nullptr;            // (batch, dim, L) or null
  int64_t z_batch_stride = 0, z_dim_stride = 0;

  // ---- forward outputs (contiguous)
  void* y = nullptr;              // (batch, dim, L), input dtype; cross-2D: traversal k's y at its map position
  float* last_state = nullptr;    // (batch, dim, dstate) or null
  float* ckpt = nullptr;          // (batch, dim, nchunks, dstate): state entering each chunk, or null
                                  // (CPU: the state at the end of each chunk)
  // CPU N = 1 float32 path only: softplus(δ) (batch·dim·L floats) written by the forward and read
  // by the backward in place of delta, or null.
  float* saved_delta = nullptr;

  // ---- backward (ckpt above is an input there)
  const void* dout = nullptr;  // (batch, dim, L); cross-2D: dY (batch, dim / 4, H, W) read through the map
  int64_t dout_batch_stride = 0, dout_dim_stride = 0, dout_h_stride = 0, dout_w_stride = 0;
  void* du = nullptr;      // like y (input dtype, contiguous)
  void* ddelta = nullptr;  // (batch, dim, L), input dtype
  void* dz = nullptr;      // (batch, dim, L), input dtype, when z is given
  float* dA_part = nullptr;     // (batch, dim, dstate): per-row dA, summed over batch by the caller
  float* dB_part = nullptr;     // (slices, batch, groups, dstate, L): per-CTA channel sums (see bwd_slices)
  float* dC_part = nullptr;
  float* dD_part = nullptr;     // (batch, dim) when D is given
  float* dbias_part = nullptr;  // (batch, dim) when delta_bias is given
};

}  // namespace visionssm::selective_scan
