// Mamba-2 SSD (state-space duality) on the CPU: causal chunked scan and the VSSD non-causal form,
// forward and backward, float32 and float64. Takes the Params of ssd_params.h as a dict (shared
// with the CUDA module): inputs are raw addresses (torch's data_ptr()) with element strides; outputs
// are contiguous buffers allocated by Python. Never links libtorch.
//
// Causal algorithm (per batch x head, blocks of q <= min(chunk_size, kMaxBlock) tokens):
//   within a block, a_0 = dt'_0 A (first token), c_i = sum_{0<k<=i} dt'_k A (so c_0 = 0) and
//   r = (max c + min c) / 2. The decay exp(c_i - c_j) of the intra-block "attention" factorises
//   into row/column scalings:
//     Ct_i = exp(c_i - r) C_i,  Bt_j = exp(r - c_j) B_j,  X'_j = dt'_j x_j,  S' = exp(a_0 + r) S_in
//     Y    = Ct S'^T + tril(Ct Bt^T) X'                    (+ D x, * silu(z))
//     S_out = exp(c_last - r) (S' + X'^T Bt)
//   so a block is four small GEMMs and only O(q) exponentials. The block is cut early whenever the
//   range max c - min c would exceed kRange (float: 64, double: 600), which keeps every scaled
//   operand far from overflow/underflow; the result does not depend on where blocks are cut.
//   The backward recomputes block states, then runs the blocks in reverse with the adjoint state;
//   the decay gradient is assembled in a cancellation-free form (see causal_bwd_head).
// Non-causal (VSSD `ssd_positve_dA`): KV = sum_j (-dt'_j A) B_j^T x_j, y_i = C_i KV (+ D x, gating).
//
// Parallel over tasks (batch x head; the backward can group the heads sharing B/C so their dB/dC
// accumulate without races); each task runs sequentially, so results are deterministic.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/clones.h"  // hot functions compiled for x86-64-v3 and the baseline
#include "cc/kernels/common/fast_math.h"
#include "cc/kernels/common/parallel.h"
#include "cc/kernels/common/simd.h"
#include "cc/kernels/ssd/ssd_params.h"
#include "cc/kernels/ssd/ssd_params_dict.h"

namespace {

constexpr int kMaxBlock = 64;  // causal block length cap (chunk_size caps it further)
constexpr int kNcBlock = 256;  // non-causal token block

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using type = visionssm::simd::vec<float, 8>;
  static constexpr int W = 8;
  static constexpr float kRange = 64.0f;
  static constexpr int kBigExp = 20;  // see rescale_block
};
template <>
struct Vec<double> {
  using type = visionssm::simd::vec<double, 4>;
  static constexpr int W = 4;
  static constexpr double kRange = 600.0;
  static constexpr int kBigExp = 300;
};

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------
// Small GEMMs on row-major scratch buffers: C[M x Nc] = alpha * A[M x K] B[K x Nc] (+ beta * C).
// Buffers have leading dimensions that are multiples of the vector width and room for the
// rounded-up column count (columns past Nc are computed on whatever is there and never read).
// ---------------------------------------------------------------------------------------------
enum ATri { kFull = 0, kLowerA = 1, kUpperA = 2 };  // A[i,k] == 0 for k > i (lower) / k < i (upper)

// AT: A is stored transposed (element (i, k) at A[k * lda + i]), i.e. C = alpha * A^T B.
template <typename T, int MR, int NV, bool ACC, bool AT>
VSSM_INLINE void micro(int k0, int k1, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                       int64_t ldc, T alpha, T beta) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int k = k0; k < k1; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], B + k * ldb + v * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const T a = AT ? A[k * lda + r] : A[r * lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += b[v] * a;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      T* c = C + r * ldc + v * W;
      V out = acc[r][v] * alpha;
      if (ACC) {
        V old;
        std::memcpy(&old, c, sizeof(V));
        out += old * beta;
      }
      std::memcpy(c, &out, sizeof(V));
    }
}

template <typename T, int MR, bool ACC, bool AT>
VSSM_INLINE void micro_nv(int nv, int k0, int k1, const T* A, int64_t lda, const T* B, int64_t ldb,
                          T* C, int64_t ldc, T alpha, T beta) {
  if (nv == 2)
    micro<T, MR, 2, ACC, AT>(k0, k1, A, lda, B, ldb, C, ldc, alpha, beta);
  else
    micro<T, MR, 1, ACC, AT>(k0, k1, A, lda, B, ldb, C, ldc, alpha, beta);
}

// out_lower: only the column tiles that meet the lower triangle (j <= i) are computed.
template <typename T, bool ACC, bool AT>
VSSM_INLINE void gemm_body(int M, int Nc, int K, const T* A, int64_t lda, const T* B, int64_t ldb,
                           T* C, int64_t ldc, T alpha, T beta, int a_tri, bool out_lower) {
  constexpr int W = Vec<T>::W;
  constexpr int MR = 6;
  for (int i0 = 0; i0 < M; i0 += MR) {
    const int rows = std::min(MR, M - i0);
    const int k0 = a_tri == kUpperA ? std::min(i0, K) : 0;
    const int k1 = a_tri == kLowerA ? std::min(K, i0 + rows) : K;
    const int jmax = out_lower ? std::min(Nc, i0 + rows) : Nc;
    const T* Ai = AT ? A + i0 : A + i0 * lda;
    T* Ci = C + i0 * ldc;
    for (int j0 = 0; j0 < jmax; j0 += 2 * W) {
      const int nv = jmax - j0 > W ? 2 : 1;
      switch (rows) {
        case 6: micro_nv<T, 6, ACC, AT>(nv, k0, k1, Ai, lda, B + j0, ldb, Ci + j0, ldc, alpha, beta); break;
        case 5: micro_nv<T, 5, ACC, AT>(nv, k0, k1, Ai, lda, B + j0, ldb, Ci + j0, ldc, alpha, beta); break;
        case 4: micro_nv<T, 4, ACC, AT>(nv, k0, k1, Ai, lda, B + j0, ldb, Ci + j0, ldc, alpha, beta); break;
        case 3: micro_nv<T, 3, ACC, AT>(nv, k0, k1, Ai, lda, B + j0, ldb, Ci + j0, ldc, alpha, beta); break;
        case 2: micro_nv<T, 2, ACC, AT>(nv, k0, k1, Ai, lda, B + j0, ldb, Ci + j0, ldc, alpha, beta); break;
        default: micro_nv<T, 1, ACC, AT>(nv, k0, k1, Ai, lda, B + j0, ldb, Ci + j0, ldc, alpha, beta); break;
      }
    }
  }
}

// One out-of-line, per-ISA copy per dtype (inlining it at every call site made builds slow).
#define VSSM_DEFINE_GEMM(T)                                                                        \
  VSSM_CLONES __attribute__((noinline)) void gemm_any(bool acc, bool at, int M, int Nc, int K,     \
                                                      const T* A, int64_t lda, const T* B,        \
                                                      int64_t ldb, T* C, int64_t ldc, T alpha,    \
                                                      T beta, int a_tri, bool out_lower) {        \
    if (acc && at)                                                                                \
      gemm_body<T, true, true>(M, Nc, K, A, lda, B, ldb, C, ldc, alpha, beta, a_tri, out_lower);  \
    else if (acc)                                                                                 \
      gemm_body<T, true, false>(M, Nc, K, A, lda, B, ldb, C, ldc, alpha, beta, a_tri, out_lower); \
    else if (at)                                                                                  \
      gemm_body<T, false, true>(M, Nc, K, A, lda, B, ldb, C, ldc, alpha, beta, a_tri, out_lower); \
    else                                                                                          \
      gemm_body<T, false, false>(M, Nc, K, A, lda, B, ldb, C, ldc, alpha, beta, a_tri,            \
                                 out_lower);                                                      \
  }
VSSM_DEFINE_GEMM(float)
VSSM_DEFINE_GEMM(double)

