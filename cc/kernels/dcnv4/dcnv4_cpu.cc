// DCNv4 (deformable convolution v4, unnormalised modulation) forward and backward on the CPU.
//
// Semantics (specs/pvmamba.md §4.2, specs/vmamba_kernels.md §5.1): for output pixel (ho, wo),
// group g and kernel point k = (i, j) (width index i in the outer loop, height index j inner, the
// centre skipped when remove_center), with half_w = dw*(kw-1)/2, half_h = dh*(kh-1)/2, s = offset_scale:
//   w = wo*sw - pw + half_w + (i*dw - half_w + dx_k)*s,   h = ho*sh - ph + half_h + (j*dh - half_h + dy_k)*s
//   out[n,ho,wo,g*D+c] = sum_k m_k * bilinear(value[n,:,:,g*D+c], h, w)
// in pixel coordinates of the unpadded input, zero outside, sampled only if -1 < h < H and -1 < w < W.
// offset_mask[n,ho,wo,:] holds per group g the block [dx_0, dy_0, ..., dx_{K-1}, dy_{K-1}, m_0..m_{K-1}]
// at offset g*3K; channels from 3*G*K to P are padding (ignored; zero gradient).
//
// Work split. Forward: one task per output row (n, ho); inside, each (pixel, group) computes its up to
// 4K bilinear taps (value offset, mask*corner weight) once and then sweeps the group's D contiguous
// channels in register-sized chunks, so the channel loop vectorises.
// Backward: grad_value is a scatter, so a task is (image n, slice of output rows) and owns a private
// destination for grad_value[n]: slice 0 scatters straight into grad_value[n], slice s > 0 into its
// own buffer, and the buffers are added in slice order afterwards. The number of slices S depends on
// the shape only (S = 1 once N >= 8), never on the thread count. No atomics, no races, and the result
// is bitwise the same for any thread count. All groups of a pixel are handled by one task, so
// offset_mask, grad_output and grad_offset_mask are streamed contiguously.
//
// Hot loops are compiled twice (x86-64-v3 = AVX2+FMA, and the baseline) via target_clones.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/clones.h"
#include "cc/kernels/common/parallel.h"
#include "cc/kernels/common/scratch.h"
#include "cc/kernels/common/simd.h"
#include "cc/kernels/dcnv4/dcnv4_params.h"
#include "cc/kernels/dcnv4/dcnv4_params_dict.h"

