// Everything one SSD call needs, filled once from Python (py/ops/ssd.py: kernel_params) as a dict
// whose keys are the field names (ssd_params_dict.h), read by both the CPU module (ssd_cpu.cc) and
// the CUDA module (ssd_cuda_module.cc). Plain C++ (no CUDA types), also seen by nvcc.
//
// Sizes: b batch, L tokens, h heads, p headdim, g groups (h % g == 0), n dstate. Strides are in
// elements; an absent tensor has ptr 0. Element types:
//   CPU:  every tensor (inputs, outputs, partial sums) in `dtype` (float32 or float64);
//   CUDA: x, dt, B, C, z, dout, y, pregate, dx, ddt, dz in `dtype` (float32/float16/bfloat16);
//         A, D, dt_bias, initial_states, final_states, dfinal, dinit and every workspace float32.
#pragma once

#include "cc/kernels/common/dtype.h"

#include <cstdint>
#include <limits>

namespace visionssm::ssd {

using DType = ::visionssm::DType;  // cc/kernels/common/dtype.h

// An input tensor: address and element strides (unused trailing strides 0).
struct Operand {
  std::uintptr_t ptr = 0;
  int64_t stride[4] = {0, 0, 0, 0};
};

struct Params {
  // ---- sizes and flags
  DType dtype = DType::kFloat32;
  bool causal = true;
  bool softplus = false;
  int64_t batch = 0, seqlen = 0, heads = 0, headdim = 0, groups = 1, dstate = 0;
  int64_t chunk_size = 0;
  // dt' = clamp(softplus?(dt + dt_bias), dt_min, dt_max) (mamba_ssm's dt_limit). CUDA only: the
  // CPU kernel requires the defaults (no clamp).
  double dt_min = 0.0, dt_max = std::numeric_limits<double>::infinity();
  // CPU only: worker threads (0: OpenMP's default) and, in the backward, heads per task (1, or
  // heads / groups so a group's dB/dC accumulate in one task).
  int64_t threads = 0, heads_per_task = 1;

  // ---- inputs: x (b, L, h, p), dt (b, L, h), A (h), B, C (b, L, g, n), D as a (h, p) view (a
  // (h,) D has headdim stride 0), z (b, L, h, p), dt_bias (h), initial_states (b, h, p, n).
  Operand x, dt, A, B, C, D, z, dt_bias, init;

  // ---- forward outputs (contiguous): y, pregate (y before the silu(z) gate, when z is given and
  // the backward will need it), final_states (b, h, p, n).
  std::uintptr_t y = 0, pregate = 0, final_states = 0;

  // ---- backward inputs (contiguous): dout (b, L, h, p), dfinal (b, h, p, n) or 0, pregate (above),
  // saved_kv: the non-causal forward's final_states (CPU: skips recomputing KV), or 0.
  std::uintptr_t dout = 0, dfinal = 0, saved_kv = 0;
  // ---- backward outputs (contiguous). CPU: dB, dC (b, L, slots, n) accumulated (+=) with
  // slots = h / heads_per_task; dA, dbias (b, h), dD (b, h, p) partial sums over the batch.
  // CUDA: dB, dC per head (b, L, h, n) float32; dA, dbias (b, h, chunks), dD (b, h, chunks *
  // qblocks, p) float32 partial sums (ssd_layout.h), summed by the caller in a fixed order.
  std::uintptr_t dx = 0, ddt = 0, dB = 0, dC = 0, dz = 0, dA = 0, dD = 0, dbias = 0, dinit = 0;

  // ---- CUDA workspaces (float32, contiguous; sizes in ssd_layout.h `Workspace`)
  std::uintptr_t ws_dt = 0;      // dt' (b, h, chunks, Q)
  std::uintptr_t ws_cumsum = 0;  // in-chunk inclusive cumsum of dt' A (b, h, chunks, Q)
  std::uintptr_t ws_states = 0;  // chunk states, then (causal) the state entering each chunk (b, chunks, h, p, n)
  std::uintptr_t ws_dY = 0;      // backward: dout * silu(z) in `dtype` (b, L, h, p), when z is given
  std::uintptr_t ws_dstates = 0; // backward: per-chunk state gradients (b, chunks, h, p, n)
  std::uintptr_t ws_extra = 0;   // backward: (b, h, chunks, state_blocks) sums of dS * S
  std::uintptr_t ws_xz = 0;      // backward: (b, h, chunks, Q, p blocks) sums of x * dx_raw
  std::uintptr_t ws_dcumsum = 0; // backward: (b, h, chunks, Q, n blocks) gradient of the cumsum
};

}  // namespace visionssm::ssd
