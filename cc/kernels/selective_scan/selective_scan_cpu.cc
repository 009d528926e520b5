// Selective scan (Mamba-1 / VMamba S6) on the CPU: forward and backward, float32 and float64.
//
// Semantics (spec vmamba_kernels.md §2.1), for batch b, channel d (group g = d / (dim / groups)),
// state n, time t:
//   δ_t   = delta[b,d,t] + bias[d];  if softplus and δ_t <= 20: δ_t = log1p(exp(δ_t))
//   h_t   = exp(δ_t·A[d,n]) · h_{t-1} + δ_t · B[b,g,n,t] · u[b,d,t],   h_{-1} = 0
//   y_t   = Σ_n C[b,g,n,t] · h_t[n] + D[d] · u[b,d,t];  with z: y_t *= silu(z[b,d,t])
//
// Layout of the work. The sequence is cut into time blocks of `chunk` steps. A tile is R
// consecutive channels of one batch row, i.e. K = R·N independent recurrences ("chains"); with
// N = 1 (VMamba) R = 8, so the 8 chains are 8 channels, with N >= 8 (Vim: 16) R = 1. Per block the
// tile runs passes over time that vectorize along t (δ and softplus, exp(δ·A), δ·B·u, C·h, ...)
// into small per-thread buffers, and the recurrence h = a·h + b itself, which vectorizes across
// chains instead: 8 chains × 8 steps are transposed in registers, scanned with 8 dependent vector
// FMAs, and transposed back.
//
// The forward optionally stores the state at the end of every block ("checkpoints", shape
// (batch, dim, n_blocks, N)); the backward walks the blocks last to first, recomputes h inside a
// block from the previous checkpoint and runs the reverse recurrence
//   g_t = C_t·dy_t + exp(δ_{t+1}·A)·g_{t+1}      (g_t = ∂L/∂h_t)
// Reductions are deterministic (fixed order, no atomics): dB/dC are summed over the channels of a
// group by one thread per (slice, batch, group) unit into that unit's own partial buffer (slices
// are reduced by the caller); dA, dD, dbias are written per (batch, channel) and summed over batch
// by the caller.
//
// N = 1 (VMamba) in float32 without z, on AVX2+FMA CPUs, takes its own path
// (selective_scan_n1_avx2.h): every quantity vectorized across 8 channels, inputs read once.
//
// Otherwise float32 runs on 8-wide GCC vector-extension code with its own exp (Cephes-style range
// reduction + degree-7 polynomial, ~1 ulp; results below ~1.2e-38 flush to 0) and softplus /
// sigmoid built on it (common/fast_math.h); float64 runs plain scalar loops with std::exp /
// std::log1p. Every entry point is compiled twice (common/clones.h: x86-64-v3 = AVX2+FMA, and the
// baseline x86-64, where the 8-wide vectors become pairs of SSE registers) and picked by the loader.
//
// Python passes one Params (selective_scan_params.h, the struct the CUDA kernels take) as a dict;
// make_args() turns it into the typed Args<T> the passes read.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/parallel.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// FP exceptions are never inspected here; without this GCC will not if-convert (and so not
// vectorize) loops whose bodies hold a select. Set before fast_math.h so its helpers get it too.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "cc/kernels/common/clones.h"
#include "cc/kernels/common/fast_math.h"
#include "cc/kernels/common/scratch.h"
#include "cc/kernels/selective_scan/selective_scan_params.h"
#include "cc/kernels/selective_scan/selective_scan_params_dict.h"

namespace {

using i64 = int64_t;
// The arithmetic policies (common/fast_math.h): a pass is written once against P.
using visionssm::F8;
using visionssm::f8;
using visionssm::PolicyFor;
using visionssm::Scalar;
using visionssm::scratch;
using visionssm::shuf8;

// ---------------------------------------------------------------------------------------------
// Arguments (element strides; the time axis of every (…, L) tensor has stride 1).

template <typename T>
struct Args {
  i64 batch = 0, dim = 0, L = 0, N = 0, groups = 1, chunk = 1;
  bool softplus = false;
  const T* u = nullptr;
  i64 u_sb = 0, u_sd = 0;
  const T* delta = nullptr;
  i64 dl_sb = 0, dl_sd = 0;
  const T* A = nullptr;
  i64 A_sd = 0, A_sn = 0;
  const T* B = nullptr;
  i64 B_sb = 0, B_sg = 0, B_sn = 0;
  const T* C = nullptr;
  i64 C_sb = 0, C_sg = 0, C_sn = 0;
  const T* D = nullptr;
  i64 D_s = 0;
  const T* bias = nullptr;
  i64 bias_s = 0;
  const T* z = nullptr;
  i64 z_sb = 0, z_sd = 0;
  // forward outputs (contiguous): y (batch, dim, L); last (batch, dim, N); ckpt (batch, dim, nblk, N)
  T* y = nullptr;
  T* last = nullptr;
  T* ckpt = nullptr;
  // backward
  const T* dout = nullptr;
  i64 do_sb = 0, do_sd = 0;
  const T* ckpt_in = nullptr;
  // N = 1 AVX2 path (selective_scan_n1_avx2.h): softplus(δ) saved by the forward for the
  // backward, batch·dim·L floats; null: not saved. With ds_in the backward needs no delta.
  T* ds_out = nullptr;
  const T* ds_in = nullptr;
  T* du = nullptr;          // (batch, dim, L)
  T* ddelta = nullptr;      // (batch, dim, L)
  T* dz = nullptr;          // (batch, dim, L) or null
  T* dA_part = nullptr;     // (batch, dim, N)
  T* dB_part = nullptr;     // (slices, batch, groups, N, L)
  T* dC_part = nullptr;     // (slices, batch, groups, N, L)
  T* dD_part = nullptr;     // (batch, dim) or null
  T* dbias_part = nullptr;  // (batch, dim) or null
  i64 slices = 1;