namespace {

struct Geom {
  int64_t N, H, W, G, D, Ho, Wo, P;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t K;  // kh*kw - remove_center
  bool remove_center;
  double offset_scale;
  // Element strides. value and grad_output have channel stride 1 (checked at the entry points).
  int64_t v_n, v_h, v_w;
  int64_t om_n, om_h, om_w, om_c;
  int64_t go_n, go_h, go_w;
};

// Kernel-point displacements before the offset, in point order: kx = i*dw - half_w, ky = j*dh - half_h.
template <typename T>
void kernel_points(const Geom& g, std::vector<T>* kx, std::vector<T>* ky) {
  const int64_t half_w = g.dw * (g.kw - 1) / 2, half_h = g.dh * (g.kh - 1) / 2;
  kx->clear();
  ky->clear();
  for (int64_t i = 0; i < g.kw; ++i) {
    for (int64_t j = 0; j < g.kh; ++j) {
      if (g.remove_center && i == g.kw / 2 && j == g.kh / 2) continue;
      kx->push_back(static_cast<T>(i * g.dw - half_w));
      ky->push_back(static_cast<T>(j * g.dh - half_h));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Forward

// out[0:CH] = sum_t wt[t] * base[off[t] + 0:CH]. Even and odd taps go to two accumulators (twice the
// independent FMA chains), summed at the end: a fixed order, so the result is deterministic.
template <typename T, int CH>
VSSM_INLINE void gather_chunk(const T* __restrict base, const int64_t* __restrict off,
                              const T* __restrict wt, int taps, T* __restrict out) {
  T acc0[CH], acc1[CH];
  for (int q = 0; q < CH; ++q) acc0[q] = acc1[q] = T(0);
  int t = 0;
  for (; t + 2 <= taps; t += 2) {
    const T* __restrict p0 = base + off[t];
    const T* __restrict p1 = base + off[t + 1];
    const T a0 = wt[t], a1 = wt[t + 1];
#pragma omp simd
    for (int q = 0; q < CH; ++q) {
      acc0[q] += a0 * p0[q];
      acc1[q] += a1 * p1[q];
    }
  }
  if (t < taps) {
    const T* __restrict p0 = base + off[t];
    const T a0 = wt[t];
#pragma omp simd
    for (int q = 0; q < CH; ++q) acc0[q] += a0 * p0[q];
  }
  for (int q = 0; q < CH; ++q) out[q] = acc0[q] + acc1[q];
}

template <typename T>
VSSM_INLINE void forward_row(const Geom& g, const T* kx, const T* ky, const T* value,
                             const T* offset_mask, T* out, int64_t row, int64_t* off, T* wt) {
  const int64_t n = row / g.Ho, ho = row % g.Ho;
  const int64_t K = g.K, D = g.D, H = g.H, W = g.W;
  const T s = static_cast<T>(g.offset_scale);
  const T base_h = static_cast<T>(ho * g.sh - g.ph + g.dh * (g.kh - 1) / 2);
  const T* vn = value + n * g.v_n;
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    const T base_w = static_cast<T>(wo * g.sw - g.pw + g.dw * (g.kw - 1) / 2);
    const T* om = offset_mask + n * g.om_n + ho * g.om_h + wo * g.om_w;
    T* o = out + ((n * g.Ho + ho) * g.Wo + wo) * g.G * D;
    for (int64_t gg = 0; gg < g.G; ++gg) {
      const T* omg = om + gg * 3 * K * g.om_c;
      int taps = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T dx = omg[(2 * k) * g.om_c], dy = omg[(2 * k + 1) * g.om_c];
        const T m = omg[(2 * K + k) * g.om_c];
        const T w = base_w + (kx[k] + dx) * s, h = base_h + (ky[k] + dy) * s;
        if (!(h > T(-1) && w > T(-1) && h < T(H) && w < T(W))) continue;
        const T hf = std::floor(h), wf = std::floor(w);
        const int64_t y0 = static_cast<int64_t>(hf), x0 = static_cast<int64_t>(wf);
        const T lh = h - hf, lw = w - wf, hh = T(1) - lh, hw = T(1) - lw;
        const bool y0ok = y0 >= 0, y1ok = y0 + 1 < H, x0ok = x0 >= 0, x1ok = x0 + 1 < W;
        const int64_t o00 = y0 * g.v_h + x0 * g.v_w;
        if (y0ok && x0ok) { off[taps] = o00; wt[taps++] = m * hh * hw; }
        if (y0ok && x1ok) { off[taps] = o00 + g.v_w; wt[taps++] = m * hh * lw; }
        if (y1ok && x0ok) { off[taps] = o00 + g.v_h; wt[taps++] = m * lh * hw; }
        if (y1ok && x1ok) { off[taps] = o00 + g.v_h + g.v_w; wt[taps++] = m * lh * lw; }
      }
      const T* vg = vn + gg * D;
      T* og = o + gg * D;
      int64_t c = 0;
      for (; c + 32 <= D; c += 32) gather_chunk<T, 32>(vg + c, off, wt, taps, og + c);
      for (; c + 16 <= D; c += 16) gather_chunk<T, 16>(vg + c, off, wt, taps, og + c);
      for (; c + 8 <= D; c += 8) gather_chunk<T, 8>(vg + c, off, wt, taps, og + c);
      for (; c < D; ++c) {
        T acc = T(0);
        for (int t = 0; t < taps; ++t) acc += wt[t] * vg[off[t] + c];
        og[c] = acc;
      }
    }
  }
}

VSSM_CLONES void forward_row_f32(const Geom& g, const float* kx, const float* ky, const float* value,
                                 const float* om, float* out, int64_t row, int64_t* off, float* wt) {
  forward_row<float>(g, kx, ky, value, om, out, row, off, wt);
}
VSSM_CLONES void forward_row_f64(const Geom& g, const double* kx, const double* ky,
                                 const double* value, const double* om, double* out, int64_t row,
                                 int64_t* off, double* wt) {
  forward_row<double>(g, kx, ky, value, om, out, row, off, wt);
}
void forward_row_any(const Geom& g, const float* kx, const float* ky, const float* v, const float* om,
                     float* out, int64_t row, int64_t* off, float* wt) {
  forward_row_f32(g, kx, ky, v, om, out, row, off, wt);
}
void forward_row_any(const Geom& g, const double* kx, const double* ky, const double* v,
                     const double* om, double* out, int64_t row, int64_t* off, double* wt) {
  forward_row_f64(g, kx, ky, v, om, out, row, off, wt);
}

template <typename T>
void forward(const Geom& g, std::uintptr_t value, std::uintptr_t offset_mask, std::uintptr_t out,
             int threads) {
  std::vector<T> kx, ky;
  kernel_points<T>(g, &kx, &ky);
  const T* v = reinterpret_cast<const T*>(value);
  const T* om = reinterpret_cast<const T*>(offset_mask);
  T* o = reinterpret_cast<T*>(out);
  const int64_t rows = g.N * g.Ho;
  const int64_t work = rows * g.Wo * g.G * g.K * g.D;
  const int nthreads = work >= (1 << 14) ? threads : 1;
  visionssm::parallel_for(rows, nthreads, [&](int64_t row) {
    // Tap scratch of one (pixel, group): at most 4 corners per point.
    int64_t* off = visionssm::scratch<int64_t>(4 * g.K);
    T* wt = visionssm::scratch<T>(4 * g.K);
    forward_row_any(g, kx.data(), ky.data(), v, om, o, row, off, wt);
  });
}

// ------------------------------------------------------------------------------------------------
// Backward

// Backward of one bilinear corner over CH channels: with p = go*v, accumulates the three weighted
// dot products am += wm*p, aw += ww*p, ah += wh*p lane-wise (reduced once per sample), and scatters
// gv += a*go.
template <typename T, int CH>
VSSM_INLINE void corner_chunk(const T* __restrict go, const T* __restrict v, T* __restrict gv, T a,
                              T wm, T ww, T wh, T* __restrict am, T* __restrict aw,
                              T* __restrict ah) {
#pragma omp simd
  for (int q = 0; q < CH; ++q) {
    const T p = go[q] * v[q];
    am[q] += wm * p;
    aw[q] += ww * p;
    ah[q] += wh * p;
    gv[q] += a * go[q];
  }
}

constexpr int kLanes = 8;

template <typename T>
VSSM_INLINE void corner(const T* go, const T* v, T* gv, T a, T wm, T ww, T wh, int64_t D, T* am,
                        T* aw, T* ah) {
  int64_t c = 0;
  for (; c + kLanes <= D; c += kLanes)
    corner_chunk<T, kLanes>(go + c, v + c, gv + c, a, wm, ww, wh, am, aw, ah);
  for (int q = 0; c < D; ++c, ++q) {  // tail, fewer than kLanes channels
    const T p = go[c] * v[c];
    am[q] += wm * p;
    aw[q] += ww * p;
    ah[q] += wh * p;
    gv[c] += a * go[c];
  }
}

// kLanes-wide vectors (GCC vector extensions, lowered to whatever the clone's ISA has), so the
// per-sample accumulators stay in registers.
template <typename T>
using Vec = visionssm::simd::vec<T, kLanes>;

template <typename T>
VSSM_INLINE Vec<T> vload(const T* p) {
  return visionssm::simd::load<Vec<T>>(p);
}
template <typename T>
VSSM_INLINE void vstore(T* p, const Vec<T>& v) {
  visionssm::simd::store(p, v);
}
// Pairwise lane sum, the same order as lane_sum below.
template <typename T>
VSSM_INLINE T vsum(const Vec<T>& x) {
  using H = visionssm::simd::vec<T, kLanes / 2>;
  using Q = visionssm::simd::vec<T, kLanes / 4>;
  const H h4 = __builtin_shufflevector(x, x, 0, 1, 2, 3) + __builtin_shufflevector(x, x, 4, 5, 6, 7);
  const Q h2 = __builtin_shufflevector(h4, h4, 0, 1) + __builtin_shufflevector(h4, h4, 2, 3);
  return h2[0] + h2[1];
}

// Backward of one sample whose four corners are all inside, over D channels. With x00..x11 the
// corner values, lh/lw the fractional position and go the output gradient, returns
//   gm = sum_c go * bilinear(x)          (d out / d m)
//   gw = sum_c go * d bilinear / d w,  gh = sum_c go * d bilinear / d h   (offset gradients / (m*s))
// and scatters grad_value[corner] += m * corner_weight * go.
template <typename T>
VSSM_INLINE void interior_sample(const T* __restrict go, const T* __restrict v, int64_t vsw,
                                 int64_t vsh, T* __restrict gv, int64_t gsw, int64_t gsh, T m, T lh,
                                 T lw, int64_t D, T* gm, T* gw, T* gh) {
  using V = Vec<T>;
  const T hh = T(1) - lh, hw = T(1) - lw;
  const T w00 = hh * hw, w01 = hh * lw, w10 = lh * hw, w11 = lh * lw;
  const T a00 = m * w00, a01 = m * w01, a10 = m * w10, a11 = m * w11;
  V am = {}, aw = {}, ah = {};
  int64_t c = 0;
  for (; c + kLanes <= D; c += kLanes) {
    const V x00 = vload(v + c), x01 = vload(v + vsw + c), x10 = vload(v + vsh + c),
            x11 = vload(v + vsh + vsw + c);
    const V gq = vload(go + c);
    am += gq * (w00 * x00 + w01 * x01 + w10 * x10 + w11 * x11);
    aw += gq * (hh * (x01 - x00) + lh * (x11 - x10));
    ah += gq * (hw * (x10 - x00) + lw * (x11 - x01));
    vstore(gv + c, vload(gv + c) + a00 * gq);
    vstore(gv + gsw + c, vload(gv + gsw + c) + a01 * gq);
    vstore(gv + gsh + c, vload(gv + gsh + c) + a10 * gq);
    vstore(gv + gsh + gsw + c, vload(gv + gsh + gsw + c) + a11 * gq);
  }
  for (int q = 0; c < D; ++c, ++q) {  // tail, fewer than kLanes channels, lane by lane
    const T x00 = v[c], x01 = v[vsw + c], x10 = v[vsh + c], x11 = v[vsh + vsw + c];
    const T gq = go[c];
    am[q] += gq * (w00 * x00 + w01 * x01 + w10 * x10 + w11 * x11);
    aw[q] += gq * (hh * (x01 - x00) + lh * (x11 - x10));
    ah[q] += gq * (hw * (x10 - x00) + lw * (x11 - x01));
    gv[c] += a00 * gq;
    gv[gsw + c] += a01 * gq;
    gv[gsh + c] += a10 * gq;
    gv[gsh + gsw + c] += a11 * gq;
  }
  *gm = vsum<T>(am);
  *gw = vsum<T>(aw);
  *gh = vsum<T>(ah);
}

// Pairwise sum of kLanes lanes (fixed order).
template <typename T>
VSSM_INLINE T lane_sum(const T* x) {
  T h4[4], h2[2];
  for (int q = 0; q < 4; ++q) h4[q] = x[q] + x[q + 4];
  for (int q = 0; q < 2; ++q) h2[q] = h4[q] + h4[q + 2];
  return h2[0] + h2[1];
}

// One task: image n, output rows [r0, r1), all groups. Scatters m*corner_weight*grad_out into gdst
// (contiguous (H, W, G*D), which this task owns and zeroes first) and writes the offset/mask
// gradients of its pixels (padding channels included).
template <typename T>
VSSM_INLINE void backward_task(const Geom& g, const T* kx, const T* ky, const T* value,
                               const T* offset_mask, const T* grad_out, T* gdst, T* grad_om,
                               int64_t n, int64_t r0, int64_t r1) {
  const int64_t K = g.K, D = g.D, H = g.H, W = g.W, C = g.G * g.D;
  const T s = static_cast<T>(g.offset_scale);
  std::fill(gdst, gdst + H * W * C, T(0));
  const T* vn = value + n * g.v_n;
  for (int64_t ho = r0; ho < r1; ++ho) {
    const T base_h = static_cast<T>(ho * g.sh - g.ph + g.dh * (g.kh - 1) / 2);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const T base_w = static_cast<T>(wo * g.sw - g.pw + g.dw * (g.kw - 1) / 2);
      const T* om = offset_mask + n * g.om_n + ho * g.om_h + wo * g.om_w;
      const T* go_pix = grad_out + n * g.go_n + ho * g.go_h + wo * g.go_w;
      T* gom_pix = grad_om + ((n * g.Ho + ho) * g.Wo + wo) * g.P;
      std::fill(gom_pix + 3 * g.G * K, gom_pix + g.P, T(0));  // padding channels
      for (int64_t gg = 0; gg < g.G; ++gg) {
        const T* omg = om + gg * 3 * K * g.om_c;
        const T* go = go_pix + gg * D;
        const T* vg = vn + gg * D;
        T* gdg = gdst + gg * D;
        T* gom = gom_pix + gg * 3 * K;
        for (int64_t k = 0; k < K; ++k) {
          const T dx = omg[(2 * k) * g.om_c], dy = omg[(2 * k + 1) * g.om_c];
          const T m = omg[(2 * K + k) * g.om_c];
          const T w = base_w + (kx[k] + dx) * s, h = base_h + (ky[k] + dy) * s;
          if (!(h > T(-1) && w > T(-1) && h < T(H) && w < T(W))) {
            gom[2 * k] = gom[2 * k + 1] = gom[2 * K + k] = T(0);
            continue;
          }
          const T hf = std::floor(h), wf = std::floor(w);
          const int64_t y0 = static_cast<int64_t>(hf), x0 = static_cast<int64_t>(wf);
          const T lh = h - hf, lw = w - wf, hh = T(1) - lh, hw = T(1) - lw;
          T gm, gw, gh;
          if (y0 >= 0 && x0 >= 0 && y0 + 1 < H && x0 + 1 < W) {
            // All four corners inside (the common case): one fused pass over the channels.
            interior_sample<T>(go, vg + y0 * g.v_h + x0 * g.v_w, g.v_w, g.v_h,
                               gdg + (y0 * W + x0) * C, C, W * C, m, lh, lw, D, &gm, &gw, &gh);
          } else {
            // Corner (y0+cy, x0+cx): weight, d weight/dw, d weight/dh.
            const int cy[4] = {0, 0, 1, 1}, cx[4] = {0, 1, 0, 1};
            const T cw[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
            const T cdw[4] = {-hh, hh, -lh, lh};
            const T cdh[4] = {-hw, -lw, hw, lw};
            T am[kLanes], aw[kLanes], ah[kLanes];
            for (int q = 0; q < kLanes; ++q) am[q] = aw[q] = ah[q] = T(0);
            for (int q = 0; q < 4; ++q) {
              const int64_t y = y0 + cy[q], x = x0 + cx[q];
              if (y < 0 || y >= H || x < 0 || x >= W) continue;
              corner<T>(go, vg + y * g.v_h + x * g.v_w, gdg + (y * W + x) * C, m * cw[q], cw[q],
                        cdw[q], cdh[q], D, am, aw, ah);
            }
            gm = lane_sum(am);
            gw = lane_sum(aw);
            gh = lane_sum(ah);
          }
          gom[2 * k] = m * s * gw;
          gom[2 * k + 1] = m * s * gh;
          gom[2 * K + k] = gm;
        }
      }
    }
  }
}

VSSM_CLONES void backward_task_f32(const Geom& g, const float* kx, const float* ky, const float* v,
                                   const float* om, const float* go, float* gdst, float* gom,
                                   int64_t n, int64_t r0, int64_t r1) {
  backward_task<float>(g, kx, ky, v, om, go, gdst, gom, n, r0, r1);
}
VSSM_CLONES void backward_task_f64(const Geom& g, const double* kx, const double* ky,
                                   const double* v, const double* om, const double* go,
                                   double* gdst, double* gom, int64_t n, int64_t r0, int64_t r1) {
  backward_task<double>(g, kx, ky, v, om, go, gdst, gom, n, r0, r1);
}
void backward_task_any(const Geom& g, const float* kx, const float* ky, const float* v,
                       const float* om, const float* go, float* gdst, float* gom, int64_t n,
                       int64_t r0, int64_t r1) {
  backward_task_f32(g, kx, ky, v, om, go, gdst, gom, n, r0, r1);
}
void backward_task_any(const Geom& g, const double* kx, const double* ky, const double* v,
                       const double* om, const double* go, double* gdst, double* gom, int64_t n,
                       int64_t r0, int64_t r1) {
  backward_task_f64(g, kx, ky, v, om, go, gdst, gom, n, r0, r1);
}

// Row slices per image: at least kBackwardTasks tasks in all, from the shape alone (never from the
// thread count, so results do not depend on it).
constexpr int64_t kBackwardTasks = 8;
int64_t backward_slices(const Geom& g) {
  if (g.N >= kBackwardTasks) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(g.Ho, (kBackwardTasks + g.N - 1) / g.N));
}

template <typename T>
void backward(const Geom& g, std::uintptr_t value, std::uintptr_t offset_mask,
              std::uintptr_t grad_out, std::uintptr_t grad_value, std::uintptr_t grad_offset_mask,
              int threads) {
  std::vector<T> kx, ky;
  kernel_points<T>(g, &kx, &ky);
  const T* v = reinterpret_cast<const T*>(value);
  const T* om = reinterpret_cast<const T*>(offset_mask);
  const T* go = reinterpret_cast<const T*>(grad_out);
  T* gv = reinterpret_cast<T*>(grad_value);         // contiguous (N, H, W, G*D)
  T* gom = reinterpret_cast<T*>(grad_offset_mask);  // contiguous (N, Ho, Wo, P)
  if (g.G * g.D == 0) {  // empty output: the offset/mask gradient is 0, grad_value is empty
    std::fill(gom, gom + g.N * g.Ho * g.Wo * g.P, T(0));
    return;
  }
  const int64_t image = g.H * g.W * g.G * g.D;
  const int64_t S = backward_slices(g);
  // Slice s > 0 of image n scatters into buffers[(s-1)*N + n]; slice 0 straight into grad_value.
  std::vector<T> buffers(S > 1 ? static_cast<size_t>((S - 1) * g.N * image) : 0);
  const int64_t work = g.N * g.Ho * g.Wo * g.G * g.K * g.D + g.N * image * S;
  const int nthreads = work >= (1 << 14) ? threads : 1;
  visionssm::parallel_for(g.N * S, nthreads, [&](int64_t task) {
    const int64_t n = task / S, s = task % S;
    const int64_t r0 = s * g.Ho / S, r1 = (s + 1) * g.Ho / S;
    T* gdst = s == 0 ? gv + n * image : buffers.data() + ((s - 1) * g.N + n) * image;
    backward_task_any(g, kx.data(), ky.data(), v, om, go, gdst, gom, n, r0, r1);
  });
  if (S > 1) {
    // Fixed-order reduction of the slice buffers, parallel over (n, input row).
    const int64_t row = g.W * g.G * g.D;
    visionssm::parallel_for(g.N * g.H, nthreads, [&](int64_t t) {
      const int64_t n = t / g.H, y = t % g.H;
      T* dst = gv + n * image + y * row;
      for (int64_t s = 1; s < S; ++s) {
        const T* b = buffers.data() + ((s - 1) * g.N + n) * image + y * row;
#pragma omp simd
        for (int64_t c = 0; c < row; ++c) dst[c] += b[c];
      }
    });
  }
}

// ------------------------------------------------------------------------------------------------
// Entry points

Geom make_geom(const visionssm::dcnv4::Params& p, const char* who) {
  visionssm::dcnv4::check_geometry(p, who);
  Geom g{};
  g.N = p.batch; g.H = p.height; g.W = p.width; g.Ho = p.out_height; g.Wo = p.out_width;
  g.P = p.offset_channels;
  g.kh = p.kernel_h; g.kw = p.kernel_w; g.sh = p.stride_h; g.sw = p.stride_w;
  g.ph = p.pad_h; g.pw = p.pad_w; g.dh = p.dilation_h; g.dw = p.dilation_w;
  g.G = p.group;
  g.D = p.group_channels;
  g.remove_center = p.remove_center;
  g.offset_scale = p.offset_scale;
  g.K = p.points();
  g.v_n = p.value_strides[0]; g.v_h = p.value_strides[1]; g.v_w = p.value_strides[2];
  g.om_n = p.offset_mask_strides[0]; g.om_h = p.offset_mask_strides[1];
  g.om_w = p.offset_mask_strides[2]; g.om_c = p.offset_mask_strides[3];
  g.go_n = p.grad_output_strides[0]; g.go_h = p.grad_output_strides[1]; g.go_w = p.grad_output_strides[2];
  return g;
}

using visionssm::dcnv4::DType;
constexpr auto kCpuDTypes = {DType::kFloat32, DType::kFloat64};

void forward_entry(const pybind11::dict& args) {
  const auto p = visionssm::dcnv4::params_from_dict(args, "dcnv4_cpu.forward", kCpuDTypes);
  const Geom g = make_geom(p, "dcnv4_cpu.forward");
  if (g.N * g.Ho * g.Wo * g.G * g.D == 0) return;  // empty output (null pointers allowed)
  VSSM_CHECK(p.value && p.offset_mask && p.out, "value, offset_mask and out are required");
  pybind11::gil_scoped_release release;
  if (p.dtype == DType::kFloat32) return forward<float>(g, p.value, p.offset_mask, p.out, p.threads);
  forward<double>(g, p.value, p.offset_mask, p.out, p.threads);
}

void backward_entry(const pybind11::dict& args) {
  const auto p = visionssm::dcnv4::params_from_dict(args, "dcnv4_cpu.backward", kCpuDTypes);
  const Geom g = make_geom(p, "dcnv4_cpu.backward");
  VSSM_CHECK(p.grad_output_strides[3] == 1, "grad_output must have channel stride 1");
  if (g.N * g.Ho * g.Wo == 0) return;  // nothing to write (null pointers allowed)
  VSSM_CHECK(g.P == 0 || (p.offset_mask && p.grad_offset_mask), "offset_mask and grad_offset_mask are required");
  pybind11::gil_scoped_release release;
  if (p.dtype == DType::kFloat32)
    return backward<float>(g, p.value, p.offset_mask, p.grad_output, p.grad_value, p.grad_offset_mask, p.threads);
  backward<double>(g, p.value, p.offset_mask, p.grad_output, p.grad_value, p.grad_offset_mask, p.threads);
}

}  // namespace

PYBIND11_MODULE(dcnv4_cpu, m) {
  namespace py = pybind11;
  m.doc() = "DCNv4 forward/backward CPU kernels (channel-last value, packed offset_mask).";
  m.def("forward", &forward_entry,
        "out (N, Ho, Wo, G*D) contiguous <- dcnv4(value, offset_mask) (params: dcnv4_params.h)",
        py::arg("params"));
  m.def("backward", &backward_entry,
        "grad_value (N, H, W, G*D) and grad_offset_mask (N, Ho, Wo, P), both contiguous and fully "
        "written (padding channels get 0) (params: dcnv4_params.h)",
        py::arg("params"));
  m.def("max_threads", &visionssm::max_threads, "OpenMP threads available to kernels");
}
