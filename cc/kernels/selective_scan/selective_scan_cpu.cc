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
// sigmoid built on it; float64 runs plain scalar loops with std::exp / std::log1p. Every entry
// point is compiled twice (target_clones: x86-64-v3 = AVX2+FMA, and the baseline x86-64, where
// the 8-wide vectors become pairs of SSE registers) and picked by the loader.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/parallel.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// FP exceptions are never inspected here; without this GCC will not if-convert (and so not
// vectorize) loops whose bodies hold a select. 8-wide vectors passed between always-inline
// helpers trigger an ABI note (-Wpsabi) in the baseline build; nothing crosses a real call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VSSM_NO_TARGET_CLONES)
#define VSSM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VSSM_CLONES
#endif
#define VSSM_INLINE inline __attribute__((always_inline))

namespace {

using i64 = int64_t;

// ---------------------------------------------------------------------------------------------
// Arithmetic policies. A pass is written once against P: P::R is a register of P::W lanes of
// P::T; loadn/storen touch only the first n (<= W) elements (tails of caller-owned buffers),
// load/store always W (scratch buffers are padded to a multiple of 8).

template <typename T_>
struct Scalar {
  using T = T_;
  using R = T_;
  static constexpr i64 W = 1;
  static VSSM_INLINE R splat(T x) { return x; }
  static VSSM_INLINE R load(const T* p) { return *p; }
  static VSSM_INLINE R loadn(const T* p, i64) { return *p; }
  static VSSM_INLINE void store(T* p, R v) { *p = v; }
  static VSSM_INLINE void storen(T* p, R v, i64) { *p = v; }
  static VSSM_INLINE R exp(R x) { return std::exp(x); }
  static VSSM_INLINE R sigmoid(R x) { return T(1) / (T(1) + std::exp(-x)); }
  static VSSM_INLINE R softplus(R x) { return x <= T(20) ? std::log1p(std::exp(x)) : x; }
  static VSSM_INLINE R softplus_sigmoid(R x, R* sig) {
    *sig = x <= T(20) ? sigmoid(x) : T(1);
    return softplus(x);
  }
  static VSSM_INLINE T hsum(R v) { return v; }
};

typedef float f8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t i8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t shuf8 __attribute__((vector_size(32)));

struct F8 {
  using T = float;
  using R = f8;
  static constexpr i64 W = 8;
  static VSSM_INLINE R splat(float x) {
    R zero = {};
    return zero + x;
  }
  static VSSM_INLINE R load(const float* p) {
    R v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static VSSM_INLINE void store(float* p, R v) { std::memcpy(p, &v, sizeof v); }
  static VSSM_INLINE R loadn(const float* p, i64 n) {
    if (n >= 8) return load(p);
    float tmp[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (i64 j = 0; j < n; ++j) tmp[j] = p[j];
    return load(tmp);
  }
  static VSSM_INLINE void storen(float* p, R v, i64 n) {
    if (n >= 8) return store(p, v);
    float tmp[8];
    store(tmp, v);
    for (i64 j = 0; j < n; ++j) p[j] = tmp[j];
  }
  // exp(x) = 2^k · exp(r), k = round(x·log2 e), r = x − k·ln2 (ln2 in two parts), |r| <= ln2/2,
  // exp(r) = 1 + r + r²·P5(r) (Cephes expf coefficients). Max error ~1 ulp for results above
  // 2^-126; smaller results flush to 0, x >= ~88.73 gives inf, NaN propagates.
  // kNonPos: the caller guarantees x <= 0 (or NaN), so only the lower clamp is needed.
  template <bool kNonPos = false>
  static VSSM_INLINE R exp(R x) {
    R xc = x < -87.5f ? splat(-87.5f) : x;
    if constexpr (!kNonPos) xc = xc > 89.0f ? splat(89.0f) : xc;
    R kf = xc * 1.44269504088896341f + 12582912.0f;  // + 1.5·2^23: round to nearest integer
    kf -= 12582912.0f;
    R r = xc - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    R p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const i8 k = __builtin_convertvector(kf, i8);
    const i8 bits = (k + 126) << 23;  // 2^(k−1): k = 128 stays finite, k = −126 gives 0
    R scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return (p + p) * scale;
  }
  // e^−|x| (shared by softplus and sigmoid).
  static VSSM_INLINE R exp_neg_abs(R x) {
    i8 b;
    std::memcpy(&b, &x, sizeof b);
    b |= static_cast<int32_t>(0x80000000u);
    R nx;
    std::memcpy(&nx, &b, sizeof nx);
    return exp<true>(nx);
  }
  // log(1 + e^x) = max(x,0) + log1p(w), w = e^−|x| ∈ (0,1]; log1p(w) = 2·atanh(s) with
  // s = w/(2+w) ∈ (0,1/3], atanh(s)/s = 1 + z·Q(z), z = s², Q a degree-3 fit on [0, 1/9]
  // (relative error < 1e-8). Identity above 20, like torch's softplus threshold.
  static VSSM_INLINE R softplus_w(R x, R w) {
    const R s = w / (2.0f + w);
    const R z = s * s;
    const R z2 = z * z;
    const R q = (0.1407889f * z + 0.13982579f) * z2 + (0.20012298f * z + 0.3333316f);
    const R s2 = s + s;
    const R lp = (s2 * z) * q + s2;
    const R res = (x > 0.0f ? x : splat(0.0f)) + lp;
    return x > 20.0f ? x : res;
  }
  // σ(x) = (x >= 0 ? 1 : w) / (1 + w), w = e^−|x|: no overflow, full relative accuracy.
  static VSSM_INLINE R sigmoid_w(R x, R w) { return (x >= 0.0f ? splat(1.0f) : w) / (1.0f + w); }
  static VSSM_INLINE R softplus(R x) { return softplus_w(x, exp_neg_abs(x)); }
  static VSSM_INLINE R sigmoid(R x) { return sigmoid_w(x, exp_neg_abs(x)); }
  static VSSM_INLINE R softplus_sigmoid(R x, R* sig) {
    const R w = exp_neg_abs(x);
    *sig = sigmoid_w(x, w);  // rounds to exactly 1 for x > 20 (w < 2.1e-9)
    return softplus_w(x, w);
  }
  static VSSM_INLINE float hsum(R v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
  }
};

template <typename T>
struct PolicyFor;
template <>
struct PolicyFor<float> {
  using type = F8;
};
template <>
struct PolicyFor<double> {
  using type = Scalar<double>;
};

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

// Per-thread scratch, grown on demand (never shrinks; zero-filled when grown).
template <typename T>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
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
#include "cc/kernels/selective_scan_n1_avx2.h"  // defines use_n1_path() and n1::run_tile()

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

// Runs units [0, n) on `threads` workers that take the next unit from a shared counter (the
// machine may be shared, so a static split would leave a descheduled worker's share waiting).
// Each unit writes only its own outputs, so the result does not depend on which worker ran it.
template <typename Body>
void run_units(i64 n, int threads, const Body& body) {
  if (threads <= 0) threads = visionssm::max_threads();
  const i64 workers = std::max<i64>(1, std::min<i64>(threads, n));
  if (workers == 1) {
    for (i64 i = 0; i < n; ++i) body(i);
    return;
  }
  std::atomic<i64> next{0};
  visionssm::parallel_for(workers, static_cast<int>(workers), [&](i64) {
    for (i64 i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      body(i);
  });
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

// Python entry points.

using Ptr = std::uintptr_t;
using Strides = std::vector<i64>;

struct Dims {
  i64 batch, dim, L, N, groups;
};

void check_strides(const char* name, const Strides& s, size_t n) {
  VSSM_CHECK(s.size() == n, name, " needs ", n, " strides, got ", s.size());
}

template <typename T>
Args<T> make_args(const Dims& dm, bool softplus, i64 chunk, Ptr u, const Strides& us, Ptr delta,
                  const Strides& ds, Ptr A, const Strides& As, Ptr B, const Strides& Bs, Ptr C,
                  const Strides& Cs, Ptr D, i64 D_s, Ptr bias, i64 bias_s, Ptr z, const Strides& zs) {
  VSSM_CHECK(dm.batch >= 0 && dm.dim >= 0 && dm.L >= 0, "sizes must be >= 0");
  VSSM_CHECK(dm.N >= 1, "N must be >= 1, got ", dm.N);
  VSSM_CHECK(dm.groups >= 1 && dm.dim % dm.groups == 0, "dim ", dm.dim, " must be a multiple of groups ",
             dm.groups);
  VSSM_CHECK(chunk >= 1, "chunk must be >= 1, got ", chunk);
  check_strides("u", us, 2);
  if (delta) check_strides("delta", ds, 2);  // null: a backward from the saved δ
  check_strides("A", As, 2);
  check_strides("B", Bs, 3);
  check_strides("C", Cs, 3);
  VSSM_CHECK((u && A && B && C) || dm.batch * dm.dim * dm.L == 0, "u, A, B, C must be non-null");
  Args<T> p;
  p.batch = dm.batch;
  p.dim = dm.dim;
  p.L = dm.L;
  p.N = dm.N;
  p.groups = dm.groups;
  p.chunk = chunk;
  p.softplus = softplus;
  p.u = reinterpret_cast<const T*>(u);
  p.u_sb = us[0];
  p.u_sd = us[1];
  p.delta = reinterpret_cast<const T*>(delta);
  if (delta) {
    p.dl_sb = ds[0];
    p.dl_sd = ds[1];
  }
  p.A = reinterpret_cast<const T*>(A);
  p.A_sd = As[0];
  p.A_sn = As[1];
  p.B = reinterpret_cast<const T*>(B);
  p.B_sb = Bs[0];
  p.B_sg = Bs[1];
  p.B_sn = Bs[2];
  p.C = reinterpret_cast<const T*>(C);
  p.C_sb = Cs[0];
  p.C_sg = Cs[1];
  p.C_sn = Cs[2];
  p.D = reinterpret_cast<const T*>(D);
  p.D_s = D_s;
  p.bias = reinterpret_cast<const T*>(bias);
  p.bias_s = bias_s;
  p.z = reinterpret_cast<const T*>(z);
  if (z) {
    check_strides("z", zs, 2);
    p.z_sb = zs[0];
    p.z_sd = zs[1];
  }
  return p;
}

// The N = 1 path's saved δ: only float32, only where that path runs.
inline void set_saved(Args<float>& p, Ptr saved, bool fwd) {
  VSSM_CHECK(!saved || use_n1_path(p), "saved δ belongs to the N = 1 float32 path, which does not run here ",
             "(n1_path() is False for these sizes, or set_n1_path() changed since the forward)");
  if (fwd)
    p.ds_out = reinterpret_cast<float*>(saved);
  else
    p.ds_in = reinterpret_cast<const float*>(saved);
}
inline void set_saved(Args<double>&, Ptr saved, bool) {
  VSSM_CHECK(!saved, "saved δ belongs to the N = 1 float32 path; float64 has none");
}

template <typename T>
void run_forward(Args<T>& p, Ptr y, Ptr last, Ptr ckpt, Ptr saved, int threads) {
  VSSM_CHECK(y || p.L == 0 || p.batch * p.dim == 0, "y must be non-null");
  VSSM_CHECK(p.delta || p.batch * p.dim * p.L == 0, "delta must be non-null");
  set_saved(p, saved, true);
  p.y = reinterpret_cast<T*>(y);
  p.last = reinterpret_cast<T*>(last);
  p.ckpt = reinterpret_cast<T*>(ckpt);
  const i64 R = rows_per_tile(p.N);
  const i64 units = p.batch * ((p.dim + R - 1) / R);
  const Args<T>& cp = p;
  advise_huge_pages(p.y, p.batch * p.dim * p.L * static_cast<i64>(sizeof(T)));
  advise_huge_pages(p.ds_out, p.batch * p.dim * p.L * static_cast<i64>(sizeof(T)));
  run_units(units, threads, [&](i64 i) { run_unit(cp, i, true); });
}

template <typename T>
void run_backward(Args<T>& p, Ptr dout, const Strides& dos, Ptr ckpt, Ptr saved, Ptr du, Ptr ddelta, Ptr dz,
                  Ptr dA_part, Ptr dB_part, Ptr dC_part, Ptr dD_part, Ptr dbias_part, i64 slices,
                  int threads) {
  check_strides("dout", dos, 2);
  set_saved(p, saved, false);
  VSSM_CHECK(p.delta || saved || p.batch * p.dim * p.L == 0, "delta (or the saved δ) must be non-null");
  VSSM_CHECK(slices >= 1 && slices <= std::max<i64>(1, p.cpg()), "slices must be in [1, dim/groups], got ",
             slices);
  VSSM_CHECK((dout && du && ddelta && dA_part && dB_part && dC_part) || p.batch * p.dim * p.L == 0,
             "gradient buffers must be non-null");
  VSSM_CHECK(!p.z || dz, "dz must be non-null when z is given");
  // No channel rows (batch or dim 0): nothing reads checkpoints, and an empty checkpoint tensor
  // has a null address.
  VSSM_CHECK(ckpt || p.nblk() <= 1 || p.batch * p.dim == 0, "checkpoints are required when L > chunk");
  p.dout = reinterpret_cast<const T*>(dout);
  p.do_sb = dos[0];
  p.do_sd = dos[1];
  p.ckpt_in = reinterpret_cast<const T*>(ckpt);
  p.du = reinterpret_cast<T*>(du);
  p.ddelta = reinterpret_cast<T*>(ddelta);
  p.dz = reinterpret_cast<T*>(dz);
  p.dA_part = reinterpret_cast<T*>(dA_part);
  p.dB_part = reinterpret_cast<T*>(dB_part);
  p.dC_part = reinterpret_cast<T*>(dC_part);
  p.dD_part = reinterpret_cast<T*>(dD_part);
  p.dbias_part = reinterpret_cast<T*>(dbias_part);
  p.slices = slices;
  const i64 units = slices * p.batch * p.groups;
  const Args<T>& cp = p;
  const i64 bytes = p.batch * p.dim * p.L * static_cast<i64>(sizeof(T));
  advise_huge_pages(p.du, bytes);
  advise_huge_pages(p.ddelta, bytes);
  advise_huge_pages(p.dz, bytes);
  run_units(units, threads, [&](i64 i) { run_unit(cp, i, false); });
}

void forward(const std::string& dtype, i64 batch, i64 dim, i64 L, i64 N, i64 groups, bool softplus,
             i64 chunk, Ptr u, const Strides& us, Ptr delta, const Strides& ds, Ptr A,
             const Strides& As, Ptr B, const Strides& Bs, Ptr C, const Strides& Cs, Ptr D, i64 D_s,
             Ptr bias, i64 bias_s, Ptr z, const Strides& zs, Ptr y, Ptr last, Ptr ckpt, Ptr saved,
             int threads) {
  const Dims dm{batch, dim, L, N, groups};
  if (dtype == "float32") {
    auto p = make_args<float>(dm, softplus, chunk, u, us, delta, ds, A, As, B, Bs, C, Cs, D, D_s, bias,
                              bias_s, z, zs);
    return run_forward(p, y, last, ckpt, saved, threads);
  }
  if (dtype == "float64") {
    auto p = make_args<double>(dm, softplus, chunk, u, us, delta, ds, A, As, B, Bs, C, Cs, D, D_s, bias,
                               bias_s, z, zs);
    return run_forward(p, y, last, ckpt, saved, threads);
  }
  visionssm::fail("selective_scan forward: dtype must be float32 or float64, got ", dtype);
}

void backward(const std::string& dtype, i64 batch, i64 dim, i64 L, i64 N, i64 groups, bool softplus,
              i64 chunk, Ptr u, const Strides& us, Ptr delta, const Strides& ds, Ptr A,
              const Strides& As, Ptr B, const Strides& Bs, Ptr C, const Strides& Cs, Ptr D, i64 D_s,
              Ptr bias, i64 bias_s, Ptr z, const Strides& zs, Ptr dout, const Strides& dos, Ptr ckpt,
              Ptr saved, Ptr du, Ptr ddelta, Ptr dz, Ptr dA_part, Ptr dB_part, Ptr dC_part, Ptr dD_part,
              Ptr dbias_part, i64 slices, int threads) {
  const Dims dm{batch, dim, L, N, groups};
  if (dtype == "float32") {
    auto p = make_args<float>(dm, softplus, chunk, u, us, delta, ds, A, As, B, Bs, C, Cs, D, D_s, bias,
                              bias_s, z, zs);
    return run_backward(p, dout, dos, ckpt, saved, du, ddelta, dz, dA_part, dB_part, dC_part, dD_part,
                        dbias_part, slices, threads);
  }
  if (dtype == "float64") {
    auto p = make_args<double>(dm, softplus, chunk, u, us, delta, ds, A, As, B, Bs, C, Cs, D, D_s, bias,
                               bias_s, z, zs);
    return run_backward(p, dout, dos, ckpt, saved, du, ddelta, dz, dA_part, dB_part, dC_part, dD_part,
                        dbias_part, slices, threads);
  }
  visionssm::fail("selective_scan backward: dtype must be float32 or float64, got ", dtype);
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
  m.def("forward", &forward, py::arg("dtype"), py::arg("batch"), py::arg("dim"), py::arg("L"), py::arg("N"),
        py::arg("groups"), py::arg("softplus"), py::arg("chunk"), py::arg("u"), py::arg("u_strides"),
        py::arg("delta"), py::arg("delta_strides"), py::arg("A"), py::arg("A_strides"), py::arg("B"),
        py::arg("B_strides"), py::arg("C"), py::arg("C_strides"), py::arg("D"), py::arg("D_stride"),
        py::arg("bias"), py::arg("bias_stride"), py::arg("z"), py::arg("z_strides"), py::arg("y"),
        py::arg("last_state"), py::arg("ckpt"), py::arg("saved"), py::arg("threads") = 0,
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &backward, py::arg("dtype"), py::arg("batch"), py::arg("dim"), py::arg("L"),
        py::arg("N"), py::arg("groups"), py::arg("softplus"), py::arg("chunk"), py::arg("u"),
        py::arg("u_strides"), py::arg("delta"), py::arg("delta_strides"), py::arg("A"),
        py::arg("A_strides"), py::arg("B"), py::arg("B_strides"), py::arg("C"), py::arg("C_strides"),
        py::arg("D"), py::arg("D_stride"), py::arg("bias"), py::arg("bias_stride"), py::arg("z"),
        py::arg("z_strides"), py::arg("dout"), py::arg("dout_strides"), py::arg("ckpt"), py::arg("saved"),
        py::arg("du"),
        py::arg("ddelta"), py::arg("dz"), py::arg("dA_part"), py::arg("dB_part"), py::arg("dC_part"),
        py::arg("dD_part"), py::arg("dbias_part"), py::arg("slices"), py::arg("threads") = 0,
        py::call_guard<py::gil_scoped_release>());
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