// C = alpha * op(A) B (+ beta * C if ACC); op(A) = A (M x K, row-major, lda) or, for gemm_t,
// A^T with A stored K x M (lda). a_tri describes op(A).
template <typename T, bool ACC>
inline void gemm(int M, int Nc, int K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, T alpha = T(1), T beta = T(1), int a_tri = kFull,
                 bool out_lower = false) {
  if (M <= 0) return;
  gemm_any(ACC, false, M, Nc, K, A, lda, B, ldb, C, ldc, alpha, beta, a_tri, out_lower);
}
template <typename T, bool ACC>
inline void gemm_t(int M, int Nc, int K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                   int64_t ldc, T alpha = T(1), T beta = T(1), int a_tri = kFull) {
  if (M <= 0) return;
  gemm_any(ACC, true, M, Nc, K, A, lda, B, ldb, C, ldc, alpha, beta, a_tri, false);
}

// dst[j, i] = scale * src[i, j] for i < rows, j < cols.
template <typename T>
VSSM_INLINE void transpose(int rows, int cols, const T* src, int64_t lds, T* dst, int64_t ldd,
                           T scale = T(1)) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) dst[j * ldd + i] = scale * src[i * lds + j];
}

template <typename T>
VSSM_INLINE void zero_upper(int q, T* M, int64_t ld) {  // M[i, j] = 0 for i < j < q
  for (int i = 0; i < q; ++i)
    for (int j = i + 1; j < q; ++j) M[i * ld + j] = T(0);
}

// ---------------------------------------------------------------------------------------------
// Problem description shared by all entry points.
// ---------------------------------------------------------------------------------------------
struct View {  // an input tensor: address and element strides (unused trailing strides are 0)
  std::uintptr_t ptr = 0;
  int64_t s[4] = {0, 0, 0, 0};
};

struct Problem {
  int64_t batch = 0, L = 0, H = 0, P = 0, G = 0, N = 0;
  int block = kMaxBlock;
  bool softplus = false;
  View x, dt, A, B, C, D, z, dt_bias, init;
};

using visionssm::sigmoid;  // scalar helpers: common/fast_math.h
using visionssm::softplus_grad;

// In place exp on 8 floats (Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial;
// ~1-2 ulp on [-87, 88], inputs clamped there), so that sigmoid/SiLU over headdim rows vectorise.
// n = round(x / ln2) via the 1.5 * 2^23 trick (exact for |n| < 2^22).
// Not common/fast_math.h's F8::exp: the same polynomial, but other ends of the range (inputs clamped
// to [-87.34, 88.38] here; F8::exp flushes results below 2^-126 to 0 and clamps at 89), so sharing
// it would change SSD's results there.
VSSM_INLINE void exp_v8(Vec<float>::type& x) {
  using VI = visionssm::simd::vec<int32_t, 8>;
  using V = Vec<float>::type;
  const V hi = V{} + 88.3762626647949f, lo = V{} - 87.3365478515625f;
  x = x < hi ? x : hi;
  x = x > lo ? x : lo;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23
  V t = x * 1.44269504088896341f + magic;
  VI n;
  std::memcpy(&n, &t, sizeof(V));
  n -= 0x4B400000;  // bits of 1.5 * 2^23
  const V fn = t - magic;
  x = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  const V z = x * x;
  V y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x +
          4.1665795894e-2f) * x + 1.6666665459e-1f) * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const VI bits = (n + 127) << 23;
  V pow2n;
  std::memcpy(&pow2n, &bits, sizeof(V));
  x = y * pow2n;
}

// s[p] = sigmoid(z[p]) for p < n.
VSSM_INLINE void sigmoid_row(int64_t n, const float* z, float* s) {
  using V = Vec<float>::type;
  int64_t p = 0;
  for (; p + 8 <= n; p += 8) {
    V v;
    std::memcpy(&v, z + p, sizeof(V));
    v = -v;
    exp_v8(v);
    const V r = 1.0f / (1.0f + v);
    std::memcpy(s + p, &r, sizeof(V));
  }
  for (; p < n; ++p) s[p] = sigmoid(z[p]);
}
VSSM_INLINE void sigmoid_row(int64_t n, const double* z, double* s) {
  for (int64_t p = 0; p < n; ++p) s[p] = sigmoid(z[p]);
}

// One output row: y += D x; pregate <- y (if kept); y *= silu(z) (if z); out <- y.
// y is a scratch row; sg is scratch for n values.
template <typename T>
VSSM_INLINE void epilogue_row(int64_t n, T* __restrict y, const T* __restrict x, const T* Dv,
                              bool has_D, const T* __restrict z, T* __restrict sg,
                              T* __restrict pregate, T* __restrict out) {
  if (has_D)
    for (int64_t p = 0; p < n; ++p) y[p] += Dv[p] * x[p];
  if (pregate) std::memcpy(pregate, y, n * sizeof(T));
  if (z) {
    sigmoid_row(n, z, sg);
    for (int64_t p = 0; p < n; ++p) y[p] *= z[p] * sg[p];
  }
  std::memcpy(out, y, n * sizeof(T));
}

// Software prefetch of rows [t_lo, t_hi) of a (token, elem) slice with contiguous elements. The
// per-head rows are short (headdim/dstate elements) and far apart, so hardware prefetchers, which
// stop at page boundaries, miss most of them.
template <typename T>
VSSM_INLINE void prefetch_rows(const T* base, int64_t st, int64_t t_lo, int64_t t_hi, int64_t n,
                               int64_t se, bool write = false) {
  if (!base || se != 1 || t_lo >= t_hi) return;
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t t = t_lo; t < t_hi; ++t) {
    const char* r = reinterpret_cast<const char*>(base + t * st);
    for (int64_t off = 0; off < bytes; off += 64) {
      if (write)
        __builtin_prefetch(r + off, 1, 3);
      else
        __builtin_prefetch(r + off, 0, 3);
    }
  }
}

// Per-head read-only accessors (pointers already offset to batch b, head h / group g).
template <typename T>
struct HeadIn {
  const T *x, *dt, *B, *C, *z;
  int64_t sxt, sdt, sBt, sCt, szt;  // token strides (the last dims are contiguous)
  T A, bias;
  bool has_bias, softplus, has_D;
  std::vector<T> Dv;  // D per headdim column (0 when D is absent)

  HeadIn(const Problem& pb, int64_t b, int64_t h) : Dv(pb.P, T(0)) {
    const int64_t g = h / (pb.H / pb.G);
    x = reinterpret_cast<const T*>(pb.x.ptr) + b * pb.x.s[0] + h * pb.x.s[2];
    sxt = pb.x.s[1];
    dt = reinterpret_cast<const T*>(pb.dt.ptr) + b * pb.dt.s[0] + h * pb.dt.s[2];
    sdt = pb.dt.s[1];
    B = reinterpret_cast<const T*>(pb.B.ptr) + b * pb.B.s[0] + g * pb.B.s[2];
    sBt = pb.B.s[1];
    C = reinterpret_cast<const T*>(pb.C.ptr) + b * pb.C.s[0] + g * pb.C.s[2];
    sCt = pb.C.s[1];
    z = pb.z.ptr ? reinterpret_cast<const T*>(pb.z.ptr) + b * pb.z.s[0] + h * pb.z.s[2] : nullptr;
    szt = pb.z.s[1];
    A = reinterpret_cast<const T*>(pb.A.ptr)[h * pb.A.s[0]];
    has_bias = pb.dt_bias.ptr != 0;
    bias = has_bias ? reinterpret_cast<const T*>(pb.dt_bias.ptr)[h * pb.dt_bias.s[0]] : T(0);
    softplus = pb.softplus;
    has_D = pb.D.ptr != 0;
    if (has_D) {
      const T* D = reinterpret_cast<const T*>(pb.D.ptr) + h * pb.D.s[0];
      for (int64_t p = 0; p < pb.P; ++p) Dv[p] = D[p * pb.D.s[1]];
    }
  }
  VSSM_INLINE T raw(int64_t t) const { return dt[t * sdt] + bias; }
  // Prefetches the x, B, C (and z) rows of tokens [lo, hi), clamped to [0, L).
  VSSM_INLINE void prefetch(int64_t lo, int64_t hi, int64_t L, int64_t P, int64_t N) const {
    lo = std::max<int64_t>(lo, 0);
    hi = std::min<int64_t>(hi, L);
    prefetch_rows(x, sxt, lo, hi, P, 1);
    prefetch_rows(B, sBt, lo, hi, N, 1);
    prefetch_rows(C, sCt, lo, hi, N, 1);
    prefetch_rows(z, szt, lo, hi, P, 1);
  }
  VSSM_INLINE T delta(int64_t t) const {
    const T v = raw(t);
    return softplus ? visionssm::softplus(v) : v;
  }
};

