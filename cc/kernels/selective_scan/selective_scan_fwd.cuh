// Selective-scan forward kernel template. Not yet run on a GPU: checked by compilation (ptxas:
// no spills, no stack), the host-side index tests and a step-by-step CPU model of this kernel and
// the backward against the reference (py/ops/tests/selective_scan_cuda_model.py; keep it in step).
//
// One warp per (batch, channel) row, chunks of Geo::kChunk positions in order. Per chunk and per
// tile of kNTile states, each lane composes the affine steps h -> exp(dt*A)*h + dt*B*u of its
// kItems positions, a warp scan joins the lanes, the carried state of the previous chunk enters as
// the initial value, and each lane replays its positions to accumulate y += C*h. No block barriers.
#pragma once

#include <cuda_runtime.h>

#include "cc/kernels/common/cuda_math.cuh"
#include "cc/kernels/common/warp_scan.cuh"
#include "cc/kernels/selective_scan/selective_scan_io.cuh"
#include "cc/kernels/selective_scan/selective_scan_layout.h"
#include "cc/kernels/selective_scan/selective_scan_params.h"

namespace visionssm::selective_scan {

// Row pointers and per-channel scalars of the warp's (batch, channel) row.
template <typename T>
struct Row {
  bool valid;       // false for the padding warps of the last row block of a group
  int64_t b, g, c;  // batch, group (= traversal in cross-2D), channel within the group
  int64_t d;        // channel (clamped to the group's last one for padding warps)
  const T *u, *delta, *z, *B, *C;
  float D, bias;
  const float* A;

  __device__ Row(const Params& p, int64_t block, int warp, int rows) {
    const int64_t cpg = p.dim / p.groups;
    const auto coord = RowTiling(cpg, p.groups, p.batch, rows).decode(block);
    b = cute::get<2>(coord);
    g = cute::get<1>(coord);
    const int64_t wanted = cute::get<0>(coord) * rows + warp;
    valid = wanted < cpg;
    c = valid ? wanted : cpg - 1;
    d = g * cpg + c;
    u = static_cast<const T*>(p.u) + b * p.u_batch_stride + (p.cross2d ? c : d) * p.u_dim_stride;
    delta = static_cast<const T*>(p.delta) + b * p.delta_batch_stride + d * p.delta_dim_stride;
    z = p.z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + d * p.z_dim_stride : nullptr;
    B = static_cast<const T*>(p.B) + b * p.B_batch_stride + g * p.B_group_stride;
    C = static_cast<const T*>(p.C) + b * p.C_batch_stride + g * p.C_group_stride;
    D = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    A = p.A + d * p.dstate;
  }
};

// dt = softplus(delta + bias) (or without softplus); 0 past the end, which makes those positions
// identity steps (exp(0) = 1, dt*B*u = 0) with no gradient.
template <int kItems>
__device__ __forceinline__ void discretize(const Params& p, float bias, int64_t start, float (&dt)[kItems]) {
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const float v = dt[i] + bias;
    dt[i] = start + i < p.seqlen ? (p.softplus ? cuda::softplus(v) : v) : 0.f;
  }
}