  i64 cpg() const { return dim / groups; }
  i64 nblk() const { return (L + chunk - 1) / chunk; }
  const T* urow(i64 b, i64 d) const { return u + b * u_sb + d * u_sd; }
  const T* dlrow(i64 b, i64 d) const { return delta + b * dl_sb + d * dl_sd; }
  const T* Brow(i64 b, i64 g, i64 n) const { return B + b * B_sb + g * B_sg + n * B_sn; }
  const T* Crow(i64 b, i64 g, i64 n) const { return C + b * C_sb + g * C_sg + n * C_sn; }
  const T* zrow(i64 b, i64 d) const { return z + b * z_sb + d * z_sd; }
  T Dval(i64 d) const { return D ? D[d * D_s] : T(0); }
  T biasval(i64 d) const { return bias ? bias[d * bias_s] : T(0); }
};

inline i64 gcd64(i64 a, i64 b) {
  while (b) {
    const i64 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Channels per tile: with N < 8, enough that R·N is a multiple of 8 (whole transposed groups).
inline i64 rows_per_tile(i64 N) { return N >= 8 ? 1 : 8 / gcd64(N, 8); }

// Time block: small enough that a tile's buffers stay in L1/L2; a multiple of 16.
inline i64 chunk_len(i64 N) {
  const i64 chains = rows_per_tile(N) * N;
  i64 t = 4096 / std::max<i64>(1, chains);
  t = std::min<i64>(512, std::max<i64>(32, t));
  return t / 16 * 16;
}


// ---------------------------------------------------------------------------------------------
// Passes over one block of `len` steps. Buffers: per row (stride ldr): dt (δ), dtu (δ·u), …;
// per chain c = r·N + n: a (exp(δA), stride lda) and hb (stride ldh: hb[0] = h_{t0−1},
// hb[1+t] = h_{t0+t}).

// δ (and σ(raw) for the softplus backward if sig != null) and δ·u for one row.
template <typename P>
VSSM_INLINE void delta_pass(i64 len, const typename P::T* __restrict dl, const typename P::T* __restrict u,
                            typename P::T bias, bool softplus, typename P::T* __restrict dt,
                            typename P::T* __restrict dtu, typename P::T* __restrict sig) {
  using R = typename P::R;
  const R vb = P::splat(bias);
  if constexpr (P::W > 1) {
    if (softplus) {
      // Two loops: e^−|raw| first (into dt), then the rest. Each loop's dependency chain is half
      // as long, so twice as many iterations overlap (measured ~20% faster than one loop).
      for (i64 t = 0; t < len; t += P::W) P::store(dt + t, P::exp_neg_abs(P::loadn(dl + t, len - t) + vb));
      for (i64 t = 0; t < len; t += P::W) {
        const i64 n = len - t;
        const R raw = P::loadn(dl + t, n) + vb;
        const R w = P::load(dt + t);
        const R v = P::softplus_w(raw, w);
        if (sig) P::store(sig + t, P::sigmoid_w(raw, w));
        P::store(dt + t, v);
        P::store(dtu + t, v * P::loadn(u + t, n));
      }
      return;
    }
  }
  if (softplus && sig) {
    for (i64 t = 0; t < len; t += P::W) {
      const i64 n = len - t;
      R s;
      const R v = P::softplus_sigmoid(P::loadn(dl + t, n) + vb, &s);
      P::store(sig + t, s);
      P::store(dt + t, v);
      P::store(dtu + t, v * P::loadn(u + t, n));
    }
  } else if (softplus) {
    for (i64 t = 0; t < len; t += P::W) {
      const i64 n = len - t;
      const R v = P::softplus(P::loadn(dl + t, n) + vb);
      P::store(dt + t, v);
      P::store(dtu + t, v * P::loadn(u + t, n));
    }
  } else {
    for (i64 t = 0; t < len; t += P::W) {
      const i64 n = len - t;
      const R v = P::loadn(dl + t, n) + vb;
      P::store(dt + t, v);
      P::store(dtu + t, v * P::loadn(u + t, n));
    }
  }
}

// a = exp(δ·A_n), hb[1+t] = δu·B_n for one chain. nonpos: δ >= 0 (softplus) and A_n <= 0, so
// δ·A_n <= 0 and the vector exp can skip its overflow clamp.
template <typename P>
VSSM_INLINE void discretize_pass(i64 len, const typename P::T* __restrict dt,
                                 const typename P::T* __restrict dtu, typename P::T An,
                                 const typename P::T* __restrict Bn, typename P::T* __restrict a,
                                 typename P::T* __restrict hb1, bool nonpos) {
  if constexpr (P::W > 1) {
    if (nonpos) {
      for (i64 t = 0; t < len; t += P::W) {
        P::store(a + t, P::template exp<true>(P::load(dt + t) * An));
        P::store(hb1 + t, P::load(dtu + t) * P::loadn(Bn + t, len - t));
      }
      return;
    }
  }
  for (i64 t = 0; t < len; t += P::W) {
    P::store(a + t, P::exp(P::load(dt + t) * An));
    P::store(hb1 + t, P::load(dtu + t) * P::loadn(Bn + t, len - t));
  }
}

// y = D·u + Σ_n C_n·h_n (then · silu(z) if gate) for one row; h1 = h of state 0 (stride ldh).
template <typename P>
VSSM_INLINE void output_pass(i64 len, i64 N, const typename P::T* __restrict u, typename P::T Dd,
                             const typename P::T* __restrict C0, i64 C_sn,
                             const typename P::T* __restrict h1, i64 ldh,
                             const typename P::T* __restrict z, typename P::T* __restrict y) {
  using R = typename P::R;
  for (i64 t = 0; t < len; t += P::W) {
    const i64 n = len - t;
    R acc = Dd * P::loadn(u + t, n);
    for (i64 s = 0; s < N; ++s) acc += P::loadn(C0 + s * C_sn + t, n) * P::load(h1 + s * ldh + t);
    if (z) {
      const R zz = P::loadn(z + t, n);
      acc *= zz * P::sigmoid(zz);
    }
    P::storen(y + t, acc, n);
  }
}

// Backward with a z gate, per row: dy = dout·silu(z) into dyb and dz = dout·y·silu'(z), with
// y = D·u + Σ_n C_n·h_n recomputed (h1 = hb + 1 of the row's chain 0).
template <typename P>
VSSM_INLINE void gate_pass(i64 len, i64 N, const typename P::T* __restrict u, typename P::T Dd,
                           const typename P::T* __restrict C0, i64 C_sn, const typename P::T* __restrict h1,
                           i64 ldh, const typename P::T* __restrict z, const typename P::T* __restrict dout,
                           typename P::T* __restrict dz, typename P::T* __restrict dyb) {
  using R = typename P::R;
  for (i64 t = 0; t < len; t += P::W) {
    const i64 m = len - t;
    R yv = Dd * P::loadn(u + t, m);
    for (i64 n = 0; n < N; ++n) yv += P::loadn(C0 + n * C_sn + t, m) * P::load(h1 + n * ldh + t);
    const R zz = P::loadn(z + t, m);
    const R sg = P::sigmoid(zz);
    const R d = P::loadn(dout + t, m);
    P::storen(dz + t, d * yv * sg * (1.0f + zz * (1.0f - sg)), m);
    P::store(dyb + t, d * zz * sg);
  }
}

// Backward, per chain: dC += dy·h; gb = C·dy (the reverse scan's input). dy: dout or dyb.
template <typename P>
VSSM_INLINE void dc_pass(i64 len, const typename P::T* __restrict dy, const typename P::T* __restrict h1,
                         const typename P::T* __restrict Cn, typename P::T* __restrict dC,
                         typename P::T* __restrict gb) {
  using R = typename P::R;
  for (i64 t = 0; t < len; t += P::W) {
    const i64 m = len - t;
    const R dyv = P::loadn(dy + t, m);
    P::storen(dC + t, P::loadn(dC + t, m) + dyv * P::load(h1 + t), m);
    P::store(gb + t, P::loadn(Cn + t, m) * dyv);
  }
}

// Sums accumulated in grad_pass.
template <typename T>
struct GradSums {
  T dA = 0, dD = 0, dbias = 0;
};

// Backward, per chain c = (r, n), given g: dB += g·δu, and the row's
//   du = D·dy + Σ_n g·δ·B_n,   dδ = Σ_n g·(B_n·u + A_n·exp(δA_n)·h_{t−1})
// accumulated over its chains: the first chain (kFirst) starts them (and adds dy·u to dD), the
// last (kLast) writes du and ddelta = dδ·σ(raw) (softplus) or dδ to the outputs and adds ddelta
// to dbias; in between they live in duacc/ddacc. dA += g·δ·exp(δA)·h_{t−1}.
template <typename P, bool kFirst, bool kLast>
VSSM_INLINE void grad_pass(i64 len, typename P::T An, typename P::T Dd, const typename P::T* __restrict g,
                           const typename P::T* __restrict a, const typename P::T* __restrict h0,
                           const typename P::T* __restrict dt, const typename P::T* __restrict dtu,
                           const typename P::T* __restrict u, const typename P::T* __restrict Bn,
                           const typename P::T* __restrict dy, const typename P::T* __restrict sig,
                           typename P::T* __restrict dB, typename P::T* __restrict duacc,
                           typename P::T* __restrict ddacc, typename P::T* __restrict duo,
                           typename P::T* __restrict ddo, GradSums<typename P::T>& sums) {
  using R = typename P::R;
  R accA = P::splat(0), accD = P::splat(0), accB = P::splat(0);
  for (i64 t = 0; t < len; t += P::W) {
    const i64 m = len - t;
    const R gt = P::load(g + t);
    const R ah = P::load(a + t) * P::load(h0 + t);  // exp(δA)·h_{t−1}
    const R gd = gt * P::load(dt + t);
    const R Bv = P::loadn(Bn + t, m);
    const R uu = P::loadn(u + t, m);
    P::storen(dB + t, P::loadn(dB + t, m) + gt * P::load(dtu + t), m);
    accA += gd * ah;
    R du = gd * Bv;
    R dd = gt * (Bv * uu + An * ah);
    if constexpr (kFirst) {
      const R dyv = P::loadn(dy + t, m);
      accD += dyv * uu;
      du += Dd * dyv;
    } else {
      du += P::load(duacc + t);
      dd += P::load(ddacc + t);
    }
    if constexpr (kLast) {
      if (sig) dd *= P::load(sig + t);
      P::storen(ddo + t, dd, m);
      P::storen(duo + t, du, m);
      accB += dd;
    } else {
      P::store(duacc + t, du);
      P::store(ddacc + t, dd);
    }
  }
  sums.dA += P::hsum(accA);
  if constexpr (kFirst) sums.dD += P::hsum(accD);
  if constexpr (kLast) sums.dbias += P::hsum(accB);
}

// ---------------------------------------------------------------------------------------------
// The recurrences. Scalar version: chains in groups of 8/4/1 interleaved (independent FMA chains).

template <typename T>
VSSM_INLINE void scan_forward_scalar(i64 c0, i64 K, i64 len, const T* __restrict a, i64 lda, T* __restrict hb,
                                     i64 ldh) {
  for (; c0 + 4 <= K; c0 += 4) {
    const T* ap[4];
    T* hp[4];
    T h[4];
    for (int j = 0; j < 4; ++j) {
      ap[j] = a + (c0 + j) * lda;
      hp[j] = hb + (c0 + j) * ldh + 1;
      h[j] = hp[j][-1];
    }
    for (i64 t = 0; t < len; ++t) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        h[j] = ap[j][t] * h[j] + hp[j][t];
        hp[j][t] = h[j];
      }
    }
  }
  for (; c0 < K; ++c0) {
    const T* ap = a + c0 * lda;
    T* hp = hb + c0 * ldh + 1;
    T h = hp[-1];
    for (i64 t = 0; t < len; ++t) {
      h = ap[t] * h + hp[t];
      hp[t] = h;
    }
  }
}

template <typename T>
VSSM_INLINE void scan_reverse_scalar(i64 c0, i64 K, i64 len, const T* __restrict a, i64 lda, T* __restrict gb,
                                     i64 ldg, T* __restrict carry) {
  for (; c0 + 4 <= K; c0 += 4) {
    const T* ap[4];
    T* gp[4];
    T g[4];
    for (int j = 0; j < 4; ++j) {
      ap[j] = a + (c0 + j) * lda;
      gp[j] = gb + (c0 + j) * ldg;
      g[j] = carry[c0 + j];
    }
    for (i64 t = len - 1; t >= 0; --t) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const T v = gp[j][t] + g[j];
        gp[j][t] = v;
        g[j] = ap[j][t] * v;
      }
    }
    for (int j = 0; j < 4; ++j) carry[c0 + j] = g[j];
  }
  for (; c0 < K; ++c0) {
    const T* ap = a + c0 * lda;
    T* gp = gb + c0 * ldg;
    T g = carry[c0];
    for (i64 t = len - 1; t >= 0; --t) {
      const T v = gp[t] + g;
      gp[t] = v;
      g = ap[t] * v;
    }
    carry[c0] = g;
  }
}