// Picks the next causal block starting at t0 < L and returns its length q >= 1. Fills dtv (dt')
// and cv (c_i = sum_{0<k<=i} dt'_k A, c_0 = 0); a0 receives the first token's dt'_0 A, r the
// centring offset. The first step stays out of the sums on purpose: it may be huge (dt' = 1e30
// gives a0 = -1e30, and -1e30 + 0.5 == -1e30 would erase every decay inside the block). A later
// step that large leaves kRange, so it starts the next block instead.
template <typename T>
VSSM_INLINE int next_block(const HeadIn<T>& in, int64_t t0, int64_t L, int qmax, T* dtv, T* cv,
                           T& a0, T& r) {
  T cmin = 0, cmax = 0;
  dtv[0] = in.delta(t0);
  cv[0] = 0;
  a0 = dtv[0] * in.A;
  int q = 1;
  while (q < qmax && t0 + q < L) {
    const T d = in.delta(t0 + q);
    const T cn = cv[q - 1] + d * in.A;
    const T nmin = std::min(cmin, cn), nmax = std::max(cmax, cn);
    if (nmax - nmin > Vec<T>::kRange) break;
    dtv[q] = d;
    cv[q] = cn;
    cmin = nmin;
    cmax = nmax;
    ++q;
  }
  r = (cmin + cmax) / 2;
  return q;
}

// max |a[i, j]| over rows x cols (leading dimension ld).
template <typename T>
VSSM_INLINE T max_abs(int64_t rows, int64_t cols, const T* a, int64_t ld) {
  T m = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m = std::max(m, std::abs(a[i * ld + j]));
  return m;
}

template <typename T>
VSSM_INLINE void scale_rows(int64_t rows, int64_t cols, T* a, int64_t ld, T f) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) a[i * ld + j] *= f;
}

// Huge values (dt' = 1e30 makes X' = dt' x that large): the block factors e^{c-r}, e^{r-c} reach
// e^{kRange/2}, so a GEMM over X' or the carried state could overflow although every result is
// representable. A block whose X' or state exceeds 2^kBigExp therefore runs on both scaled by
// 2^-k (exact), with its X'/state-linear results scaled back by 2^k; k = 0 in ordinary blocks.
// The state S (rows x cols) is kept as S_true * 2^-ks; it is measured only while scaled (ks > 0)
// or when check_state is set (an initial state). Rescales X' (q x P) and S, returns k = ks.
template <typename T>
VSSM_INLINE int rescale_block(int q, int64_t P, T* Xp, int64_t ldP, int64_t rows, int64_t cols, T* S,
                              int64_t lds, bool check_state, int& ks) {
  const auto exp_of = [](T m) {  // 0, or the k with m * 2^-k <= 1 when m > 2^kBigExp
    return m > std::ldexp(T(1), Vec<T>::kBigExp) && std::isfinite(m) ? std::ilogb(m) + 1 : 0;
  };
  int k = exp_of(max_abs<T>(q, P, Xp, ldP));
  if (ks > 0 || check_state) k = std::max(k, exp_of(std::ldexp(max_abs<T>(rows, cols, S, lds), ks)));
  if (k != ks) scale_rows<T>(rows, cols, S, lds, std::ldexp(T(1), ks - k));
  if (k > 0) scale_rows<T>(q, P, Xp, ldP, std::ldexp(T(1), -k));
  ks = k;
  return k;
}

// Scratch sizes for one head (leading dims rounded to the vector width).
template <typename T>
struct Dims {
  int64_t P, N, Q, ldP, ldN, ldQ;
  Dims(int64_t P_, int64_t N_, int64_t Q_) : P(P_), N(N_), Q(Q_) {
    constexpr int W = Vec<T>::W;
    ldP = round_up(P, W);
    ldN = round_up(N, W);
    ldQ = round_up(Q, W);
  }
};

template <typename T>
VSSM_INLINE void gather_block(const HeadIn<T>& in, const Dims<T>& d, int64_t t0, int q,
                              const T* dtv, const T* cv, T r, T* e1, T* e2, T* Ct, T* Bt, T* BtT,
                              T* Xp) {
  for (int i = 0; i < q; ++i) {
    const int64_t t = t0 + i;
    e1[i] = std::exp(cv[i] - r);
    e2[i] = std::exp(r - cv[i]);
    const T* Cr = in.C + t * in.sCt;
    const T* Br = in.B + t * in.sBt;
    const T* xr = in.x + t * in.sxt;
    if (Ct) {
      T* ct = Ct + i * d.ldN;
      for (int64_t n = 0; n < d.N; ++n) ct[n] = e1[i] * Cr[n];
    }
    if (Bt) {
      T* bt = Bt + i * d.ldN;
      for (int64_t n = 0; n < d.N; ++n) bt[n] = e2[i] * Br[n];
    }
    if (BtT)
      for (int64_t n = 0; n < d.N; ++n) BtT[n * d.ldQ + i] = e2[i] * Br[n];
    T* xp = Xp + i * d.ldP;
    for (int64_t p = 0; p < d.P; ++p) xp[p] = dtv[i] * xr[p];
  }
}