template <typename T, typename Geo, bool kCross2d>
__global__ void __launch_bounds__(Geo::kThreads, 4) selective_scan_fwd_kernel(const Params p) {
  constexpr int kItems = Geo::kItems, kNTile = Geo::kNTile;
  constexpr bool kN1 = kNTile == 1;  // the d_state = 1 path (VMamba): carry in a register
  // Carried state per warp and state: written by lane 0 between __syncwarp()s, read by all lanes.
  __shared__ float carry_smem[Geo::kRows][kN1 ? 1 : kMaxDState];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const Row<T> row(p, blockIdx.x, warp, Geo::kRows);
  if (!row.valid) return;  // no block barriers in this kernel, so idle warps may leave
  const int64_t N = p.dstate, L = p.seqlen;
  const int64_t ntiles = kN1 ? 1 : (N + kNTile - 1) / kNTile;
  T* y_row = static_cast<T*>(p.y) + (row.b * p.dim + row.d) * L;
  float* ckpt = p.ckpt ? p.ckpt + (row.b * p.dim + row.d) * p.nchunks * N : nullptr;
  float* carry = carry_smem[warp];
  float carry1 = 0.f;
  if (!kN1) {
    for (int64_t n = lane; n < N; n += 32) carry[n] = 0.f;
    __syncwarp();
  }

  for (int64_t chunk = 0; chunk < p.nchunks; ++chunk) {
    const int64_t start = Geo::position(chunk, 0, lane);
    float u[kItems], dt[kItems], y[kItems];
    if constexpr (kCross2d) {
      load_items_2d<T, kItems>(row.u, int(row.g), start, p.height, p.width, p.u_h_stride, p.u_w_stride, u);
    } else {
      load_items<T, kItems>(row.u, start, L, u);
    }
    load_items<T, kItems>(row.delta, start, L, dt);
    discretize<kItems>(p, row.bias, start, dt);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      y[i] = row.D * u[i];
      u[i] *= dt[i];  // from here on u holds dt*u
    }

    for (int64_t tile = 0; tile < ntiles; ++tile) {
      float a2[kNTile], h0[kNTile], a[kNTile][kItems], bu[kNTile][kItems], pa[kNTile], pb[kNTile];
#pragma unroll
      for (int s = 0; s < kNTile; ++s) {
        const int64_t n = tile * kNTile + s;
        const bool on = n < N;
        a2[s] = on ? row.A[n] * cuda::kLog2e : 0.f;
        h0[s] = kN1 ? carry1 : (on ? carry[n] : 0.f);
        if (ckpt && lane == 0 && on) ckpt[chunk * N + n] = h0[s];
        float Bv[kItems] = {};
        if (on) load_items<T, kItems>(row.B + n * p.B_state_stride, start, L, Bv);
        pa[s] = 1.f;
        pb[s] = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          a[s][i] = exp2f(dt[i] * a2[s]);
          bu[s][i] = u[i] * Bv[i];
          pb[s] = a[s][i] * pb[s] + bu[s][i];  // the lane's steps composed in order
          pa[s] *= a[s][i];
        }
        cuda::warp_inclusive_scan(pa[s], pb[s], lane);
      }
#pragma unroll
      for (int s = 0; s < kNTile; ++s) {
        const int64_t n = tile * kNTile + s;
        const bool on = n < N;
        // Exclusive prefix (lanes before this one) applied to the carried state.
        float ea = __shfl_up_sync(cuda::kFullMask, pa[s], 1), eb = __shfl_up_sync(cuda::kFullMask, pb[s], 1);
        if (lane == 0) ea = 1.f, eb = 0.f;
        const float next = __shfl_sync(cuda::kFullMask, pa[s], 31) * h0[s] + __shfl_sync(cuda::kFullMask, pb[s], 31);
        float h = ea * h0[s] + eb;
        float Cv[kItems] = {};
        if (on) load_items<T, kItems>(row.C + n * p.C_state_stride, start, L, Cv);
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          h = a[s][i] * h + bu[s][i];
          y[i] += Cv[i] * h;
        }
        if (kN1) {
          carry1 = next;
        } else {
          __syncwarp();  // every lane has read carry[n] for this chunk
          if (lane == 0 && on) carry[n] = next;
          __syncwarp();
        }
      }
    }

    if (row.z) {
      float z[kItems];
      load_items<T, kItems>(row.z, start, L, z);
#pragma unroll
      for (int i = 0; i < kItems; ++i) y[i] *= cuda::silu(z[i]);
    }
    if constexpr (kCross2d) {
      store_items_2d<T, kItems>(y_row, int(row.g), start, p.height, p.width, y);
    } else {
      store_items<T, kItems>(y_row, start, L, y);
    }
  }

  if (p.last_state) {
    float* last = p.last_state + (row.b * p.dim + row.d) * N;
    if (kN1) {
      if (lane == 0) last[0] = carry1;
    } else {
      for (int64_t n = lane; n < N; n += 32) last[n] = carry[n];
    }
  }
}

}  // namespace visionssm::selective_scan
