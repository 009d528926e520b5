// SSD backward kernels. Not yet run on a GPU. The launch sequence (ssd_bwd.cu) first recomputes
// dt', the cumsums, the chunk states and the passed states with the forward kernels, then:
//   1. ssd_gate_bwd_kernel          dY = dout silu(z), dz = dout pregate silu'(z)     (when z)
//   2. ssd_chunk_state_kernel<true> local state gradients sum_i (dY_i e^{cumsum_i}) (x) C_i  (MMA)
//   3. ssd_bwd_state_passing_kernel reverse over chunks: dS per chunk, dinitial_states, and per
//                                   chunk sum(dS_{c+1} * S_{c+1}) (the gradient of the chunk's total decay)
//   4. ssd_bwd_dx_kernel            dx, and sum_p x dx_raw (-> ddt'), dD partials         (MMA)
//   5. ssd_bwd_dbc_kernel           dB, dC per head, and sum_n (C dC - B dB) (-> d cumsum)  (MMA)
//   6. ssd_bwd_dt_kernel            reverse cumsum of d cumsum, ddt, dA and dbias partials
// Every sum runs in a fixed order (fixed trees, per-CTA partial buffers summed by the caller):
// the backward is deterministic. Derivation and float64 replay: py/ops/tests/ssd_cuda_model.py.
#pragma once

#include "cc/kernels/ssd/ssd_fwd.cuh"

namespace visionssm::ssd {

template <typename T>
__global__ void ssd_gate_bwd_kernel(const Params p, const Geometry g) {
  const int64_t total = g.batch * g.seqlen * g.heads * g.headdim;
  const T* dout = reinterpret_cast<const T*>(p.dout);
  const T* pre = reinterpret_cast<const T*>(p.pregate);
  const T* z = reinterpret_cast<const T*>(p.z.ptr);
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t f = e % g.headdim, h = (e / g.headdim) % g.heads, bt = e / (g.headdim * g.heads);
    const int64_t t = bt % g.seqlen, b = bt / g.seqlen;
    const float zv = cuda::to_float(z[b * p.z.stride[0] + t * p.z.stride[1] + h * p.z.stride[2] + f * p.z.stride[3]]);
    const float s = cuda::sigmoid(zv), d = cuda::to_float(dout[e]);
    reinterpret_cast<T*>(p.ws_dY)[e] = cuda::from_float<T>(d * zv * s);
    reinterpret_cast<T*>(p.dz)[e] = cuda::from_float<T>(d * cuda::to_float(pre[e]) * s * (1.f + zv * (1.f - s)));
  }
}

// One thread per (p, n) of one (batch, head), reverse over chunks. Causal: G = dfinal; for
// c = last..0: G (= dS_{c+1}, the gradient of chunk c's local state) replaces ws_dstates[c], the
// CTA's sum of G * S_{c+1} goes to ws_extra[c, blockIdx.x], G = local_c + e^{cumsum_last(c)} G;
// dinit = G. Non-causal: G = dfinal + sum of all local gradients, written to ws_dstates[0].
static __global__ void __launch_bounds__(kPassThreads) ssd_bwd_state_passing_kernel(const Params p, const Geometry g) {
  using Reduce = cub::BlockReduce<float, kPassThreads>;
  __shared__ typename Reduce::TempStorage red;
  const int64_t pn = g.headdim * g.dstate, e = int64_t(blockIdx.x) * kPassThreads + threadIdx.x;
  const int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads;
  const bool valid = e < pn;
  float G = valid && p.dfinal ? reinterpret_cast<const float*>(p.dfinal)[bh * pn + e] : 0.f;
  float* dstates = reinterpret_cast<float*>(p.ws_dstates);
  const float* states = reinterpret_cast<const float*>(p.ws_states);
  const float* cumsum = reinterpret_cast<const float*>(p.ws_cumsum) + bh * g.chunks * g.Q;
  auto slot = [&](int64_t c) { return g.state_offset(b, c, h) + e; };
  if (!p.causal) {
    if (!valid) return;
    for (int64_t c = 0; c < g.chunks; ++c) G += dstates[slot(c)];
    dstates[slot(0)] = G;
    return;
  }
  for (int64_t c = g.chunks - 1; c >= 0; --c) {
    float prod = 0.f;
    if (valid) {
      const float S_next = c + 1 < g.chunks ? states[slot(c + 1)] : reinterpret_cast<const float*>(p.final_states)[bh * pn + e];
      prod = G * S_next;
    }
    const float sum = Reduce(red).Sum(prod);
    if (threadIdx.x == 0) reinterpret_cast<float*>(p.ws_extra)[g.extra_index(g.bhc(b, h, c), blockIdx.x)] = sum;
    __syncthreads();  // red is reused
    if (valid) {
      const float local = dstates[slot(c)];
      dstates[slot(c)] = G;
      G = local + __expf(cumsum[c * g.Q + g.Q - 1]) * G;
    }
  }
  if (valid && p.dinit) reinterpret_cast<float*>(p.dinit)[bh * pn + e] = G;
}