// ---------------------------------------------------------------------------------------------
// Causal forward, one (batch, head).
// ---------------------------------------------------------------------------------------------
template <typename T>
VSSM_INLINE void causal_fwd_head(const Problem& pb, int64_t b, int64_t h, T* out, T* pregate,
                                 T* final_states) {
  const HeadIn<T> in(pb, b, h);
  const int qmax = std::max(1, std::min(pb.block, kMaxBlock));
  const Dims<T> d(pb.P, pb.N, qmax);
  std::vector<T> sg_buf(pb.P);  // sigmoid(z) of one row
  T* sg = sg_buf.data();
  std::vector<T> buf(d.ldN * d.ldP + qmax * d.ldN + d.N * d.ldQ + 2 * qmax * d.ldP +
                         qmax * d.ldQ + 4 * qmax,
                     T(0));
  T* ST = buf.data();            // state transposed, N x P
  T* Ct = ST + d.N * d.ldP;      // q x N
  T* BtT = Ct + qmax * d.ldN;    // N x q
  T* Xp = BtT + d.N * d.ldQ;     // q x P
  T* Y = Xp + qmax * d.ldP;      // q x P
  T* Mq = Y + qmax * d.ldP;      // q x q
  T* dtv = Mq + qmax * d.ldQ;
  T* cv = dtv + qmax;
  T* e1 = cv + qmax;
  T* e2 = e1 + qmax;

  if (pb.init.ptr) {
    const T* S0 = reinterpret_cast<const T*>(pb.init.ptr) + b * pb.init.s[0] + h * pb.init.s[1];
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) ST[n * d.ldP + p] = S0[p * pb.init.s[2] + n * pb.init.s[3]];
  }
  const int64_t so_t = pb.H * pb.P;  // output row stride (contiguous (b, L, H, P))
  T* ob = out + (b * pb.L * pb.H + h) * pb.P;
  T* pg = pregate ? pregate + (b * pb.L * pb.H + h) * pb.P : nullptr;

  int ks = 0;  // ST holds the state * 2^-ks (rescale_block)
  for (int64_t t0 = 0; t0 < pb.L;) {
    T a0, r;
    const int q = next_block(in, t0, pb.L, qmax, dtv, cv, a0, r);
    in.prefetch(t0 + q, t0 + q + qmax, pb.L, d.P, d.N);
    {
      const int64_t hi = std::min<int64_t>(t0 + q + qmax, pb.L);
      prefetch_rows(ob, so_t, t0 + q, hi, d.P, 1, true);
      prefetch_rows(pg, so_t, t0 + q, hi, d.P, 1, true);
    }
    gather_block(in, d, t0, q, dtv, cv, r, e1, e2, Ct, static_cast<T*>(nullptr), BtT, Xp);
    const int k = rescale_block(q, d.P, Xp, d.ldP, d.N, d.P, ST, d.ldP, t0 == 0 && pb.init.ptr, ks);
    const T es = std::exp(a0 + r);
    const T E = std::exp(cv[q - 1] - r);
    // Y = exp(a0 + r) * Ct ST  (off-diagonal: carried state)
    gemm<T, false>(q, d.P, d.N, Ct, d.ldN, ST, d.ldP, Y, d.ldP, es);
    // Mq = tril(Ct Bt^T); Y += Mq X'
    gemm<T, false>(q, q, d.N, Ct, d.ldN, BtT, d.ldQ, Mq, d.ldQ, T(1), T(0), kFull, true);
    zero_upper(q, Mq, d.ldQ);
    gemm<T, true>(q, d.P, q, Mq, d.ldQ, Xp, d.ldP, Y, d.ldP, T(1), T(1), kLowerA);
    // ST = exp(a0 + c_last) ST + E * Bt^T X'
    gemm<T, true>(d.N, d.P, q, BtT, d.ldQ, Xp, d.ldP, ST, d.ldP, E, std::exp(a0 + cv[q - 1]));
    if (k > 0) scale_rows<T>(q, d.P, Y, d.ldP, std::ldexp(T(1), k));
    // epilogue: + D x, gating, store
    for (int i = 0; i < q; ++i) {
      const int64_t t = t0 + i;
      epilogue_row(d.P, Y + i * d.ldP, in.x + t * in.sxt, in.Dv.data(), in.has_D,
                   in.z ? in.z + t * in.szt : nullptr, sg, pg ? pg + t * so_t : nullptr,
                   ob + t * so_t);
    }
    t0 += q;
  }
  if (final_states) {
    T* F = final_states + (b * pb.H + h) * pb.P * pb.N;
    const T f = std::ldexp(T(1), ks);
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) F[p * d.N + n] = ST[n * d.ldP + p] * f;
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs of the backward (contiguous; dB/dC are (batch, L, slots, N) accumulators).
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Grads {
  const T* dout = nullptr;     // (b, L, H, P)
  const T* dfinal = nullptr;   // (b, H, P, N) or null
  const T* pregate = nullptr;  // (b, L, H, P), required when z is given
  T* dx = nullptr;             // (b, L, H, P)
  T* ddt = nullptr;            // (b, L, H)      gradient w.r.t. the raw dt input
  T* dB = nullptr;             // (b, L, slots, N), accumulated (+=)
  T* dC = nullptr;             // (b, L, slots, N), accumulated (+=)
  T* dz = nullptr;             // (b, L, H, P) or null
  T* dA = nullptr;             // (b, H) partial sums
  T* dD = nullptr;             // (b, H, P) partial sums
  T* dbias = nullptr;          // (b, H) partial sums
  T* dinit = nullptr;          // (b, H, P, N) or null
  const T* saved_kv = nullptr; // non-causal: the forward's final states (b, H, P, N), or null
  int64_t slots = 0;
};

