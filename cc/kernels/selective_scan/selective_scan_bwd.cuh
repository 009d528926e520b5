// Selective-scan backward kernel template. Not yet run on a GPU (see selective_scan_fwd.cuh for
// what checks it instead).
//
// Same split as the forward (one warp per row, chunks of Geo::kChunk), chunks last to first. Per
// chunk and state tile: the forward steps are recomputed from the state the forward saved at the
// chunk's start (ckpt), then the adjoint g_t = dy_t*C_t + exp(dt_{t+1}*A)*g_{t+1} runs backwards
// with a reverse warp scan, carrying q = exp(dt*A)*g of the chunk's first position to the previous
// chunk. Deterministic: no atomics. dA, dD, dbias are summed per row in a fixed order (lane-local
// in sequence order, then a butterfly) and returned per (batch, channel); dB/dC are summed over the
// CTA's kRows channels in shared memory in row order and returned per CTA ("slices"), which the
// caller sums in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include "cc/kernels/selective_scan/selective_scan_fwd.cuh"

namespace visionssm::selective_scan {

template <typename T, typename Geo, bool kCross2d>
__global__ void __launch_bounds__(Geo::kThreads) selective_scan_bwd_kernel(const Params p) {
  constexpr int kItems = Geo::kItems, kNTile = Geo::kNTile, kRows = Geo::kRows;
  constexpr bool kN1 = kNTile == 1;
  constexpr int kTile = kNTile * Geo::kChunk;
  // dB/dC of the current (chunk, state tile) per warp, summed over warps after a barrier.
  __shared__ float red_B[kRows][kTile], red_C[kRows][kTile];
  // Per warp and state: the reverse carry q and the running dA (lane 0 writes between __syncwarp()s).
  __shared__ float rev_smem[kRows][kN1 ? 1 : kMaxDState], dA_smem[kRows][kN1 ? 1 : kMaxDState];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Padding warps (row.valid false) read a real channel's data but write nothing and add zeros to
  // the dB/dC sums: they must stay, as every warp joins the block barriers below.
  const Row<T> row(p, blockIdx.x, warp, kRows);
  const float live = row.valid ? 1.f : 0.f;
  const int64_t N = p.dstate, L = p.seqlen;
  const int64_t ntiles = kN1 ? 1 : (N + kNTile - 1) / kNTile;
  const int64_t rowid = row.b * p.dim + row.d;
  const float* ckpt = p.ckpt + rowid * p.nchunks * N;
  const int64_t slice = cute::get<0>(RowTiling(p.dim / p.groups, p.groups, p.batch, kRows).decode(blockIdx.x));
  const int64_t part_base = ((slice * p.batch + row.b) * p.groups + row.g) * N * L;
  const T* dout = static_cast<const T*>(p.dout) + row.b * p.dout_batch_stride +
                  (p.cross2d ? row.c : row.d) * p.dout_dim_stride;
  float *rev = rev_smem[warp], *dA_run = dA_smem[warp];
  float rev1 = 0.f, dA1 = 0.f, dD_lane = 0.f, dbias_lane = 0.f;
  if (!kN1) {
    for (int64_t n = lane; n < N; n += 32) rev[n] = dA_run[n] = 0.f;
    __syncwarp();
  }

  for (int64_t chunk = p.nchunks - 1; chunk >= 0; --chunk) {
    const int64_t start = Geo::position(chunk, 0, lane);
    float u[kItems], dt[kItems], dy[kItems], z[kItems], ypre[kItems], du[kItems], ddt[kItems];
    if constexpr (kCross2d) {
      load_items_2d<T, kItems>(row.u, int(row.g), start, p.height, p.width, p.u_h_stride, p.u_w_stride, u);
      load_items_2d<T, kItems>(dout, int(row.g), start, p.height, p.width, p.dout_h_stride, p.dout_w_stride, dy);
    } else {
      load_items<T, kItems>(row.u, start, L, u);
      load_items<T, kItems>(dout, start, L, dy);
    }
    load_items<T, kItems>(row.delta, start, L, dt);
    discretize<kItems>(p, row.bias, start, dt);
    if (row.z) load_items<T, kItems>(row.z, start, L, z);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (row.z) {  // y = ypre * silu(z): keep dout * silu'(z) in z (dz = that * ypre, at the end)
        const float sz = cuda::sigmoid(z[i]), gate = z[i] * sz;
        z[i] = dy[i] * sz * (1.f + z[i] * (1.f - sz));
        dy[i] *= gate;  // from here on dy is the gradient of y before gating
      }
      dD_lane += dy[i] * u[i];
      ypre[i] = row.D * u[i];
      du[i] = row.D * dy[i];
      ddt[i] = 0.f;
    }

    for (int64_t tile = 0; tile < ntiles; ++tile) {
      float Av[kNTile], q0[kNTile], pa[kNTile], pb[kNTile], ra[kNTile], rb[kNTile];
      float a[kNTile][kItems], hp[kNTile][kItems], Bv[kNTile][kItems], e[kNTile][kItems];
      // Forward recompute from the saved chunk-start state: hp = state before each position.
#pragma unroll
      for (int s = 0; s < kNTile; ++s) {
        const int64_t n = tile * kNTile + s;
        const bool on = n < N;
        Av[s] = on ? row.A[n] : 0.f;
        // exp(dt*A) by the forward's expression, dt * (A log2 e): the recompute from the checkpoint
        // rounds exp's argument as the forward did ((dt*A) * log2 e differs in the last bit).
        const float a2 = Av[s] * cuda::kLog2e;
        const float h0 = on ? ckpt[chunk * N + n] : 0.f;
        q0[s] = kN1 ? rev1 : (on ? rev[n] : 0.f);
#pragma unroll
        for (int i = 0; i < kItems; ++i) Bv[s][i] = 0.f;
        if (on) load_items<T, kItems>(row.B + n * p.B_state_stride, start, L, Bv[s]);
        pa[s] = 1.f;
        pb[s] = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          a[s][i] = exp2f(dt[i] * a2);
          pb[s] = a[s][i] * pb[s] + dt[i] * u[i] * Bv[s][i];
          pa[s] *= a[s][i];
        }
        cuda::warp_inclusive_scan(pa[s], pb[s], lane);
        float ea = __shfl_up_sync(cuda::kFullMask, pa[s], 1), eb = __shfl_up_sync(cuda::kFullMask, pb[s], 1);
        if (lane == 0) ea = 1.f, eb = 0.f;
        float h = ea * h0 + eb;
        float Cv[kItems] = {};
        if (on) load_items<T, kItems>(row.C + n * p.C_state_stride, start, L, Cv);
        ra[s] = 1.f;
        rb[s] = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          hp[s][i] = h;
          h = a[s][i] * h + dt[i] * u[i] * Bv[s][i];
          ypre[i] += Cv[i] * h;
          red_C[warp][s * Geo::kChunk + lane * kItems + i] = live * dy[i] * h;
          e[s][i] = dy[i] * Cv[i];
        }
        // The lane's adjoint steps x -> a*(e + x), composed from its last position to its first.
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          rb[s] = a[s][i] * (rb[s] + e[s][i]);
          ra[s] *= a[s][i];
        }
        cuda::warp_reverse_inclusive_scan(ra[s], rb[s], lane);
      }
      // Adjoint pass: g at each position, gradients of dt, u, A, B.