// Row sums of a 64 x 64 float tile in shared memory, one thread per row (fixed order).
__device__ __forceinline__ float row_sum(const float* red, int r) {
  float s = 0.f;
  for (int k = 0; k < kTile; ++k) s += red[r * (kTile + 1) + k];
  return s;
}

// Shared memory of the two backward MMA kernels: the operand tiles, reused as a float tile for
// the epilogue's row sums once the last MMA is done.
template <typename T>
struct BwdSmem {
  using G = TileGemm<T>;
  static constexpr int kOperandBytes = 2 * G::kElems * int(sizeof(typename G::E));
  static constexpr int kRedBytes = kTile * (kTile + 1) * 4;
  static constexpr int kBytes = kOperandBytes > kRedBytes ? kOperandBytes : kRedBytes;
};

template <typename T>
__device__ __forceinline__ const T* dY_base(const Params& p, const Geometry& g, const ChunkCoord& cc) {
  return reinterpret_cast<const T*>(p.z.ptr ? p.ws_dY : p.dout) +
         ((cc.batch * g.seqlen + cc.chunk * g.Q) * g.heads + cc.head) * g.headdim;
}

// dS of this chunk (causal) or the total (non-causal: slot 0 of the batch's first chunk).
__device__ __forceinline__ const float* dS_base(const Params& p, const Geometry& g, const ChunkCoord& cc) {
  const int64_t c = p.causal ? cc.chunk : 0;
  return reinterpret_cast<const float*>(p.ws_dstates) + g.state_offset(cc.batch, c, cc.head);
}