// dY = dout * silu(z); dz = dout * y_pre * silu'(z). Writes dY (q x ldP) for tokens t0..t0+q-1.
// sg: scratch for P values.
template <typename T>
VSSM_INLINE void load_dy(const Problem& pb, const HeadIn<T>& in, const Grads<T>& gr, int64_t b,
                         int64_t h, int64_t t0, int q, int64_t ldP, T* dY, T* sg,
                         bool write_dz = true) {
  const int64_t so_t = pb.H * pb.P;
  const int64_t base = (b * pb.L * pb.H + h) * pb.P;
  const int64_t P = pb.P;
  for (int i = 0; i < q; ++i) {
    const int64_t t = t0 + i;
    const T* __restrict go = gr.dout + base + t * so_t;
    T* __restrict dy = dY + i * ldP;
    if (in.z) {
      const T* __restrict zr = in.z + t * in.szt;
      sigmoid_row(P, zr, sg);
      for (int64_t p = 0; p < P; ++p) dy[p] = go[p] * zr[p] * sg[p];
      if (gr.dz && write_dz) {
        const T* __restrict yp = gr.pregate + base + t * so_t;
        T* __restrict dz = gr.dz + base + t * so_t;
        for (int64_t p = 0; p < P; ++p)
          dz[p] = go[p] * yp[p] * sg[p] * (T(1) + zr[p] * (T(1) - sg[p]));
      }
    } else {
      std::memcpy(dy, go, P * sizeof(T));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Causal backward, one (batch, head); dB/dC accumulate into `slot`.
//
// With s = a_0 + r, S' = e^s S_in, U = S' + X'^T Bt, S_out = E U, M = tril(Ct Bt^T), Y = Ct S'^T + M X':
//   dU = E dS_out, dM = tril(dY X'^T),
//   dCt = dY S' + dM Bt, dBt = X' dU^T + dM^T Ct, dX' = M^T dY + Bt dU, dS_in = e^s (dU + Ct^T dY).
// The log-decays a_0 + c_i enter through Ct (e^{c_i}), Bt (e^{-c_j}) and E (e^{c_last}) relative
// to s, a gauge (the result does not depend on it) that is held fixed. For a_m = dt'_m A,
// d/da_m = sum_{k>=m} d/dc_k, written without cancellation as
//   da_m = sum_{k>=m} gC_k + <dU, S'> + sum_{j<m} gB_j + sum_{i>=m} sum_{j<m} dM[i,j] M[i,j]
// where gC_i = (dY S')_i . Ct_i and gB_j = (X' dU^T)_j . Bt_j (the decay-free pairs i,j >= m cancel
// exactly and are never formed).
// ---------------------------------------------------------------------------------------------
template <typename T>
VSSM_INLINE void causal_bwd_head(const Problem& pb, const Grads<T>& gr, int64_t b, int64_t h,
                                 int64_t slot) {
  const HeadIn<T> in(pb, b, h);
  const int qmax = std::max(1, std::min(pb.block, kMaxBlock));
  const Dims<T> d(pb.P, pb.N, qmax);
  const int64_t NP = d.N * d.ldP, PN = d.P * d.ldN;
  // Pass 1: block boundaries and the state entering each block (kept as P x N).
  std::vector<int64_t> starts;
  std::vector<T> states;
  states.reserve((pb.L / qmax + 2) * PN);
  std::vector<T> sg_buf(pb.P);  // sigmoid(z) of one row
  T* sg = sg_buf.data();
  std::vector<T> buf(NP + PN + qmax * d.ldN * 4 + d.N * d.ldQ + qmax * d.ldP * 3 + d.P * d.ldQ +
                         d.P * d.ldN + qmax * d.ldQ * 2 + 8 * (qmax + 1),
                     T(0));
  T* next = buf.data();
  auto take = [&next](int64_t count) {
    T* p = next;
    next += count;
    return p;
  };
  T* dST = take(NP);                // N x P: adjoint state (pass 2)
  T* SP = take(PN);                 // P x N: state (pass 1)
  T* Ct = take(qmax * d.ldN);       // q x N
  T* Bt = take(qmax * d.ldN);       // q x N
  T* dCt = take(qmax * d.ldN);      // q x N
  T* dBt = take(qmax * d.ldN);      // q x N
  T* BtT = take(d.N * d.ldQ);       // N x q
  T* Xp = take(qmax * d.ldP);       // q x P
  T* dY = take(qmax * d.ldP);       // q x P
  T* dXp = take(qmax * d.ldP);      // q x P
  T* XpT = take(d.P * d.ldQ);       // P x q
  T* dSTT = take(d.P * d.ldN);      // P x N: dS_out
  T* Mq = take(qmax * d.ldQ);       // q x q
  T* dM = take(qmax * d.ldQ);       // q x q
  T* dtv = take(qmax);
  T* cv = take(qmax);
  T* e1 = take(qmax);
  T* e2 = take(qmax);
  T* gC = take(qmax);
  T* gB = take(qmax);
  T* da = take(qmax);
  T* RT = take(qmax + 1);

  if (pb.init.ptr) {
    const T* S0 = reinterpret_cast<const T*>(pb.init.ptr) + b * pb.init.s[0] + h * pb.init.s[1];
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) SP[p * d.ldN + n] = S0[p * pb.init.s[2] + n * pb.init.s[3]];
  }
  std::vector<int> scales;  // per block: its rescale_block exponent (the state is stored scaled)
  int ks = 0;
  for (int64_t t0 = 0; t0 < pb.L;) {
    T a0, r;
    const int q = next_block(in, t0, pb.L, qmax, dtv, cv, a0, r);
    prefetch_rows(in.x, in.sxt, t0 + q, std::min<int64_t>(t0 + q + qmax, pb.L), d.P, 1);
    prefetch_rows(in.B, in.sBt, t0 + q, std::min<int64_t>(t0 + q + qmax, pb.L), d.N, 1);
    gather_block(in, d, t0, q, dtv, cv, r, e1, e2, static_cast<T*>(nullptr), Bt,
                 static_cast<T*>(nullptr), Xp);
    scales.push_back(rescale_block(q, d.P, Xp, d.ldP, d.P, d.N, SP, d.ldN, t0 == 0 && pb.init.ptr, ks));
    starts.push_back(t0);
    states.insert(states.end(), SP, SP + PN);
    const T E = std::exp(cv[q - 1] - r);
    // S = exp(a0 + c_last) S + E X'^T Bt
    gemm_t<T, true>(d.P, d.N, q, Xp, d.ldP, Bt, d.ldN, SP, d.ldN, E, std::exp(a0 + cv[q - 1]));
    t0 += q;
  }
  starts.push_back(pb.L);

  // Pass 2: reverse over blocks with the adjoint state dST (N x P).

  if (gr.dfinal) {
    const T* F = gr.dfinal + (b * pb.H + h) * pb.P * pb.N;
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) dST[n * d.ldP + p] = F[p * d.N + n];
  }
  const int64_t so_t = pb.H * pb.P;
  const int64_t obase = (b * pb.L * pb.H + h) * pb.P;
  double dA_acc = 0, dbias_acc = 0;
  std::vector<double> dD_acc(d.P, 0.0);
  for (int64_t blk = static_cast<int64_t>(starts.size()) - 2; blk >= 0; --blk) {
    const int64_t t0 = starts[blk];
    T a0, r;
    const int q = next_block(in, t0, pb.L, qmax, dtv, cv, a0, r);
    if (blk > 0) {
      const int64_t lo = starts[blk - 1];
      in.prefetch(lo, t0, pb.L, d.P, d.N);
      prefetch_rows(gr.dout + obase, so_t, lo, t0, d.P, 1);
      if (gr.pregate) prefetch_rows(gr.pregate + obase, so_t, lo, t0, d.P, 1);
      prefetch_rows(gr.dx + obase, so_t, lo, t0, d.P, 1, true);
      if (gr.dz) prefetch_rows(gr.dz + obase, so_t, lo, t0, d.P, 1, true);
    }
    gather_block(in, d, t0, q, dtv, cv, r, e1, e2, Ct, Bt, BtT, Xp);
    // X' and S_in at the block's scale 2^-k (pass 1); the X'/S-linear dM, dCt, dBt, da get f = 2^k.
    const int k = scales[blk];
    if (k > 0) scale_rows<T>(q, d.P, Xp, d.ldP, std::ldexp(T(1), -k));
    const T f = std::ldexp(T(1), k);
    const T es = std::exp(a0 + r), E = std::exp(cv[q - 1] - r), decay = std::exp(a0 + cv[q - 1]);
    load_dy(pb, in, gr, b, h, t0, q, d.ldP, dY, sg);
    const T* S_in = states.data() + blk * PN;           // P x N
    transpose<T>(d.N, d.P, dST, d.ldP, dSTT, d.ldN);  // dS_out (P x N)
    transpose<T>(q, d.P, Xp, d.ldP, XpT, d.ldQ);
    // M and dM (lower triangular incl. diagonal).
    gemm<T, false>(q, q, d.N, Ct, d.ldN, BtT, d.ldQ, Mq, d.ldQ, T(1), T(0), kFull, true);
    zero_upper(q, Mq, d.ldQ);
    gemm<T, false>(q, q, d.P, dY, d.ldP, XpT, d.ldQ, dM, d.ldQ, T(1), T(0), kFull, true);
    zero_upper(q, dM, d.ldQ);
    // dCt = dY S' (+ dM Bt); dBt = E X' dS_out^T (+ dM^T Ct).
    gemm<T, false>(q, d.N, d.P, dY, d.ldP, S_in, d.ldN, dCt, d.ldN, es);
    gemm<T, false>(q, d.N, d.P, Xp, d.ldP, dSTT, d.ldN, dBt, d.ldN, E);
    for (int i = 0; i < q; ++i) {
      T sc = 0, sb = 0;
      const T *a = dCt + i * d.ldN, *c = Ct + i * d.ldN, *a2 = dBt + i * d.ldN, *bb = Bt + i * d.ldN;
      for (int64_t n = 0; n < d.N; ++n) {
        sc += a[n] * c[n];
        sb += a2[n] * bb[n];
      }
      gC[i] = sc;
      gB[i] = sb;
    }
    gemm<T, true>(q, d.N, q, dM, d.ldQ, Bt, d.ldN, dCt, d.ldN, T(1), T(1), kLowerA);
    gemm_t<T, true>(q, d.N, q, dM, d.ldQ, Ct, d.ldN, dBt, d.ldN, T(1), T(1), kUpperA);
    // dX' = M^T dY + E Bt dS_out
    gemm_t<T, false>(q, d.P, q, Mq, d.ldQ, dY, d.ldP, dXp, d.ldP, T(1), T(0), kUpperA);
    gemm<T, true>(q, d.P, d.N, Bt, d.ldN, dST, d.ldP, dXp, d.ldP, E, T(1));
    // <dU, S'> = E e^s <dS_out, S_in>   (before dST is overwritten)
    T gU = 0;
    for (int64_t p = 0; p < d.P; ++p) {
      const T *a = dSTT + p * d.ldN, *s = S_in + p * d.ldN;
      for (int64_t n = 0; n < d.N; ++n) gU += a[n] * s[n];
    }
    gU *= decay;
    // dS_in = e^s (E dS_out + Ct^T dY)
    gemm_t<T, true>(d.N, d.P, q, Ct, d.ldN, dY, d.ldP, dST, d.ldP, es, decay);
    // RT[m] = sum_{i>=m} sum_{j<m} dM[i,j] M[i,j]
    std::fill(RT, RT + q + 1, T(0));
    for (int i = 1; i < q; ++i) {
      const T *dm = dM + i * d.ldQ, *mm = Mq + i * d.ldQ;
      T pre = 0;
      for (int m = 1; m <= i; ++m) {
        pre += dm[m - 1] * mm[m - 1];
        RT[m] += pre;
      }
    }
    {
      T suffix = 0;
      for (int m = q - 1; m >= 0; --m) {
        suffix += gC[m];
        da[m] = suffix;
      }
      T prefix = 0;
      for (int m = 0; m < q; ++m) {
        da[m] = (da[m] + (gU + prefix + RT[m])) * f;
        prefix += gB[m];
      }
    }
    // Per-token outputs.
    for (int i = 0; i < q; ++i) {
      const int64_t t = t0 + i;
      const T* xr = in.x + t * in.sxt;
      const T* dxp = dXp + i * d.ldP;
      const T* dy = dY + i * d.ldP;
      T* dx = gr.dx + obase + t * so_t;
      T ddelta = 0;
      for (int64_t p = 0; p < d.P; ++p) {
        const T xv = xr[p];
        ddelta += xv * dxp[p];
        dx[p] = dtv[i] * dxp[p] + in.Dv[p] * dy[p];
        dD_acc[p] += static_cast<double>(dy[p] * xv);
      }
      ddelta += in.A * da[i];
      dA_acc += static_cast<double>(dtv[i] * da[i]);
      const T draw = in.softplus ? ddelta * softplus_grad(in.raw(t)) : ddelta;
      gr.ddt[(b * pb.L + t) * pb.H + h] = draw;
      dbias_acc += static_cast<double>(draw);
      T* dBr = gr.dB + ((b * pb.L + t) * gr.slots + slot) * d.N;
      T* dCr = gr.dC + ((b * pb.L + t) * gr.slots + slot) * d.N;
      const T *dbt = dBt + i * d.ldN, *dct = dCt + i * d.ldN;
      for (int64_t n = 0; n < d.N; ++n) {
        dBr[n] += e2[i] * dbt[n] * f;
        dCr[n] += e1[i] * dct[n] * f;
      }
    }
  }
  if (gr.dinit) {
    T* F = gr.dinit + (b * pb.H + h) * pb.P * pb.N;
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) F[p * d.N + n] = dST[n * d.ldP + p];
  }
  gr.dA[b * pb.H + h] = static_cast<T>(dA_acc);
  gr.dbias[b * pb.H + h] = static_cast<T>(dbias_acc);
  for (int64_t p = 0; p < d.P; ++p) gr.dD[(b * pb.H + h) * pb.P + p] = static_cast<T>(dD_acc[p]);
}