#pragma unroll
      for (int s = 0; s < kNTile; ++s) {
        const int64_t n = tile * kNTile + s;
        const bool on = n < N;
        float ea = __shfl_down_sync(cuda::kFullMask, ra[s], 1), eb = __shfl_down_sync(cuda::kFullMask, rb[s], 1);
        if (lane == 31) ea = 1.f, eb = 0.f;
        const float next = __shfl_sync(cuda::kFullMask, ra[s], 0) * q0[s] + __shfl_sync(cuda::kFullMask, rb[s], 0);
        float x = ea * q0[s] + eb;  // q entering this lane's last position from the right
        float dA_lane = 0.f;
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          const float gh = e[s][i] + x;  // dL/dh at position i
          x = a[s][i] * gh;
          const float ahp = a[s][i] * hp[s][i];
          ddt[i] += gh * (ahp * Av[s] + u[i] * Bv[s][i]);
          du[i] += gh * dt[i] * Bv[s][i];
          dA_lane += gh * ahp * dt[i];
          red_B[warp][s * Geo::kChunk + lane * kItems + i] = live * gh * dt[i] * u[i];
        }
        if (kN1) {
          rev1 = next;
          dA1 += dA_lane;
        } else {
          const float dA_sum = cuda::warp_sum(dA_lane);
          __syncwarp();  // every lane has read rev[n] for this chunk
          if (lane == 0 && on) {
            rev[n] = next;
            dA_run[n] += dA_sum;
          }
          __syncwarp();
        }
      }
      // dB/dC of this (chunk, tile): sum the kRows warps in row order, one slice per CTA.
      __syncthreads();
      using RL = typename Geo::ReduceLayout;
      using RT = typename Geo::ReduceTile;