// Tile (64 tokens j, 64 features p):
//   Z[j, p] = sum_{i blocks >= j block} sum_i Mt[j, i] dY[i, p] + sum_n B[j, n] decay_j dS[p, n],
//     Mt[j, i] = (sum_n B[j, n] C[i, n]) e^{cumsum_i - cumsum_j}  for i >= j (causal only);
//   dx = scale_j Z + D dY; ws_xz[j, p block] = sum_p x Z; dD[c * qblocks + j block, p] = sum_j dY x.
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) ssd_bwd_dx_kernel(const Params p, const Geometry g) {
  using G = TileGemm<T>;
  using E = typename G::E;
  __shared__ alignas(16) unsigned char smem[BwdSmem<T>::kBytes];
  __shared__ float s_cumsum[kMaxChunk], s_scale[kMaxChunk], s_decay[kMaxChunk];
  E* sA = reinterpret_cast<E*>(smem);
  E* sB = sA + G::kElems;
  float* red = reinterpret_cast<float*>(smem);
  const ChunkCoord cc = decode_chunk(g, blockIdx.x);
  const TileCoord tc = decode_tile(blockIdx.y, g.pblocks);  // rows j, cols p
  const ChunkIn<T> in(p, g, cc);
  if (tc.row0 >= in.q) return;
  token_factors<T>(p, g, in, head_A(p, cc.head), s_cumsum, nullptr, s_scale, s_decay);
  const T* dY = dY_base<T>(p, g, cc);
  const int64_t dYt = g.heads * g.headdim;
  auto dYv = [&](int64_t t, int64_t f) { return t < in.q && f < g.headdim ? cuda::to_float(dY[t * dYt + f]) : 0.f; };
  const float* dS = dS_base(p, g, cc);
  __syncthreads();
  auto acc = make_acc<T>();
  if (p.causal) {
    const BlockRange ir = blocks_from(tc.row0, in.q);
    for (int64_t i0 = ir.begin; i0 < ir.end; i0 += kTile) {
      auto bc = make_acc<T>();
      for (int64_t n0 = 0; n0 < g.dstate; n0 += kTile) {
        fill<T, false>(sA, [&](int r, int k) { return in.Bv(tc.row0 + r, n0 + k); });
        fill<T, false>(sB, [&](int r, int k) { return in.Cv(i0 + r, n0 + k); });
        __syncthreads();
        tile_mma<T>(sA, sB, bc);
        __syncthreads();
      }
      for_each_acc<T>(bc, [&](int r, int k, float v) {
        const int64_t j = tc.row0 + r, i = i0 + k;
        const bool ok = causal_pair(i, j, in.q);
        sA[r * G::kLd + k] = E(ok ? v * __expf(s_cumsum[i] - s_cumsum[j]) : 0.f);
      });
      fill<T, true>(sB, [&](int r, int k) { return dYv(i0 + k, tc.col0 + r); });
      __syncthreads();
      tile_mma<T>(sA, sB, acc);
      __syncthreads();
    }
  }
  for (int64_t n0 = 0; n0 < g.dstate; n0 += kTile) {
    fill<T, false>(sA, [&](int r, int k) {
      const int64_t j = tc.row0 + r;
      return j < in.q ? in.Bv(j, n0 + k) * s_decay[j] : 0.f;
    });
    fill<T, false>(sB, [&](int r, int k) {
      const int64_t f = tc.col0 + r, n = n0 + k;
      return f < g.headdim && n < g.dstate ? dS[f * g.dstate + n] : 0.f;
    });
    __syncthreads();
    tile_mma<T>(sA, sB, acc);
    __syncthreads();
  }
  const float* D = reinterpret_cast<const float*>(p.D.ptr);
  const int64_t t0 = cc.chunk * g.Q;
  for_each_acc<T>(acc, [&](int r, int k, float v) {
    const int64_t j = tc.row0 + r, f = tc.col0 + k;
    const bool ok = j < in.q && f < g.headdim;
    if (ok) {
      float dx = s_scale[j] * v;
      if (D) dx += D[cc.head * p.D.stride[0] + f * p.D.stride[1]] * dYv(j, f);
      reinterpret_cast<T*>(p.dx)[((cc.batch * g.seqlen + t0 + j) * g.heads + cc.head) * g.headdim + f] =
          cuda::from_float<T>(dx);
    }
    red[r * (kTile + 1) + k] = ok ? in.xv(j, f) * v : 0.f;
  });
  __syncthreads();
  const int r = threadIdx.x;
  if (r < kTile && tc.row0 + r < g.Q)
    reinterpret_cast<float*>(p.ws_xz)[g.xz_index(in.bh_chunk, tc.row0 + r, tc.col0 / kTile)] = row_sum(red, r);
  if (D && r < kTile && tc.col0 + r < g.headdim) {
    float s = 0.f;
    for (int k = 0; k < kTile; ++k) s += dYv(tc.row0 + k, tc.col0 + r) * in.xv(tc.row0 + k, tc.col0 + r);
    reinterpret_cast<float*>(p.dD)[g.dD_index(in.bh_chunk, tc.row0 / kTile, tc.col0 + r)] = s;
  }
}