// ---------------------------------------------------------------------------------------------
// Non-causal (VSSD): w_j = -dt'_j A, KV = sum_j w_j B_j^T x_j (N x P), y_i = C_i KV + D x_i.
// ---------------------------------------------------------------------------------------------
// Row-major (q x .) copies of block rows: Bw = w B, Braw = B, Cr = C, Xb = x (null: skipped).
template <typename T>
VSSM_INLINE void gather_nc(const HeadIn<T>& in, const Dims<T>& d, int64_t t0, int q, T* wv, T* Bw,
                           T* Braw, T* Cr, T* Xb) {
  for (int i = 0; i < q; ++i) {
    const int64_t t = t0 + i;
    const T w = -in.delta(t) * in.A;
    wv[i] = w;
    const T* Br = in.B + t * in.sBt;
    const T* Crow = in.C + t * in.sCt;
    const T* xr = in.x + t * in.sxt;
    if (Bw)
      for (int64_t n = 0; n < d.N; ++n) Bw[i * d.ldN + n] = w * Br[n];
    if (Braw)
      for (int64_t n = 0; n < d.N; ++n) Braw[i * d.ldN + n] = Br[n];
    if (Cr)
      for (int64_t n = 0; n < d.N; ++n) Cr[i * d.ldN + n] = Crow[n];
    if (Xb)
      for (int64_t p = 0; p < d.P; ++p) Xb[i * d.ldP + p] = xr[p];
  }
}

template <typename T>
VSSM_INLINE void nc_fwd_head(const Problem& pb, int64_t b, int64_t h, T* out, T* pregate,
                             T* final_states) {
  const HeadIn<T> in(pb, b, h);
  const int qb = kNcBlock;
  const Dims<T> d(pb.P, pb.N, qb);
  std::vector<T> sg_buf(pb.P);  // sigmoid(z) of one row
  T* sg = sg_buf.data();
  std::vector<T> buf(d.N * d.ldP + 2 * qb * d.ldN + 2 * qb * d.ldP + qb, T(0));
  T* KV = buf.data();          // N x P
  T* Bw = KV + d.N * d.ldP;    // q x N
  T* Cr = Bw + qb * d.ldN;     // q x N
  T* Xb = Cr + qb * d.ldN;     // q x P
  T* Y = Xb + qb * d.ldP;      // q x P
  T* wv = Y + qb * d.ldP;
  // With D, pass 2 needs x again: keep pass 1's rows (up to 8 MB) instead of re-reading memory.
  const bool keep_x = in.has_D && pb.L * d.ldP * static_cast<int64_t>(sizeof(T)) <= (8 << 20);
  std::vector<T> xkeep(keep_x ? pb.L * d.ldP : 0);
  for (int64_t t0 = 0; t0 < pb.L; t0 += qb) {
    const int q = static_cast<int>(std::min<int64_t>(qb, pb.L - t0));
    prefetch_rows(in.x, in.sxt, t0 + q, std::min<int64_t>(t0 + q + qb, pb.L), d.P, 1);
    prefetch_rows(in.B, in.sBt, t0 + q, std::min<int64_t>(t0 + q + qb, pb.L), d.N, 1);
    T* xb = keep_x ? xkeep.data() + t0 * d.ldP : Xb;
    gather_nc<T>(in, d, t0, q, wv, Bw, nullptr, nullptr, xb);
    gemm_t<T, true>(d.N, d.P, q, Bw, d.ldN, xb, d.ldP, KV, d.ldP);
  }
  const int64_t so_t = pb.H * pb.P;
  T* ob = out + (b * pb.L * pb.H + h) * pb.P;
  T* pg = pregate ? pregate + (b * pb.L * pb.H + h) * pb.P : nullptr;
  for (int64_t t0 = 0; t0 < pb.L; t0 += qb) {
    const int q = static_cast<int>(std::min<int64_t>(qb, pb.L - t0));
    {
      const int64_t lo = t0 + q, hi = std::min<int64_t>(t0 + q + qb, pb.L);
      if (in.has_D && !keep_x) prefetch_rows(in.x, in.sxt, lo, hi, d.P, 1);
      prefetch_rows(in.C, in.sCt, lo, hi, d.N, 1);
      prefetch_rows(in.z, in.szt, lo, hi, d.P, 1);
      prefetch_rows(ob, so_t, lo, hi, d.P, 1, true);
      prefetch_rows(pg, so_t, lo, hi, d.P, 1, true);
    }
    gather_nc<T>(in, d, t0, q, wv, nullptr, nullptr, Cr, nullptr);
    gemm<T, false>(q, d.P, d.N, Cr, d.ldN, KV, d.ldP, Y, d.ldP);
    for (int i = 0; i < q; ++i) {
      const int64_t t = t0 + i;
      const T* xr = keep_x ? xkeep.data() + t * d.ldP : in.x + t * in.sxt;
      epilogue_row(d.P, Y + i * d.ldP, xr, in.Dv.data(), in.has_D,
                   in.z ? in.z + t * in.szt : nullptr, sg, pg ? pg + t * so_t : nullptr,
                   ob + t * so_t);
    }
  }
  if (final_states) {
    T* F = final_states + (b * pb.H + h) * pb.P * pb.N;
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) F[p * d.N + n] = KV[n * d.ldP + p];
  }
}