// 8×8 transpose: r_j[k] -> r_k[j].
VSSM_INLINE void transpose8(f8& r0, f8& r1, f8& r2, f8& r3, f8& r4, f8& r5, f8& r6, f8& r7) {
  const shuf8 lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const f8 t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi);
  const f8 t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
  const f8 t4 = __builtin_shuffle(r4, r5, lo), t5 = __builtin_shuffle(r4, r5, hi);
  const f8 t6 = __builtin_shuffle(r6, r7, lo), t7 = __builtin_shuffle(r6, r7, hi);
  const shuf8 e = {0, 1, 8, 9, 4, 5, 12, 13}, o = {2, 3, 10, 11, 6, 7, 14, 15};
  const f8 s0 = __builtin_shuffle(t0, t2, e), s1 = __builtin_shuffle(t0, t2, o);
  const f8 s2 = __builtin_shuffle(t1, t3, e), s3 = __builtin_shuffle(t1, t3, o);
  const f8 s4 = __builtin_shuffle(t4, t6, e), s5 = __builtin_shuffle(t4, t6, o);
  const f8 s6 = __builtin_shuffle(t5, t7, e), s7 = __builtin_shuffle(t5, t7, o);
  const shuf8 l = {0, 1, 2, 3, 8, 9, 10, 11}, h = {4, 5, 6, 7, 12, 13, 14, 15};
  r0 = __builtin_shuffle(s0, s4, l);
  r1 = __builtin_shuffle(s1, s5, l);
  r2 = __builtin_shuffle(s2, s6, l);
  r3 = __builtin_shuffle(s3, s7, l);
  r4 = __builtin_shuffle(s0, s4, h);
  r5 = __builtin_shuffle(s1, s5, h);
  r6 = __builtin_shuffle(s2, s6, h);
  r7 = __builtin_shuffle(s3, s7, h);
}