// Tile (64 tokens r, 64 states n), two accumulators for the same tokens:
//   dC[i, n] = sum_p dY[i, p] e^{cumsum_i} S_in[p, n]
//            + sum_{j blocks <= r} sum_j W[i, j] B[j, n],   W[i, j] = (sum_p dY[i, p] x[j, p]) e^{cumsum_i - cumsum_j} dt'_j, j <= i
//   dB[j, n] = sum_p x[j, p] scale_j decay_j dS[p, n]
//            + sum_{i blocks >= r} sum_i W[i, j] C[i, n]
// (non-causal: no W terms, no e^, S_in = KV^T). Per head, float32; the caller sums a group's heads.
// ws_dcumsum[i, n block] = sum_n (C[i, n] dC[i, n] - B[i, n] dB[i, n]).
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) ssd_bwd_dbc_kernel(const Params p, const Geometry g) {
  using G = TileGemm<T>;
  using E = typename G::E;
  __shared__ alignas(16) unsigned char smem[BwdSmem<T>::kBytes];
  __shared__ float s_cumsum[kMaxChunk], s_dt[kMaxChunk], s_scale[kMaxChunk], s_decay[kMaxChunk];
  E* sA = reinterpret_cast<E*>(smem);
  E* sB = sA + G::kElems;
  float* red = reinterpret_cast<float*>(smem);
  const ChunkCoord cc = decode_chunk(g, blockIdx.x);
  const TileCoord tc = decode_tile(blockIdx.y, g.nblocks);  // rows tokens, cols n
  const ChunkIn<T> in(p, g, cc);
  if (tc.row0 >= in.q) return;
  token_factors<T>(p, g, in, head_A(p, cc.head), s_cumsum, s_dt, s_scale, s_decay);
  const T* dY = dY_base<T>(p, g, cc);
  const int64_t dYt = g.heads * g.headdim;
  auto dYv = [&](int64_t t, int64_t f) { return t < in.q && f < g.headdim ? cuda::to_float(dY[t * dYt + f]) : 0.f; };
  const int64_t pn = g.headdim * g.dstate;
  const float* S = reinterpret_cast<const float*>(p.causal ? p.ws_states : p.final_states) +
                   (p.causal ? g.state_offset(cc.batch, cc.chunk, cc.head) : (cc.batch * g.heads + cc.head) * pn);
  const float* dS = dS_base(p, g, cc);
  const bool has_state = !p.causal || cc.chunk > 0 || p.init.ptr;
  __syncthreads();
  auto acc_c = make_acc<T>();
  auto acc_b = make_acc<T>();
  for (int64_t f0 = 0; f0 < g.headdim; f0 += kTile) {
    auto stateT = [&](const float* M, int r, int k) {  // M[p, n] at (n = col0 + r, p = f0 + k)
      const int64_t n = tc.col0 + r, f = f0 + k;
      return n < g.dstate && f < g.headdim ? M[f * g.dstate + n] : 0.f;
    };
    if (has_state) {
      fill<T, false>(sA, [&](int r, int k) {
        const int64_t i = tc.row0 + r;
        const float d = dYv(i, f0 + k);
        return p.causal && i < in.q ? d * __expf(s_cumsum[i]) : d;
      });
      fill<T, true>(sB, [&](int r, int k) { return stateT(S, r, k); });
      __syncthreads();
      tile_mma<T>(sA, sB, acc_c);
      __syncthreads();
    }
    fill<T, false>(sA, [&](int r, int k) {
      const int64_t j = tc.row0 + r;
      return j < in.q ? in.xv(j, f0 + k) * s_scale[j] * s_decay[j] : 0.f;
    });
    fill<T, true>(sB, [&](int r, int k) { return stateT(dS, r, k); });
    __syncthreads();
    tile_mma<T>(sA, sB, acc_b);
    __syncthreads();
  }
  if (p.causal) {
    // W tiles: rows i, cols j (for dC) and their transposes rows j, cols i (for dB), each from a
    // dY x^T (or x dY^T) accumulator over p.
    for (int pass = 0; pass < 2; ++pass) {
      const bool for_dC = pass == 0;
      const BlockRange other = for_dC ? blocks_up_to(tc.row0) : blocks_from(tc.row0, in.q);
      for (int64_t o0 = other.begin; o0 < other.end; o0 += kTile) {  // the other token block: j (dC) or i (dB)
        auto m = make_acc<T>();
        for (int64_t f0 = 0; f0 < g.headdim; f0 += kTile) {
          fill<T, false>(sA, [&](int r, int k) {
            return for_dC ? dYv(tc.row0 + r, f0 + k) : in.xv(tc.row0 + r, f0 + k);
          });
          fill<T, false>(sB, [&](int r, int k) { return for_dC ? in.xv(o0 + r, f0 + k) : dYv(o0 + r, f0 + k); });
          __syncthreads();
          tile_mma<T>(sA, sB, m);
          __syncthreads();
        }
        for_each_acc<T>(m, [&](int r, int k, float v) {
          const int64_t i = for_dC ? tc.row0 + r : o0 + k, j = for_dC ? o0 + k : tc.row0 + r;
          const bool ok = causal_pair(i, j, in.q);
          sA[r * G::kLd + k] = E(ok ? v * __expf(s_cumsum[i] - s_cumsum[j]) * s_dt[j] : 0.f);
        });
        fill<T, true>(sB, [&](int r, int k) {
          return for_dC ? in.Bv(o0 + k, tc.col0 + r) : in.Cv(o0 + k, tc.col0 + r);
        });
        __syncthreads();
        if (for_dC) {
          tile_mma<T>(sA, sB, acc_c);
        } else {
          tile_mma<T>(sA, sB, acc_b);
        }
        __syncthreads();
      }
    }
  }
  const int64_t t0 = cc.chunk * g.Q;
  auto out_index = [&](int64_t t, int64_t n) { return ((cc.batch * g.seqlen + t0 + t) * g.heads + cc.head) * g.dstate + n; };
  for_each_acc<T>(acc_c, [&](int r, int k, float v) {
    const int64_t i = tc.row0 + r, n = tc.col0 + k;
    const bool ok = i < in.q && n < g.dstate;
    if (ok) reinterpret_cast<float*>(p.dC)[out_index(i, n)] = v;
    red[r * (kTile + 1) + k] = ok ? in.Cv(i, n) * v : 0.f;
  });
  for_each_acc<T>(acc_b, [&](int r, int k, float v) {  // same thread, same (r, k) as above: no sync
    const int64_t j = tc.row0 + r, n = tc.col0 + k;
    const bool ok = j < in.q && n < g.dstate;
    if (ok) reinterpret_cast<float*>(p.dB)[out_index(j, n)] = v;
    red[r * (kTile + 1) + k] -= ok ? in.Bv(j, n) * v : 0.f;
  });
  __syncthreads();
  const int r = threadIdx.x;
  if (p.causal && r < kTile && tc.row0 + r < g.Q)
    reinterpret_cast<float*>(p.ws_dcumsum)[g.dcumsum_index(in.bh_chunk, tc.row0 + r, tc.col0 / kTile)] = row_sum(red, r);
}