template <typename T>
VSSM_INLINE void nc_bwd_head(const Problem& pb, const Grads<T>& gr, int64_t b, int64_t h,
                             int64_t slot) {
  const HeadIn<T> in(pb, b, h);
  const int qb = kNcBlock;
  const Dims<T> d(pb.P, pb.N, qb);
  std::vector<T> sg_buf(pb.P);  // sigmoid(z) of one row
  T* sg = sg_buf.data();
  std::vector<T> buf(2 * d.N * d.ldP + 2 * d.P * d.ldN + 5 * qb * d.ldN + 3 * qb * d.ldP + qb,
                     T(0));
  T* KV = buf.data();            // N x P
  T* dKV = KV + d.N * d.ldP;     // N x P
  T* KVT = dKV + d.N * d.ldP;    // P x N
  T* dKVT = KVT + d.P * d.ldN;   // P x N
  T* Bw = dKVT + d.P * d.ldN;    // q x N (w B)
  T* Cr = Bw + qb * d.ldN;       // q x N
  T* Bb = Cr + qb * d.ldN;       // q x N (raw B)
  T* dCb = Bb + qb * d.ldN;      // q x N
  T* dBw = dCb + qb * d.ldN;     // q x N
  T* Xb = dBw + qb * d.ldN;      // q x P
  T* dY = Xb + qb * d.ldP;       // q x P
  T* dXr = dY + qb * d.ldP;      // q x P
  T* wv = dXr + qb * d.ldP;
  if (gr.dfinal) {
    const T* F = gr.dfinal + (b * pb.H + h) * pb.P * pb.N;
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) dKV[n * d.ldP + p] = F[p * d.N + n];
  }
  const int64_t so_t = pb.H * pb.P;
  const int64_t obase = (b * pb.L * pb.H + h) * pb.P;
  // Pass 1: dKV = sum_i C_i^T dY_i (+ dfinal^T), and KV unless the forward saved it.
  const bool have_kv = gr.saved_kv != nullptr;
  for (int64_t t0 = 0; t0 < pb.L; t0 += qb) {
    const int q = static_cast<int>(std::min<int64_t>(qb, pb.L - t0));
    {
      const int64_t lo = t0 + q, hi = std::min<int64_t>(t0 + q + qb, pb.L);
      in.prefetch(lo, hi, pb.L, d.P, d.N);
      prefetch_rows(gr.dout + obase, so_t, lo, hi, d.P, 1);
      if (gr.pregate) prefetch_rows(gr.pregate + obase, so_t, lo, hi, d.P, 1);
    }
    gather_nc<T>(in, d, t0, q, wv, have_kv ? nullptr : Bw, nullptr, Cr, have_kv ? nullptr : Xb);
    load_dy(pb, in, gr, b, h, t0, q, d.ldP, dY, sg, true);
    if (!have_kv) gemm_t<T, true>(d.N, d.P, q, Bw, d.ldN, Xb, d.ldP, KV, d.ldP);
    gemm_t<T, true>(d.N, d.P, q, Cr, d.ldN, dY, d.ldP, dKV, d.ldP);
  }
  if (have_kv) {
    const T* F = gr.saved_kv + (b * pb.H + h) * pb.P * pb.N;
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t n = 0; n < d.N; ++n) KVT[p * d.ldN + n] = F[p * d.N + n];
  } else {
    transpose<T>(d.N, d.P, KV, d.ldP, KVT, d.ldN);
  }
  transpose<T>(d.N, d.P, dKV, d.ldP, dKVT, d.ldN);
  // Pass 2: per-token gradients.
  double dA_acc = 0, dbias_acc = 0;
  std::vector<double> dD_acc(d.P, 0.0);
  for (int64_t t0 = 0; t0 < pb.L; t0 += qb) {
    const int q = static_cast<int>(std::min<int64_t>(qb, pb.L - t0));
    {
      const int64_t lo = t0 + q, hi = std::min<int64_t>(t0 + q + qb, pb.L);
      in.prefetch(lo, hi, pb.L, d.P, 0);
      prefetch_rows(gr.dout + obase, so_t, lo, hi, d.P, 1);
      prefetch_rows(gr.dx + obase, so_t, lo, hi, d.P, 1, true);
    }
    gather_nc<T>(in, d, t0, q, wv, nullptr, Bb, nullptr, Xb);
    // dY was consumed in pass 1; reload it (dz was written there).
    load_dy(pb, in, gr, b, h, t0, q, d.ldP, dY, sg, false);
    gemm<T, false>(q, d.N, d.P, dY, d.ldP, KVT, d.ldN, dCb, d.ldN);   // dC = dY KV^T
    gemm<T, false>(q, d.N, d.P, Xb, d.ldP, dKVT, d.ldN, dBw, d.ldN);  // (X dKV^T)
    gemm<T, false>(q, d.P, d.N, Bb, d.ldN, dKV, d.ldP, dXr, d.ldP);   // (B dKV)
    for (int i = 0; i < q; ++i) {
      const int64_t t = t0 + i;
      const T* xr = in.x + t * in.sxt;
      const T* dy = dY + i * d.ldP;
      const T* dxr = dXr + i * d.ldP;
      T* dx = gr.dx + obase + t * so_t;
      for (int64_t p = 0; p < d.P; ++p) {
        const T xv = xr[p];
        dx[p] = wv[i] * dxr[p] + in.Dv[p] * dy[p];
        dD_acc[p] += static_cast<double>(dy[p] * xv);
      }
      T dw = 0;
      const T *bw = dBw + i * d.ldN, *br = Bb + i * d.ldN, *dc = dCb + i * d.ldN;
      T* dBr = gr.dB + ((b * pb.L + t) * gr.slots + slot) * d.N;
      T* dCr = gr.dC + ((b * pb.L + t) * gr.slots + slot) * d.N;
      for (int64_t n = 0; n < d.N; ++n) {
        dw += bw[n] * br[n];
        dBr[n] += wv[i] * bw[n];
        dCr[n] += dc[n];
      }
      const T ddelta = -in.A * dw;
      dA_acc += -static_cast<double>(in.delta(t)) * static_cast<double>(dw);
      const T draw = in.softplus ? ddelta * softplus_grad(in.raw(t)) : ddelta;
      gr.ddt[(b * pb.L + t) * pb.H + h] = draw;
      dbias_acc += static_cast<double>(draw);
    }
  }
  gr.dA[b * pb.H + h] = static_cast<T>(dA_acc);
  gr.dbias[b * pb.H + h] = static_cast<T>(dbias_acc);
  for (int64_t p = 0; p < d.P; ++p) gr.dD[(b * pb.H + h) * pb.P + p] = static_cast<T>(dD_acc[p]);
}

// ---------------------------------------------------------------------------------------------
// Entry points compiled per ISA (target_clones), then the dtype dispatch.
// ---------------------------------------------------------------------------------------------
#define VSSM_DEFINE_TASKS(T, SUFFIX)                                                                \
  VSSM_CLONES void fwd_task_##SUFFIX(const Problem& pb, bool causal, int64_t b, int64_t h, T* out, \
                                     T* pregate, T* final_states) {                                 \
    if (causal)                                                                                     \
      causal_fwd_head<T>(pb, b, h, out, pregate, final_states);                                     \
    else                                                                                            \
      nc_fwd_head<T>(pb, b, h, out, pregate, final_states);                                         \
  }                                                                                                 \
  VSSM_CLONES void bwd_task_##SUFFIX(const Problem& pb, bool causal, const Grads<T>& gr, int64_t b, \
                                     int64_t h, int64_t slot) {                                     \
    if (causal)                                                                                     \
      causal_bwd_head<T>(pb, gr, b, h, slot);                                                       \
    else                                                                                            \
      nc_bwd_head<T>(pb, gr, b, h, slot);                                                           \
  }

VSSM_DEFINE_TASKS(float, f32)
VSSM_DEFINE_TASKS(double, f64)

inline void fwd_task(const Problem& pb, bool causal, int64_t b, int64_t h, float* o, float* pg, float* f) {
  fwd_task_f32(pb, causal, b, h, o, pg, f);
}
inline void fwd_task(const Problem& pb, bool causal, int64_t b, int64_t h, double* o, double* pg,
                     double* f) {
  fwd_task_f64(pb, causal, b, h, o, pg, f);
}
inline void bwd_task(const Problem& pb, bool causal, const Grads<float>& gr, int64_t b, int64_t h,
                     int64_t s) {
  bwd_task_f32(pb, causal, gr, b, h, s);
}
inline void bwd_task(const Problem& pb, bool causal, const Grads<double>& gr, int64_t b, int64_t h,
                     int64_t s) {
  bwd_task_f64(pb, causal, gr, b, h, s);
}

View make_view(const visionssm::ssd::Operand& o, size_t ndim, const char* name, bool unit_last = false) {
  View v;
  v.ptr = o.ptr;
  if (o.ptr == 0) return v;
  VSSM_CHECK(!unit_last || o.stride[ndim - 1] == 1, name, " must have a unit stride in its last dim");
  for (size_t i = 0; i < ndim; ++i) v.s[i] = o.stride[i];
  return v;
}