// h_t = a_t·h_{t−1} + hb[1+t] in place for chains [0, K).
template <typename P>
VSSM_INLINE void scan_forward(i64 K, i64 len, const typename P::T* __restrict a, i64 lda,
                              typename P::T* __restrict hb, i64 ldh) {
  i64 c0 = 0;
  if constexpr (P::W == 8) {
    using R = typename P::R;
    const i64 len8 = len / 8 * 8;
    for (; c0 + 8 <= K; c0 += 8) {
      const float* ac = a + c0 * lda;
      float* hc = hb + c0 * ldh;
      float h0[8];
      for (int j = 0; j < 8; ++j) h0[j] = hc[j * ldh];
      R h = P::load(h0);
      for (i64 t = 0; t < len8; t += 8) {
        R a0 = P::load(ac + t), a1 = P::load(ac + lda + t), a2 = P::load(ac + 2 * lda + t),
          a3 = P::load(ac + 3 * lda + t), a4 = P::load(ac + 4 * lda + t), a5 = P::load(ac + 5 * lda + t),
          a6 = P::load(ac + 6 * lda + t), a7 = P::load(ac + 7 * lda + t);
        float* hp = hc + 1 + t;
        R b0 = P::load(hp), b1 = P::load(hp + ldh), b2 = P::load(hp + 2 * ldh), b3 = P::load(hp + 3 * ldh),
          b4 = P::load(hp + 4 * ldh), b5 = P::load(hp + 5 * ldh), b6 = P::load(hp + 6 * ldh),
          b7 = P::load(hp + 7 * ldh);
        transpose8(a0, a1, a2, a3, a4, a5, a6, a7);
        transpose8(b0, b1, b2, b3, b4, b5, b6, b7);
        b0 = h = a0 * h + b0;
        b1 = h = a1 * h + b1;
        b2 = h = a2 * h + b2;
        b3 = h = a3 * h + b3;
        b4 = h = a4 * h + b4;
        b5 = h = a5 * h + b5;
        b6 = h = a6 * h + b6;
        b7 = h = a7 * h + b7;
        transpose8(b0, b1, b2, b3, b4, b5, b6, b7);
        P::store(hp, b0);
        P::store(hp + ldh, b1);
        P::store(hp + 2 * ldh, b2);
        P::store(hp + 3 * ldh, b3);
        P::store(hp + 4 * ldh, b4);
        P::store(hp + 5 * ldh, b5);
        P::store(hp + 6 * ldh, b6);
        P::store(hp + 7 * ldh, b7);
      }
      if (len8 < len) {
        P::store(h0, h);
        for (int j = 0; j < 8; ++j) {
          const float* ap = ac + j * lda;
          float* hp = hc + j * ldh + 1;
          float hj = h0[j];
          for (i64 t = len8; t < len; ++t) {
            hj = ap[t] * hj + hp[t];
            hp[t] = hj;
          }
        }
      }
    }
  }
  scan_forward_scalar<typename P::T>(c0, K, len, a, lda, hb, ldh);
}

