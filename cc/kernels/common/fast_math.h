// Elementwise math of the CPU kernels: exp, softplus and sigmoid, scalar (any float type, std::
// functions) and 8-wide float32 (own exp: Cephes-style range reduction + polynomial, ~1 ulp;
// softplus/sigmoid built on it), wrapped as "arithmetic policies" so a loop is written once for
// both. softplus uses torch's threshold: the identity above 20.
//
// Compile the includer with no-trapping-math (selective_scan_cpu.cc sets it before including
// this): FP exceptions are never inspected, and without it GCC will not if-convert (and so not
// vectorize) the selects below.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cc/kernels/common/clones.h"
#include "cc/kernels/common/simd.h"

namespace visionssm {

// Scalar forms; the NaN of an input propagates.
template <typename T>
VSSM_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
template <typename T>
VSSM_INLINE T softplus(T x) {
  return x <= T(20) ? std::log1p(std::exp(x)) : x;
}
// d softplus / dx with the same threshold.
template <typename T>
VSSM_INLINE T softplus_grad(T x) {
  return x > T(20) ? T(1) : T(1) / (T(1) + std::exp(-x));
}

// Arithmetic policies. A pass is written once against P: P::R is a register of P::W lanes of
// P::T; loadn/storen touch only the first n (<= W) elements (tails of caller-owned buffers),
// load/store always W (scratch buffers are padded to a multiple of 8).

template <typename T_>
struct Scalar {
  using T = T_;
  using R = T_;
  static constexpr int64_t W = 1;
  static VSSM_INLINE R splat(T x) { return x; }
  static VSSM_INLINE R load(const T* p) { return *p; }
  static VSSM_INLINE R loadn(const T* p, int64_t) { return *p; }
  static VSSM_INLINE void store(T* p, R v) { *p = v; }
  static VSSM_INLINE void storen(T* p, R v, int64_t) { *p = v; }
  static VSSM_INLINE R exp(R x) { return std::exp(x); }
  static VSSM_INLINE R sigmoid(R x) { return visionssm::sigmoid(x); }
  static VSSM_INLINE R softplus(R x) { return visionssm::softplus(x); }
  static VSSM_INLINE R softplus_sigmoid(R x, R* sig) {
    *sig = x <= T(20) ? sigmoid(x) : T(1);
    return softplus(x);
  }
  static VSSM_INLINE T hsum(R v) { return v; }
};

// 8 floats / int32s at any float address (the policies keep them in float buffers).
using f8 = simd::vec_unaligned<float, 8>;
using i8 = simd::vec_unaligned<int32_t, 8>;
using shuf8 = simd::vec<int32_t, 8>;  // __builtin_shuffle masks

struct F8 {
  using T = float;
  using R = f8;
  static constexpr int64_t W = 8;
  static VSSM_INLINE R splat(float x) {
    R zero = {};
    return zero + x;
  }
  static VSSM_INLINE R load(const float* p) { return simd::load<R>(p); }
  static VSSM_INLINE void store(float* p, R v) { simd::store(p, v); }
  // Tails lane by lane with constant lane numbers, in registers: a copy loop through a stack array
  // became a memcpy call (spilling every live vector register around it) followed by a vector load
  // of the bytes just stored (a store-forwarding stall); at L = 37 that doubled the backward's time.
  static VSSM_INLINE R loadn(const float* p, int64_t n) {
    if (n >= 8) return load(p);
    R v = {};
    switch (n) {
      case 7: v[6] = p[6]; [[fallthrough]];
      case 6: v[5] = p[5]; [[fallthrough]];
      case 5: v[4] = p[4]; [[fallthrough]];
      case 4: v[3] = p[3]; [[fallthrough]];
      case 3: v[2] = p[2]; [[fallthrough]];
      case 2: v[1] = p[1]; [[fallthrough]];
      case 1: v[0] = p[0]; [[fallthrough]];
      default: break;
    }
    return v;
  }
  static VSSM_INLINE void storen(float* p, R v, int64_t n) {
    if (n >= 8) return store(p, v);
    switch (n) {
      case 7: p[6] = v[6]; [[fallthrough]];
      case 6: p[5] = v[5]; [[fallthrough]];
      case 5: p[4] = v[4]; [[fallthrough]];
      case 4: p[3] = v[3]; [[fallthrough]];
      case 3: p[2] = v[2]; [[fallthrough]];
      case 2: p[1] = v[1]; [[fallthrough]];
      case 1: p[0] = v[0]; [[fallthrough]];
      default: break;
    }
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


}  // namespace visionssm