Problem make_problem(const visionssm::ssd::Params& p) {
  Problem pb;
  pb.batch = p.batch;
  pb.L = p.seqlen;
  pb.H = p.heads;
  pb.P = p.headdim;
  pb.G = p.groups;
  pb.N = p.dstate;
  VSSM_CHECK(pb.batch >= 0 && pb.L >= 0 && pb.H >= 0 && pb.P >= 0 && pb.G >= 1 && pb.N >= 1,
             "bad sizes: need batch, L, heads, headdim >= 0 and groups, dstate >= 1");
  VSSM_CHECK(pb.H % pb.G == 0, "heads must be a multiple of groups");
  VSSM_CHECK(p.chunk_size >= 1, "chunk_size must be >= 1, got ", p.chunk_size);
  VSSM_CHECK(p.dt_min == 0.0 && p.dt_max == std::numeric_limits<double>::infinity(),
             "dt_limit is not supported by the CPU kernel (CUDA only), got (", p.dt_min, ", ", p.dt_max, ")");
  VSSM_CHECK(p.causal || p.init.ptr == 0, "initial_states is only valid with causal=true");
  // (empty tensors may have a null address)
  const int64_t tokens = pb.batch * pb.L;
  VSSM_CHECK(p.A.ptr || pb.H == 0, "A is required");
  VSSM_CHECK((p.x.ptr || tokens * pb.H * pb.P == 0) && (p.dt.ptr || tokens * pb.H == 0) &&
                 ((p.B.ptr && p.C.ptr) || tokens == 0),
             "x, dt, B, C are required");
  pb.block = static_cast<int>(std::min<int64_t>(p.chunk_size, kMaxBlock));
  pb.softplus = p.softplus;
  pb.x = make_view(p.x, 4, "x", true);
  pb.dt = make_view(p.dt, 3, "dt");
  pb.A = make_view(p.A, 1, "A");
  pb.B = make_view(p.B, 4, "B", true);
  pb.C = make_view(p.C, 4, "C", true);
  pb.D = make_view(p.D, 2, "D");
  pb.z = make_view(p.z, 4, "z", true);
  pb.dt_bias = make_view(p.dt_bias, 1, "dt_bias");
  pb.init = make_view(p.init, 4, "initial_states");
  return pb;
}

visionssm::ssd::Params cpu_params(const pybind11::dict& args) {
  using visionssm::ssd::DType;
  return visionssm::ssd::params_from_dict(args, "ssd_cpu", {DType::kFloat32, DType::kFloat64});
}

template <typename T>
void fwd_impl(const Problem& pb, bool causal, std::uintptr_t out, std::uintptr_t pregate,
              std::uintptr_t final_states, int threads) {
  T* o = reinterpret_cast<T*>(out);
  T* pg = reinterpret_cast<T*>(pregate);
  T* f = reinterpret_cast<T*>(final_states);
  if (pb.P == 0) return;  // y and final_states are empty
  visionssm::parallel_for_dynamic(pb.batch * pb.H, threads, [&](int64_t task) {
    fwd_task(pb, causal, task / pb.H, task % pb.H, o, pg, f);
  });
}

void ssd_fwd(const pybind11::dict& args) {
  const visionssm::ssd::Params p = cpu_params(args);
  const Problem pb = make_problem(p);
  VSSM_CHECK(p.y != 0 || pb.batch * pb.L * pb.H * pb.P == 0, "y is required");
  pybind11::gil_scoped_release release;
  const int threads = static_cast<int>(p.threads);
  if (p.dtype == visionssm::ssd::DType::kFloat32)
    return fwd_impl<float>(pb, p.causal, p.y, p.pregate, p.final_states, threads);
  return fwd_impl<double>(pb, p.causal, p.y, p.pregate, p.final_states, threads);
}

template <typename T>
void bwd_impl(const Problem& pb, bool causal, int64_t heads_per_task, const std::vector<std::uintptr_t>& g,
              int threads) {
  Grads<T> gr;
  gr.dout = reinterpret_cast<const T*>(g[0]);
  gr.dfinal = reinterpret_cast<const T*>(g[1]);
  gr.pregate = reinterpret_cast<const T*>(g[2]);
  gr.dx = reinterpret_cast<T*>(g[3]);
  gr.ddt = reinterpret_cast<T*>(g[4]);
  gr.dB = reinterpret_cast<T*>(g[5]);
  gr.dC = reinterpret_cast<T*>(g[6]);
  gr.dz = reinterpret_cast<T*>(g[7]);
  gr.dA = reinterpret_cast<T*>(g[8]);
  gr.dD = reinterpret_cast<T*>(g[9]);
  gr.dbias = reinterpret_cast<T*>(g[10]);
  gr.dinit = reinterpret_cast<T*>(g[11]);
  gr.saved_kv = reinterpret_cast<const T*>(g[12]);
  gr.slots = pb.H / heads_per_task;
  if (pb.P == 0) {  // y and final_states are empty: every gradient is 0 (dB, dC come zeroed)
    std::fill(gr.ddt, gr.ddt + pb.batch * pb.L * pb.H, T(0));
    std::fill(gr.dA, gr.dA + pb.batch * pb.H, T(0));
    std::fill(gr.dbias, gr.dbias + pb.batch * pb.H, T(0));
    return;
  }
  if (pb.z.ptr) VSSM_CHECK(gr.pregate != nullptr, "pregate output is required when z is given");
  visionssm::parallel_for_dynamic(pb.batch * gr.slots, threads, [&](int64_t task) {
    const int64_t b = task / gr.slots, s = task % gr.slots;
    for (int64_t k = 0; k < heads_per_task; ++k) bwd_task(pb, causal, gr, b, s * heads_per_task + k, s);
  });
}

void ssd_bwd(const pybind11::dict& args) {
  const visionssm::ssd::Params p = cpu_params(args);
  const Problem pb = make_problem(p);
  const std::vector<std::uintptr_t> grads = {p.dout, p.dfinal, p.pregate, p.dx, p.ddt, p.dB, p.dC,
                                             p.dz, p.dA, p.dD, p.dbias, p.dinit, p.saved_kv};
  const int64_t hpg = pb.H / pb.G;
  VSSM_CHECK(p.heads_per_task == 1 || (p.heads_per_task == hpg && hpg >= 1),
             "heads_per_task must be 1 or heads/groups, got ", p.heads_per_task);
  const int64_t rows = pb.batch * pb.L * pb.H;  // (an empty buffer may have a null address)
  VSSM_CHECK((grads[0] && grads[3]) || rows * pb.P == 0, "missing gradient buffers (dout, dx)");
  VSSM_CHECK((grads[4] && grads[5] && grads[6]) || rows == 0, "missing gradient buffers (ddt, dB, dC)");
  VSSM_CHECK((grads[8] && grads[10]) || pb.batch * pb.H == 0, "missing partial-sum buffers (dA, dbias)");
  VSSM_CHECK(grads[9] || pb.batch * pb.H * pb.P == 0, "missing partial-sum buffer (dD)");
  pybind11::gil_scoped_release release;
  const int threads = static_cast<int>(p.threads);
  if (p.dtype == visionssm::ssd::DType::kFloat32)
    return bwd_impl<float>(pb, p.causal, p.heads_per_task, grads, threads);
  return bwd_impl<double>(pb, p.causal, p.heads_per_task, grads, threads);
}

}  // namespace

PYBIND11_MODULE(ssd_cpu, m) {
  namespace py = pybind11;
  m.doc() = "Mamba-2 SSD (causal chunked scan) and VSSD non-causal SSD: CPU forward/backward.";
  // Both take the dict of ssd_params.h fields that py/ops/ssd.py (kernel_params) fills.
  m.def("fwd", &ssd_fwd, "SSD forward: y, pregate (when given), final_states", py::arg("params"));
  m.def("bwd", &ssd_bwd, "SSD backward: every gradient buffer named in params", py::arg("params"));
  m.def("max_block", []() { return kMaxBlock; }, "cap on the causal block length");
}
