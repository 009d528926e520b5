// SSD forward kernels (chunked Mamba-2, and VSSD non-causal through flags). Not yet run on a GPU.
// The launch sequence (ssd_fwd.cu) and its float64 CPU replay (py/ops/tests/ssd_cuda_model.py):
//   1. ssd_chunk_cumsum_kernel  dt' and the in-chunk cumsum of dt' A           (workspace, fp32)
//   2. ssd_chunk_state_kernel   each chunk's local state  sum_j (x_j scale_j) (x) B_j   (MMA)
//   3. ssd_state_passing_kernel states -> the state entering each chunk; final_states
//   4. ssd_chunk_scan_kernel    y = (C e^cumsum) S_in^T + [C B^T masked, decayed] (dt' x) + D x,
//                               gated; C B^T never leaves the CTA (fused bmm_chunk)  (MMA)
// Non-causal: scale w = -dt' A, no decay, (3) sums the chunk states into KV^T, (4) has no
// diagonal term and reads KV^T for every chunk.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "cc/kernels/ssd/ssd_cuda_tile.cuh"

namespace visionssm::ssd {

template <typename T>
__global__ void __launch_bounds__(kScanThreads) ssd_chunk_cumsum_kernel(const Params p, const Geometry g) {
  using Scan = cub::BlockScan<float, kScanThreads>;
  __shared__ typename Scan::TempStorage scan;
  const ChunkCoord cc = decode_chunk(g, blockIdx.x);
  const int64_t q = g.tokens(cc.chunk), i = threadIdx.x;
  const float A = head_A(p, cc.head);
  const float bias = p.dt_bias.ptr ? reinterpret_cast<const float*>(p.dt_bias.ptr)[cc.head * p.dt_bias.stride[0]] : 0.f;
  const bool limited = p.dt_min > 0.0 || p.dt_max < INFINITY;
  float d = 0.f;  // dt' = 0 past L: padded tokens neither decay nor add
  if (i < q) {
    const int64_t t = cc.chunk * g.Q + i;
    const T* dt = reinterpret_cast<const T*>(p.dt.ptr);
    d = cuda::to_float(dt[cc.batch * p.dt.stride[0] + t * p.dt.stride[1] + cc.head * p.dt.stride[2]]) + bias;
    if (p.softplus) d = cuda::softplus(d);
    if (limited) d = fminf(fmaxf(d, float(p.dt_min)), float(p.dt_max));
  }
  float cs;
  Scan(scan).InclusiveSum(d * A, cs);  // fixed tree: deterministic
  if (i < g.Q) {
    const int64_t row = g.bhc(cc.batch, cc.head, cc.chunk) * g.Q;
    reinterpret_cast<float*>(p.ws_dt)[row + i] = d;
    reinterpret_cast<float*>(p.ws_cumsum)[row + i] = cs;
  }
}

// Local chunk state (forward) or local state gradient (backward, kDstates), tile (64 p, 64 n):
//   forward:  states[p, n]  = sum_j x[j, p] scale_j decay_j B[j, n]
//   kDstates: dstates[p, n] = sum_i dY[i, p] e^{cumsum_i} C[i, n]   (non-causal: no e^)
// dY (kDstates) is read contiguous (b, L, h, p): ws_dY when z is given, else dout.
template <typename T, bool kDstates>
__global__ void __launch_bounds__(kMmaThreads) ssd_chunk_state_kernel(const Params p, const Geometry g) {
  using G = TileGemm<T>;
  __shared__ alignas(16) typename G::E sA[G::kElems];
  __shared__ alignas(16) typename G::E sB[G::kElems];
  __shared__ float s_f[kMaxChunk];
  const ChunkCoord cc = decode_chunk(g, blockIdx.x);
  const TileCoord tc = decode_tile(blockIdx.y, g.nblocks);  // rows p, cols n
  const ChunkIn<T> in(p, g, cc);
  const float A = head_A(p, cc.head);
  const float last = in.cumsum[g.Q - 1];
  for (int i = threadIdx.x; i < g.Q; i += blockDim.x) {
    const float d = in.dt[i], cs = in.cumsum[i];
    s_f[i] = kDstates ? (p.causal ? __expf(cs) : 1.f) : (p.causal ? d * __expf(last - cs) : -d * A);
  }
  const T* dY = reinterpret_cast<const T*>(p.z.ptr ? p.ws_dY : p.dout) +
                ((cc.batch * g.seqlen + cc.chunk * g.Q) * g.heads + cc.head) * g.headdim;
  const int64_t dYt = g.heads * g.headdim;
  __syncthreads();
  auto acc = make_acc<T>();
  for (int64_t j0 = 0; j0 < in.q; j0 += kTile) {
    fill<T, true>(sA, [&](int r, int k) {
      const int64_t t = j0 + k, i = tc.row0 + r;
      if (t >= in.q || i >= g.headdim) return 0.f;
      return (kDstates ? cuda::to_float(dY[t * dYt + i]) : in.xv(t, i)) * s_f[t];
    });
    fill<T, true>(sB, [&](int r, int k) {
      const int64_t t = j0 + k, n = tc.col0 + r;
      return kDstates ? in.Cv(t, n) : in.Bv(t, n);
    });
    __syncthreads();
    tile_mma<T>(sA, sB, acc);
    __syncthreads();
  }
  float* out = reinterpret_cast<float*>(kDstates ? p.ws_dstates : p.ws_states) +
               g.state_offset(cc.batch, cc.chunk, cc.head);
  for_each_acc<T>(acc, [&](int r, int k, float v) {
    const int64_t i = tc.row0 + r, n = tc.col0 + k;
    if (i < g.headdim && n < g.dstate) out[i * g.dstate + n] = v;
  });
}

// One thread per (p, n) of one (batch, head), sequential over chunks. Causal: ws_states[c] becomes
// the state entering chunk c (S_0 = initial_states or 0), final = the state after the last chunk.
// Non-causal: final = sum of the chunk states = KV^T.
// static: defined in this header, compiled into both .cu files.
static __global__ void __launch_bounds__(kPassThreads) ssd_state_passing_kernel(const Params p, const Geometry g) {
  const int64_t pn = g.headdim * g.dstate, e = int64_t(blockIdx.x) * kPassThreads + threadIdx.x;
  const int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads;
  if (e >= pn) return;
  float S = 0.f;
  if (p.init.ptr) {
    const float* init = reinterpret_cast<const float*>(p.init.ptr);
    S = init[b * p.init.stride[0] + h * p.init.stride[1] + (e / g.dstate) * p.init.stride[2] +
             (e % g.dstate) * p.init.stride[3]];
  }
  float* states = reinterpret_cast<float*>(p.ws_states);
  const float* cumsum = reinterpret_cast<const float*>(p.ws_cumsum) + bh * g.chunks * g.Q;
  for (int64_t c = 0; c < g.chunks; ++c) {
    float* s = states + g.state_offset(b, c, h) + e;
    const float local = *s;
    if (p.causal) {
      *s = S;
      S = __expf(cumsum[c * g.Q + g.Q - 1]) * S + local;
    } else {
      S += local;
    }
  }
  reinterpret_cast<float*>(p.final_states)[bh * pn + e] = S;
}

// Output tile (64 tokens i, 64 features p) of one chunk:
//   y[i, p] = e^{cumsum_i} sum_n C[i, n] S_in[p, n]                            (K loop over n)
//           + sum_{j blocks <= i block} sum_j M[i, j] x[j, p],                 (K = 64 tokens)
//     M[i, j] = (sum_n C[i, n] B[j, n]) e^{cumsum_i - cumsum_j} dt'_j  for j <= i, else 0;
// then + D x, pregate = y, y *= silu(z). M is built in registers from the C B^T accumulator and
// stored to shared memory as the next MMA's A operand (never written to global memory).
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) ssd_chunk_scan_kernel(const Params p, const Geometry g) {
  using G = TileGemm<T>;
  __shared__ alignas(16) typename G::E sA[G::kElems];
  __shared__ alignas(16) typename G::E sB[G::kElems];
  __shared__ float s_cumsum[kMaxChunk], s_dt[kMaxChunk];
  const ChunkCoord cc = decode_chunk(g, blockIdx.x);
  const TileCoord tc = decode_tile(blockIdx.y, g.pblocks);  // rows i (tokens), cols p
  const ChunkIn<T> in(p, g, cc);
  if (tc.row0 >= in.q) return;  // a ragged chunk's empty row block (uniform over the CTA)
  token_factors<T>(p, g, in, 0.f, s_cumsum, s_dt, nullptr, nullptr);
  const int64_t pn = g.headdim * g.dstate;
  const float* S = reinterpret_cast<const float*>(p.causal ? p.ws_states : p.final_states) +
                   (p.causal ? g.state_offset(cc.batch, cc.chunk, cc.head) : (cc.batch * g.heads + cc.head) * pn);
  __syncthreads();
  auto acc = make_acc<T>();
  if (!p.causal || cc.chunk > 0 || p.init.ptr) {  // else S_in = 0
    for (int64_t n0 = 0; n0 < g.dstate; n0 += kTile) {
      fill<T, false>(sA, [&](int r, int k) {
        const int64_t i = tc.row0 + r;
        const float c = in.Cv(i, n0 + k);
        return p.causal && i < in.q ? c * __expf(s_cumsum[i]) : c;
      });
      fill<T, false>(sB, [&](int r, int k) {
        const int64_t i = tc.col0 + r, n = n0 + k;
        return i < g.headdim && n < g.dstate ? S[i * g.dstate + n] : 0.f;
      });
      __syncthreads();
      tile_mma<T>(sA, sB, acc);
      __syncthreads();
    }
  }
  if (p.causal) {
    const BlockRange jr = blocks_up_to(tc.row0);
    for (int64_t j0 = jr.begin; j0 < jr.end; j0 += kTile) {
      auto cb = make_acc<T>();
      for (int64_t n0 = 0; n0 < g.dstate; n0 += kTile) {
        fill<T, false>(sA, [&](int r, int k) { return in.Cv(tc.row0 + r, n0 + k); });
        fill<T, false>(sB, [&](int r, int k) { return in.Bv(j0 + r, n0 + k); });
        __syncthreads();
        tile_mma<T>(sA, sB, cb);
        __syncthreads();
      }
      for_each_acc<T>(cb, [&](int r, int k, float v) {
        const int64_t i = tc.row0 + r, j = j0 + k;
        const bool ok = causal_pair(i, j, in.q);  // the exp is skipped where masked (no inf * 0)
        sA[r * G::kLd + k] = typename G::E(ok ? v * __expf(s_cumsum[i] - s_cumsum[j]) * s_dt[j] : 0.f);
      });
      fill<T, true>(sB, [&](int r, int k) { return in.xv(j0 + k, tc.col0 + r); });
      __syncthreads();
      tile_mma<T>(sA, sB, acc);
      __syncthreads();
    }
  }
  const T* z = reinterpret_cast<const T*>(p.z.ptr);
  const float* D = reinterpret_cast<const float*>(p.D.ptr);
  const int64_t t0 = cc.chunk * g.Q;
  for_each_acc<T>(acc, [&](int r, int k, float v) {
    const int64_t i = tc.row0 + r, f = tc.col0 + k;
    if (i >= in.q || f >= g.headdim) return;
    if (D) v += D[cc.head * p.D.stride[0] + f * p.D.stride[1]] * in.xv(i, f);
    const int64_t out = ((cc.batch * g.seqlen + t0 + i) * g.heads + cc.head) * g.headdim + f;
    if (z) {
      if (p.pregate) reinterpret_cast<T*>(p.pregate)[out] = cuda::from_float<T>(v);
      v *= cuda::silu(cuda::to_float(
          z[cc.batch * p.z.stride[0] + (t0 + i) * p.z.stride[1] + cc.head * p.z.stride[2] + f * p.z.stride[3]]));
    }
    reinterpret_cast<T*>(p.y)[out] = cuda::from_float<T>(v);
  });
}

}  // namespace visionssm::ssd