// One thread per token of one (batch, head, chunk). Causal: dcs_k = sum of the n-block partials (+
// the chunk's sum of dS * S_next at the last slot); da_k = sum_{i >= k} dcs_i (a reverse scan);
// ddt'_k = sum of the p-block xz partials + da_k A; dA += da_k dt'_k. Non-causal (w = -dt' A):
// ddt'_k = -A xz_k, dA += -dt'_k xz_k. Then ddt = ddt' softplus'(v) (v = dt + bias), zero where
// dt_limit clamps, and dbias += ddt.
template <typename T>
__global__ void __launch_bounds__(kScanThreads) ssd_bwd_dt_kernel(const Params p, const Geometry g) {
  using Scan = cub::BlockScan<float, kScanThreads>;
  using Reduce = cub::BlockReduce<float, kScanThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ typename Reduce::TempStorage red;
  const ChunkCoord cc = decode_chunk(g, blockIdx.x);
  const int64_t q = g.tokens(cc.chunk);
  const int64_t bhc = g.bhc(cc.batch, cc.head, cc.chunk);
  const int64_t k = g.Q - 1 - int64_t(threadIdx.x);  // reversed: the inclusive scan sums positions >= k
  const bool in_chunk = k >= 0, valid = in_chunk && k < q;
  const float A = head_A(p, cc.head);
  const float* xzp = reinterpret_cast<const float*>(p.ws_xz);
  float xz = 0.f;
  if (valid)
    for (int64_t b = 0; b < g.pblocks; ++b) xz += xzp[g.xz_index(bhc, k, b)];
  const float d = valid ? reinterpret_cast<const float*>(p.ws_dt)[bhc * g.Q + k] : 0.f;
  float ddtp, dA;
  if (p.causal) {
    float dcs = 0.f;
    const float* dcp = reinterpret_cast<const float*>(p.ws_dcumsum);
    if (valid)
      for (int64_t b = 0; b < g.nblocks; ++b) dcs += dcp[g.dcumsum_index(bhc, k, b)];
    if (k == g.Q - 1)
      for (int64_t b = 0; b < g.state_blocks; ++b) dcs += reinterpret_cast<const float*>(p.ws_extra)[g.extra_index(bhc, b)];
    float da;
    Scan(scan).InclusiveSum(in_chunk ? dcs : 0.f, da);
    ddtp = xz + da * A;
    dA = da * d;
  } else {
    ddtp = -A * xz;
    dA = -d * xz;
  }
  float ddt = 0.f;
  if (valid) {
    const int64_t t = cc.chunk * g.Q + k;
    const T* dt = reinterpret_cast<const T*>(p.dt.ptr);
    float v = cuda::to_float(dt[cc.batch * p.dt.stride[0] + t * p.dt.stride[1] + cc.head * p.dt.stride[2]]);
    if (p.dt_bias.ptr) v += reinterpret_cast<const float*>(p.dt_bias.ptr)[cc.head * p.dt_bias.stride[0]];
    ddt = ddtp;
    if (p.softplus && v <= 20.f) ddt *= cuda::sigmoid(v);
    if (p.softplus) v = cuda::softplus(v);
    if ((p.dt_min > 0.0 || p.dt_max < INFINITY) && !(v >= float(p.dt_min) && v <= float(p.dt_max))) ddt = 0.f;
    reinterpret_cast<T*>(p.ddt)[(cc.batch * g.seqlen + t) * g.heads + cc.head] = cuda::from_float<T>(ddt);
  }
  const float dA_sum = Reduce(red).Sum(valid ? dA : 0.f);
  __syncthreads();
  const float dbias_sum = Reduce(red).Sum(ddt);
  if (threadIdx.x == 0) {
    reinterpret_cast<float*>(p.dA)[bhc] = dA_sum;
    reinterpret_cast<float*>(p.dbias)[bhc] = dbias_sum;
  }
}

}  // namespace visionssm::ssd