// g_t = gb[t] + carry; carry = a_t·g_t (t = len−1 … 0), in place; carry[c] in/out.
template <typename P>
VSSM_INLINE void scan_reverse(i64 K, i64 len, const typename P::T* __restrict a, i64 lda,
                              typename P::T* __restrict gb, i64 ldg, typename P::T* __restrict carry) {
  i64 c0 = 0;
  if constexpr (P::W == 8) {
    using R = typename P::R;
    const i64 len8 = len / 8 * 8;
    for (; c0 + 8 <= K; c0 += 8) {
      const float* ac = a + c0 * lda;
      float* gc = gb + c0 * ldg;
      float g0[8];
      for (int j = 0; j < 8; ++j) {  // the partial top block, scalar
        const float* ap = ac + j * lda;
        float* gp = gc + j * ldg;
        float g = carry[c0 + j];
        for (i64 t = len - 1; t >= len8; --t) {
          const float v = gp[t] + g;
          gp[t] = v;
          g = ap[t] * v;
        }
        g0[j] = g;
      }
      R g = P::load(g0);
      for (i64 t = len8 - 8; t >= 0; t -= 8) {
        R a0 = P::load(ac + t), a1 = P::load(ac + lda + t), a2 = P::load(ac + 2 * lda + t),
          a3 = P::load(ac + 3 * lda + t), a4 = P::load(ac + 4 * lda + t), a5 = P::load(ac + 5 * lda + t),
          a6 = P::load(ac + 6 * lda + t), a7 = P::load(ac + 7 * lda + t);
        float* gp = gc + t;
        R v0 = P::load(gp), v1 = P::load(gp + ldg), v2 = P::load(gp + 2 * ldg), v3 = P::load(gp + 3 * ldg),
          v4 = P::load(gp + 4 * ldg), v5 = P::load(gp + 5 * ldg), v6 = P::load(gp + 6 * ldg),
          v7 = P::load(gp + 7 * ldg);
        transpose8(a0, a1, a2, a3, a4, a5, a6, a7);
        transpose8(v0, v1, v2, v3, v4, v5, v6, v7);
        v7 += g;
        g = a7 * v7;
        v6 += g;
        g = a6 * v6;
        v5 += g;
        g = a5 * v5;
        v4 += g;
        g = a4 * v4;
        v3 += g;
        g = a3 * v3;
        v2 += g;
        g = a2 * v2;
        v1 += g;
        g = a1 * v1;
        v0 += g;
        g = a0 * v0;
        transpose8(v0, v1, v2, v3, v4, v5, v6, v7);
        P::store(gp, v0);
        P::store(gp + ldg, v1);
        P::store(gp + 2 * ldg, v2);
        P::store(gp + 3 * ldg, v3);
        P::store(gp + 4 * ldg, v4);
        P::store(gp + 5 * ldg, v5);
        P::store(gp + 6 * ldg, v6);
        P::store(gp + 7 * ldg, v7);
      }
      P::store(g0, g);
      for (int j = 0; j < 8; ++j) carry[c0 + j] = g0[j];
    }
  }
  scan_reverse_scalar<typename P::T>(c0, K, len, a, lda, gb, ldg, carry);
}

// Scratch strides: rows padded to a multiple of 8 (vector stores may run past `len`).
struct Strides3 {
  i64 ldr, lda, ldh;
};
inline Strides3 strides_for(i64 chunk) { return {chunk, chunk, chunk + 8}; }

// ---------------------------------------------------------------------------------------------
// Forward of one tile (rows d0 .. d0+nr−1 of batch b) over the whole sequence.