#pragma unroll
      for (int it = 0; it < Geo::kReduceIters; ++it) {
        const int off = RL{}(int(threadIdx.x), it);
        const auto pos_s = RT{}.get_hier_coord(off);
        const int64_t l = chunk * Geo::kChunk + cute::get<0>(pos_s);
        const int64_t n = tile * kNTile + cute::get<1>(pos_s);
        if (l < L && n < N) {
          float sb = 0.f, sc = 0.f;
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            sb += red_B[r][off];
            sc += red_C[r][off];
          }
          p.dB_part[part_base + n * L + l] = sb;
          p.dC_part[part_base + n * L + l] = sc;
        }
      }
      __syncthreads();  // red_* are rewritten by the next tile
    }

    // Gate, softplus and stores of this chunk.
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const bool in = start + i < L;
      // softplus'(v) = sigmoid(v) = 1 - exp(-softplus(v)): from dt itself, no second read of delta
      // (for v > 20, dt = v and 1 - exp(-v) rounds to 1, the identity's derivative).
      if (p.softplus) ddt[i] *= -expm1f(-dt[i]);
      ddt[i] = in ? ddt[i] : 0.f;
      dbias_lane += ddt[i];
      if (row.z) z[i] *= ypre[i];  // dz
    }
    if (row.valid) {
      T* du_row = static_cast<T*>(p.du) + rowid * L;
      if constexpr (kCross2d) {
        store_items_2d<T, kItems>(du_row, int(row.g), start, p.height, p.width, du);
      } else {
        store_items<T, kItems>(du_row, start, L, du);
      }
      store_items<T, kItems>(static_cast<T*>(p.ddelta) + rowid * L, start, L, ddt);
      if (row.z) store_items<T, kItems>(static_cast<T*>(p.dz) + rowid * L, start, L, z);
    }
  }

  // Per-row sums, in a fixed order (lane-local in sequence order, then the butterfly).
  const float dD = cuda::warp_sum(dD_lane), dbias = cuda::warp_sum(dbias_lane);
  const float dA_total = kN1 ? cuda::warp_sum(dA1) : 0.f;
  if (!row.valid) return;
  if (lane == 0) {
    if (p.dD_part) p.dD_part[rowid] = dD;
    if (p.dbias_part) p.dbias_part[rowid] = dbias;
    if (kN1) p.dA_part[rowid] = dA_total;
  }
  if (!kN1) {
    for (int64_t n = lane; n < N; n += 32) p.dA_part[rowid * N + n] = dA_run[n];
  }
}

}  // namespace visionssm::selective_scan