template <typename P>
VSSM_INLINE void forward_tile(const Args<typename P::T>& p, i64 b, i64 d0, i64 nr) {
  using T = typename P::T;
  const i64 N = p.N, K = nr * N, cpg = p.cpg(), nblk = p.nblk();
  const auto [ldr, lda, ldh] = strides_for(p.chunk);
  T* ws = scratch<T>(static_cast<size_t>(2 * nr * ldr + K * lda + K * ldh + 2 * K));
  T* dt = ws;
  T* dtu = dt + nr * ldr;
  T* a = dtu + nr * ldr;
  T* hb = a + K * lda;
  T* Ak = hb + K * ldh;  // A per chain
  T* h = Ak + K;         // state per chain between blocks
  for (i64 r = 0; r < nr; ++r)
    for (i64 n = 0; n < N; ++n) {
      Ak[r * N + n] = p.A[(d0 + r) * p.A_sd + n * p.A_sn];
      h[r * N + n] = T(0);
    }
  for (i64 blk = 0; blk < nblk; ++blk) {
    const i64 t0 = blk * p.chunk, len = std::min(p.chunk, p.L - t0);
    for (i64 r = 0; r < nr; ++r) {
      const i64 d = d0 + r, g = d / cpg;
      delta_pass<P>(len, p.dlrow(b, d) + t0, p.urow(b, d) + t0, p.biasval(d), p.softplus, dt + r * ldr,
                    dtu + r * ldr, nullptr);
      for (i64 n = 0; n < N; ++n) {
        const i64 c = r * N + n;
        hb[c * ldh] = h[c];
        discretize_pass<P>(len, dt + r * ldr, dtu + r * ldr, Ak[c], p.Brow(b, g, n) + t0, a + c * lda,
                           hb + c * ldh + 1, p.softplus && Ak[c] <= T(0));
      }
    }
    scan_forward<P>(K, len, a, lda, hb, ldh);
    for (i64 c = 0; c < K; ++c) h[c] = hb[c * ldh + len];
    if (p.ckpt) {
      for (i64 r = 0; r < nr; ++r)
        std::copy(h + r * N, h + (r + 1) * N, p.ckpt + ((b * p.dim + d0 + r) * nblk + blk) * N);
    }
    for (i64 r = 0; r < nr; ++r) {
      const i64 d = d0 + r, g = d / cpg;
      output_pass<P>(len, N, p.urow(b, d) + t0, p.Dval(d), p.Crow(b, g, 0) + t0, p.C_sn,
                     hb + (r * N) * ldh + 1, ldh, p.z ? p.zrow(b, d) + t0 : nullptr,
                     p.y + (b * p.dim + d) * p.L + t0);
    }
  }
  if (p.last) {
    for (i64 r = 0; r < nr; ++r) std::copy(h + r * N, h + (r + 1) * N, p.last + (b * p.dim + d0 + r) * N);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward of one tile (rows d0 .. d0+nr−1 of batch b, all in group g); dB/dC accumulate into
// dBp/dCp (this unit's (N, L) slabs).

template <typename P>
VSSM_INLINE void backward_tile(const Args<typename P::T>& p, i64 b, i64 d0, i64 nr, typename P::T* dBp,
                               typename P::T* dCp) {
  using T = typename P::T;
  const i64 N = p.N, K = nr * N, cpg = p.cpg(), nblk = p.nblk(), L = p.L;
  const i64 g = d0 / cpg;
  const auto [ldr, lda, ldh] = strides_for(p.chunk);
  T* ws = scratch<T>(static_cast<size_t>(6 * nr * ldr + 2 * K * lda + K * ldh + 3 * K + 2 * nr));
  T* dt = ws;                   // δ
  T* dtu = dt + nr * ldr;       // δ·u
  T* sig = dtu + nr * ldr;      // softplus'(raw) = σ(raw)
  T* dyb = sig + nr * ldr;      // ∂L/∂y before the gate (what reaches C·h + D·u)
  T* duacc = dyb + nr * ldr;    // ∂L/∂u
  T* ddacc = duacc + nr * ldr;  // ∂L/∂δ
  T* a = ddacc + nr * ldr;
  T* gb = a + K * lda;
  T* hb = gb + K * lda;
  T* Ak = hb + K * ldh;
  T* carry = Ak + K;
  T* dAacc = carry + K;
  T* dDacc = dAacc + K;
  T* dbacc = dDacc + nr;
  for (i64 r = 0; r < nr; ++r) {
    dDacc[r] = T(0);
    dbacc[r] = T(0);
    for (i64 n = 0; n < N; ++n) {
      Ak[r * N + n] = p.A[(d0 + r) * p.A_sd + n * p.A_sn];
      carry[r * N + n] = T(0);
      dAacc[r * N + n] = T(0);
    }
  }
  for (i64 blk = nblk - 1; blk >= 0; --blk) {
    const i64 t0 = blk * p.chunk, len = std::min(p.chunk, L - t0);
    // Recompute δ, exp(δA), δBu and h over the block, from the previous block's checkpoint.
    for (i64 r = 0; r < nr; ++r) {
      const i64 d = d0 + r;
      delta_pass<P>(len, p.dlrow(b, d) + t0, p.urow(b, d) + t0, p.biasval(d), p.softplus, dt + r * ldr,
                    dtu + r * ldr, p.softplus ? sig + r * ldr : nullptr);
      const T* ck = blk > 0 ? p.ckpt_in + ((b * p.dim + d) * nblk + blk - 1) * N : nullptr;
      for (i64 n = 0; n < N; ++n) {
        const i64 c = r * N + n;
        hb[c * ldh] = ck ? ck[n] : T(0);
        discretize_pass<P>(len, dt + r * ldr, dtu + r * ldr, Ak[c], p.Brow(b, g, n) + t0, a + c * lda,
                           hb + c * ldh + 1, p.softplus && Ak[c] <= T(0));
      }
    }
    scan_forward<P>(K, len, a, lda, hb, ldh);
    // dy (through the z gate, into dyb) and dz; dC and the reverse-scan input C·dy.
    for (i64 r = 0; r < nr; ++r) {
      const i64 d = d0 + r;
      const T* dout = p.dout + b * p.do_sb + d * p.do_sd + t0;
      const T* dy = dout;
      if (p.z) {
        gate_pass<P>(len, N, p.urow(b, d) + t0, p.Dval(d), p.Crow(b, g, 0) + t0, p.C_sn, hb + (r * N) * ldh + 1,
                     ldh, p.zrow(b, d) + t0, dout, p.dz + (b * p.dim + d) * L + t0, dyb + r * ldr);
        dy = dyb + r * ldr;
      }
      for (i64 n = 0; n < N; ++n) {
        const i64 c = r * N + n;
        dc_pass<P>(len, dy, hb + c * ldh + 1, p.Crow(b, g, n) + t0, dCp + n * L + t0, gb + c * lda);
      }
    }
    // g over the block, backwards; carry = exp(δ_{t0}A)·g_{t0} goes to the previous block.
    scan_reverse<P>(K, len, a, lda, gb, lda, carry);
    // dB, du, ddelta, dA, dD, dbias.
    for (i64 r = 0; r < nr; ++r) {
      const i64 d = d0 + r, row = b * p.dim + d;
      const T* dy = p.z ? dyb + r * ldr : p.dout + b * p.do_sb + d * p.do_sd + t0;
      const T* sg = p.softplus ? sig + r * ldr : nullptr;
      for (i64 n = 0; n < N; ++n) {
        const i64 c = r * N + n;
        GradSums<T> sums;
#define VSSM_GRAD(FIRST, LAST)                                                                       \
  grad_pass<P, FIRST, LAST>(len, Ak[c], p.Dval(d), gb + c * lda, a + c * lda, hb + c * ldh, dt + r * ldr, \
                            dtu + r * ldr, p.urow(b, d) + t0, p.Brow(b, g, n) + t0, dy, sg,              \
                            dBp + n * L + t0, duacc + r * ldr, ddacc + r * ldr, p.du + row * L + t0,     \
                            p.ddelta + row * L + t0, sums)
        if (n == 0 && n == N - 1) VSSM_GRAD(true, true);
        else if (n == 0) VSSM_GRAD(true, false);
        else if (n == N - 1) VSSM_GRAD(false, true);
        else VSSM_GRAD(false, false);
#undef VSSM_GRAD
        dAacc[c] += sums.dA;
        dDacc[r] += sums.dD;
        dbacc[r] += sums.dbias;
      }
    }
  }
  for (i64 r = 0; r < nr; ++r) {
    const i64 row = b * p.dim + d0 + r;
    std::copy(dAacc + r * N, dAacc + (r + 1) * N, p.dA_part + row * N);
    if (p.dD_part) p.dD_part[row] = dDacc[r];
    if (p.dbias_part) p.dbias_part[row] = dbacc[r];
  }
}

// ---------------------------------------------------------------------------------------------
#include "cc/kernels/selective_scan/selective_scan_n1_avx2.h"  // defines use_n1_path() and n1::run_tile()

// ---------------------------------------------------------------------------------------------
// Work units. Forward: tiles of R channels of one batch row. Backward: (slice, batch, group)
// units; a group's ceil(cpg/R) tiles are split into S contiguous slices.

template <typename P>
VSSM_INLINE void forward_unit_impl(const Args<typename P::T>& p, i64 unit) {
  const i64 R = rows_per_tile(p.N), per_b = (p.dim + R - 1) / R;
  const i64 b = unit / per_b, d0 = (unit % per_b) * R;
  if constexpr (std::is_same_v<P, F8>) {
#ifdef VSSM_N1_PATH
    if (use_n1_path(p)) return n1::run_tile(p, b, d0, nullptr, nullptr);
#endif
  }
  forward_tile<P>(p, b, d0, std::min(R, p.dim - d0));
}

template <typename P>
VSSM_INLINE void backward_unit_impl(const Args<typename P::T>& p, i64 unit) {
  using T = typename P::T;
  const i64 G = p.groups, cpg = p.cpg(), S = p.slices, L = p.L, N = p.N;
  const i64 s = unit / (p.batch * G), b = (unit / G) % p.batch, g = unit % G;
  const i64 R = rows_per_tile(N), tiles = (cpg + R - 1) / R;
  const i64 c_begin = std::min(cpg, s * tiles / S * R), c_end = std::min(cpg, (s + 1) * tiles / S * R);
  T* dBp = p.dB_part + ((s * p.batch + b) * G + g) * N * L;
  T* dCp = p.dC_part + ((s * p.batch + b) * G + g) * N * L;
  std::fill(dBp, dBp + N * L, T(0));
  std::fill(dCp, dCp + N * L, T(0));
  for (i64 c = c_begin; c < c_end; c += R) {
    if constexpr (std::is_same_v<P, F8>) {
#ifdef VSSM_N1_PATH
      if (p.ds_in) {  // the forward saved δ: it ran the N = 1 path (run_backward checked)
        n1::run_tile(p, b, g * cpg + c, dBp, dCp);
        continue;
      }
#endif
    }
    backward_tile<P>(p, b, g * cpg + c, std::min(R, c_end - c), dBp, dCp);
  }
}

VSSM_CLONES void forward_unit_f32(const Args<float>& p, i64 unit) { forward_unit_impl<F8>(p, unit); }
VSSM_CLONES void forward_unit_f64(const Args<double>& p, i64 unit) {
  forward_unit_impl<Scalar<double>>(p, unit);
}
VSSM_CLONES void backward_unit_f32(const Args<float>& p, i64 unit) { backward_unit_impl<F8>(p, unit); }
VSSM_CLONES void backward_unit_f64(const Args<double>& p, i64 unit) {
  backward_unit_impl<Scalar<double>>(p, unit);
}

// Output buffers come fresh from the allocator, so their first touch page-faults once per 4 KiB
// page; asking for transparent huge pages on the 2 MiB-aligned interior cuts the faults 512-fold
// (a hint only: with THP off, or "never", nothing changes).
bool g_huge_pages = true;

void advise_huge_pages(const void* ptr, i64 bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(1) << 21;
  if (!g_huge_pages || !ptr || bytes < static_cast<i64>(4 * kHuge)) return;
  const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

inline void run_unit(const Args<float>& p, i64 u, bool fwd) {
  fwd ? forward_unit_f32(p, u) : backward_unit_f32(p, u);
}
inline void run_unit(const Args<double>& p, i64 u, bool fwd) {
  fwd ? forward_unit_f64(p, u) : backward_unit_f64(p, u);
}

// Python entry points: one Params (selective_scan_params.h), filled from a dict as for CUDA.

namespace ss = visionssm::selective_scan;
using Ptr = std::uintptr_t;

// The typed view of Params the passes read (T: float or double; see DType::kFloat64).
template <typename T>
Args<T> make_args(const ss::Params& q) {
  VSSM_CHECK(q.batch >= 0 && q.dim >= 0 && q.seqlen >= 0, "sizes must be >= 0");
  VSSM_CHECK(q.dstate >= 1, "N must be >= 1, got ", q.dstate);
  VSSM_CHECK(q.groups >= 1 && q.dim % q.groups == 0, "dim ", q.dim, " must be a multiple of groups ",
             q.groups);
  VSSM_CHECK(!q.cross2d, "cross-2D is a CUDA mode; on the CPU run cross_scan, the scan, cross_merge");
  VSSM_CHECK((q.u && q.A && q.B && q.C) || q.batch * q.dim * q.seqlen == 0, "u, A, B, C must be non-null");
  Args<T> p;
  p.batch = q.batch;
  p.dim = q.dim;
  p.L = q.seqlen;
  p.N = q.dstate;
  p.groups = q.groups;
  p.chunk = chunk_len(q.dstate);
  p.softplus = q.softplus;
  p.u = static_cast<const T*>(q.u);
  p.u_sb = q.u_batch_stride;
  p.u_sd = q.u_dim_stride;
  p.delta = static_cast<const T*>(q.delta);
  p.dl_sb = q.delta_batch_stride;
  p.dl_sd = q.delta_dim_stride;
  p.A = reinterpret_cast<const T*>(q.A);
  p.A_sd = q.A_dim_stride;
  p.A_sn = q.A_state_stride;
  p.B = static_cast<const T*>(q.B);
  p.B_sb = q.B_batch_stride;
  p.B_sg = q.B_group_stride;
  p.B_sn = q.B_state_stride;
  p.C = static_cast<const T*>(q.C);
  p.C_sb = q.C_batch_stride;
  p.C_sg = q.C_group_stride;
  p.C_sn = q.C_state_stride;
  p.D = reinterpret_cast<const T*>(q.D);
  p.D_s = q.D_stride;
  p.bias = reinterpret_cast<const T*>(q.delta_bias);
  p.bias_s = q.delta_bias_stride;
  p.z = static_cast<const T*>(q.z);
  p.z_sb = q.z_batch_stride;
  p.z_sd = q.z_dim_stride;
  return p;
}

// The N = 1 path's saved δ: only float32, only where that path runs.
inline void set_saved(Args<float>& p, float* saved, bool fwd) {
  VSSM_CHECK(!saved || use_n1_path(p), "saved δ belongs to the N = 1 float32 path, which does not run here ",
             "(n1_path() is False for these sizes, or set_n1_path() changed since the forward)");
  if (fwd)
    p.ds_out = saved;
  else
    p.ds_in = saved;
}
inline void set_saved(Args<double>&, float* saved, bool) {
  VSSM_CHECK(!saved, "saved δ belongs to the N = 1 float32 path; float64 has none");
}

template <typename T>
void run_forward(const ss::Params& q, int threads) {
  Args<T> p = make_args<T>(q);
  VSSM_CHECK(q.y || p.L == 0 || p.batch * p.dim == 0, "y must be non-null");
  VSSM_CHECK(p.delta || p.batch * p.dim * p.L == 0, "delta must be non-null");
  set_saved(p, q.saved_delta, true);
  p.y = static_cast<T*>(q.y);
  p.last = reinterpret_cast<T*>(q.last_state);
  p.ckpt = reinterpret_cast<T*>(q.ckpt);
  const i64 R = rows_per_tile(p.N);
  const i64 units = p.batch * ((p.dim + R - 1) / R);
  const Args<T>& cp = p;
  advise_huge_pages(p.y, p.batch * p.dim * p.L * static_cast<i64>(sizeof(T)));
  advise_huge_pages(p.ds_out, p.batch * p.dim * p.L * static_cast<i64>(sizeof(T)));
  visionssm::parallel_for_dynamic(units, threads, [&](i64 i) { run_unit(cp, i, true); });
}

template <typename T>
void run_backward(const ss::Params& q, int threads) {
  Args<T> p = make_args<T>(q);
  set_saved(p, q.saved_delta, false);
  VSSM_CHECK(p.delta || q.saved_delta || p.batch * p.dim * p.L == 0, "delta (or the saved δ) must be non-null");
  VSSM_CHECK(q.slices >= 1 && q.slices <= std::max<i64>(1, p.cpg()), "slices must be in [1, dim/groups], got ",
             q.slices);
  VSSM_CHECK((q.dout && q.du && q.ddelta && q.dA_part && q.dB_part && q.dC_part) || p.batch * p.dim * p.L == 0,
             "gradient buffers must be non-null");
  VSSM_CHECK(!p.z || q.dz, "dz must be non-null when z is given");
  // No channel rows (batch or dim 0): nothing reads checkpoints, and an empty checkpoint tensor
  // has a null address.
  VSSM_CHECK(q.ckpt || p.nblk() <= 1 || p.batch * p.dim == 0, "checkpoints are required when L > chunk");
  p.dout = static_cast<const T*>(q.dout);
  p.do_sb = q.dout_batch_stride;
  p.do_sd = q.dout_dim_stride;
  p.ckpt_in = reinterpret_cast<const T*>(q.ckpt);
  p.du = static_cast<T*>(q.du);
  p.ddelta = static_cast<T*>(q.ddelta);
  p.dz = static_cast<T*>(q.dz);
  p.dA_part = reinterpret_cast<T*>(q.dA_part);
  p.dB_part = reinterpret_cast<T*>(q.dB_part);
  p.dC_part = reinterpret_cast<T*>(q.dC_part);
  p.dD_part = reinterpret_cast<T*>(q.dD_part);
  p.dbias_part = reinterpret_cast<T*>(q.dbias_part);
  p.slices = q.slices;
  const i64 units = p.slices * p.batch * p.groups;
  const Args<T>& cp = p;
  const i64 bytes = p.batch * p.dim * p.L * static_cast<i64>(sizeof(T));
  advise_huge_pages(p.du, bytes);
  advise_huge_pages(p.ddelta, bytes);
  advise_huge_pages(p.dz, bytes);
  visionssm::parallel_for_dynamic(units, threads, [&](i64 i) { run_unit(cp, i, false); });
}

// Parses with the GIL held, runs without it.
void run(const pybind11::dict& args, int threads, bool backward) {
  const ss::Params q = ss::params_from_dict(args, "selective_scan_cpu", {ss::DType::kFloat32, ss::DType::kFloat64});
  pybind11::gil_scoped_release release;
  if (q.dtype == ss::DType::kFloat64)
    backward ? run_backward<double>(q, threads) : run_forward<double>(q, threads);
  else
    backward ? run_backward<float>(q, threads) : run_forward<float>(q, threads);
}

// The float32 elementwise math of the kernel, exposed for tests (x, out: n contiguous floats).
VSSM_CLONES void fast_math_f32_impl(int fn, i64 n, const float* x, float* out) {
  for (i64 i = 0; i < n; i += F8::W) {
    const f8 v = F8::loadn(x + i, n - i);
    F8::storen(out + i, fn == 0 ? F8::exp(v) : fn == 1 ? F8::softplus(v) : F8::sigmoid(v), n - i);
  }
}

void fast_math_f32(const std::string& fn, i64 n, Ptr x, Ptr out) {
  const int id = fn == "exp" ? 0 : fn == "softplus" ? 1 : fn == "sigmoid" ? 2 : -1;
  if (id < 0) visionssm::fail("fast_math_f32: fn must be exp, softplus or sigmoid, got ", fn);
  fast_math_f32_impl(id, n, reinterpret_cast<const float*>(x), reinterpret_cast<float*>(out));
}

}  // namespace

PYBIND11_MODULE(selective_scan_cpu, m) {
  namespace py = pybind11;
  m.doc() = "Selective scan (S6) forward/backward on the CPU, float32 and float64.";
  m.def("chunk_len", &chunk_len, "time block length used for checkpoints, given N", py::arg("N"));
  m.def("forward", [](const py::dict& a, int threads) { run(a, threads, false); }, py::arg("params"),
        py::arg("threads") = 0,
        "y (and last_state, ckpt, saved_delta when given) from the Params dict (selective_scan_params.h)");
  m.def("backward", [](const py::dict& a, int threads) { run(a, threads, true); }, py::arg("params"),
        py::arg("threads") = 0, "gradients and per-row/per-slice partial sums from the Params dict");
  m.def("fast_math_f32", &fast_math_f32, py::arg("fn"), py::arg("n"), py::arg("x"), py::arg("out"),
        py::call_guard<py::gil_scoped_release>());
  m.def("max_threads", &visionssm::max_threads, "OpenMP threads available to kernels");
  m.def("n1_path", &n1_path_for,
        "Whether float32 scans of these sizes run the N = 1 AVX2 path, whose forward can save "
        "softplus(δ) (batch·dim·L floats, argument `saved`) for a backward that then needs no delta",
        py::arg("N"), py::arg("has_z"), py::arg("channels_per_group"));
  m.def(
      "set_n1_path",
      [](bool on) {
#ifdef VSSM_N1_PATH
        const bool old = g_n1_path && n1::cpu_ok();
        g_n1_path = on;
#else
        (void)on;
        const bool old = false;
#endif
        return old;
      },
      "Enable/disable the AVX2 path for N = 1 float32 without z (selective_scan_n1_avx2.h); returns "
      "the previous setting (False where the path is not compiled in)",
      py::arg("on"));
  m.def(
      "set_huge_page_hint",
      [](bool on) {
        const bool old = g_huge_pages;
        g_huge_pages = on;
        return old;
      },
      "Enable/disable madvise(MADV_HUGEPAGE) on large output buffers; returns the previous setting",
      py::arg("on"));
}
