// VMamba cross-scan / cross-merge (specs/vmamba_kernels.md §3.1) as fused CPU gather/scatter-add.
//
// For an H x W map, L = H*W, raster position (h, w) goes to sequence index
//   k=0: l0 = h*W + w      k=1: l1 = w*H + h      k=2: L-1-l0      k=3: L-1-l1.
// scan:  ys[b, k, c, l_k(h, w)] = x[b, c, h, w]                         (B,C,H,W) -> (B,4,C,L)
// merge: y[b, c, h*W + w] = (ys0[l0] + ys2[L-1-l0]) + (ys1[l1] + ys3[L-1-l1])   (B,4,C,L) -> (B,C,L)
// merge is the exact adjoint of scan. The summation order of merge is the one of the PyTorch
// reference (pairs first), so float32 results agree bitwise with it.
//
// One task per (b, c) plane: it reads its input plane(s) once and writes its output row(s) once
// (nothing is shared between tasks). Transposes are blocked in 16x16 tiles so large planes stay in
// cache. Inputs with any element strides are accepted; a plane that is not contiguous is gathered
// into a per-thread buffer first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/clones.h"
#include "cc/kernels/common/parallel.h"
#include "cc/kernels/common/scratch.h"
#include "cc/kernels/cross_scan/cross_scan_params_dict.h"

namespace {

constexpr int64_t kTile = 16;

// Returns a pointer to the (rows x cols) plane at p with strides (rs, cs), contiguous: p itself if it
// already is, otherwise a copy in buf.
template <typename T>
VSSM_INLINE const T* contiguous_plane(const T* p, int64_t rows, int64_t cols, int64_t rs,
                                      int64_t cs, T* buf) {
  if (cs == 1 && (rs == cols || rows == 1)) return p;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) buf[r * cols + c] = p[r * rs + c * cs];
  return buf;
}

// One (b, c) plane of the scan. src: contiguous H x W. o0..o3: the four output rows (length L).
template <typename T>
VSSM_INLINE void scan_plane(const T* __restrict src, int64_t H, int64_t W, T* __restrict o0,
                            T* __restrict o1, T* __restrict o2, T* __restrict o3) {
  const int64_t L = H * W;
  // k = 0 and k = 2: copy and reversed copy.
  for (int64_t l = 0; l < L; ++l) o0[l] = src[l];
  T* __restrict r2 = o2 + (L - 1);
  for (int64_t l = 0; l < L; ++l) r2[-l] = src[l];
  // k = 1: transpose o1[w*H + h] = src[h*W + w], in tiles; k = 3: o1 reversed.
  for (int64_t h0 = 0; h0 < H; h0 += kTile) {
    const int64_t h1 = std::min(H, h0 + kTile);
    for (int64_t w0 = 0; w0 < W; w0 += kTile) {
      const int64_t w1 = std::min(W, w0 + kTile);
      for (int64_t w = w0; w < w1; ++w)
        for (int64_t h = h0; h < h1; ++h) o1[w * H + h] = src[h * W + w];
    }
  }
  T* __restrict r3 = o3 + (L - 1);
  for (int64_t l = 0; l < L; ++l) r3[-l] = o1[l];
}

// One (b, c) plane of the merge. y0..y3: the four input rows (length L, contiguous); tmp: L scratch.
template <typename T>
VSSM_INLINE void merge_plane(const T* __restrict y0, const T* __restrict y1, const T* __restrict y2,
                             const T* __restrict y3, int64_t H, int64_t W, T* __restrict out,
                             T* __restrict tmp) {
  const int64_t L = H * W;
  const T* __restrict r2 = y2 + (L - 1);
  const T* __restrict r3 = y3 + (L - 1);
  for (int64_t l = 0; l < L; ++l) out[l] = y0[l] + r2[-l];
  for (int64_t l = 0; l < L; ++l) tmp[l] = y1[l] + r3[-l];  // in l1 order: tmp[w*H + h]
  for (int64_t h0 = 0; h0 < H; h0 += kTile) {
    const int64_t h1 = std::min(H, h0 + kTile);
    for (int64_t w0 = 0; w0 < W; w0 += kTile) {
      const int64_t w1 = std::min(W, w0 + kTile);
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) out[h * W + w] += tmp[w * H + h];
    }
  }
}

struct ScanArgs {
  int64_t B, C, H, W;
  int64_t sb, sc, sh, sw;  // x strides (scan) or y strides for b, c, h, w (merge; sk separately)
  int64_t sk;
};

VSSM_CLONES void scan_plane_f32(const float* src, int64_t H, int64_t W, float* o0, float* o1,
                                float* o2, float* o3) {
  scan_plane<float>(src, H, W, o0, o1, o2, o3);
}
VSSM_CLONES void scan_plane_f64(const double* src, int64_t H, int64_t W, double* o0, double* o1,
                                double* o2, double* o3) {
  scan_plane<double>(src, H, W, o0, o1, o2, o3);
}
void scan_plane_any(const float* s, int64_t H, int64_t W, float* a, float* b, float* c, float* d) {
  scan_plane_f32(s, H, W, a, b, c, d);
}
void scan_plane_any(const double* s, int64_t H, int64_t W, double* a, double* b, double* c,
                    double* d) {
  scan_plane_f64(s, H, W, a, b, c, d);
}
VSSM_CLONES void merge_plane_f32(const float* y0, const float* y1, const float* y2, const float* y3,
                                 int64_t H, int64_t W, float* out, float* tmp) {
  merge_plane<float>(y0, y1, y2, y3, H, W, out, tmp);
}
VSSM_CLONES void merge_plane_f64(const double* y0, const double* y1, const double* y2,
                                 const double* y3, int64_t H, int64_t W, double* out, double* tmp) {
  merge_plane<double>(y0, y1, y2, y3, H, W, out, tmp);
}
void merge_plane_any(const float* a, const float* b, const float* c, const float* d, int64_t H,
                     int64_t W, float* out, float* tmp) {
  merge_plane_f32(a, b, c, d, H, W, out, tmp);
}
void merge_plane_any(const double* a, const double* b, const double* c, const double* d, int64_t H,
                     int64_t W, double* out, double* tmp) {
  merge_plane_f64(a, b, c, d, H, W, out, tmp);
}

int threads_for(int64_t elements, int threads) { return elements >= (1 << 15) ? threads : 1; }

template <typename T>
void scan(const ScanArgs& a, std::uintptr_t x, std::uintptr_t out, int threads) {
  const T* xp = reinterpret_cast<const T*>(x);
  T* yp = reinterpret_cast<T*>(out);  // contiguous (B, 4, C, L)
  const int64_t L = a.H * a.W;
  visionssm::parallel_for(a.B * a.C, threads_for(a.B * a.C * L, threads), [&](int64_t p) {
    T* buf = visionssm::scratch<T>(L);
    const int64_t b = p / a.C, c = p % a.C;
    const T* src = contiguous_plane(xp + b * a.sb + c * a.sc, a.H, a.W, a.sh, a.sw, buf);
    T* o = yp + (b * 4 * a.C + c) * L;
    const int64_t ks = a.C * L;
    scan_plane_any(src, a.H, a.W, o, o + ks, o + 2 * ks, o + 3 * ks);
  });
}

template <typename T>
void merge(const ScanArgs& a, std::uintptr_t y, std::uintptr_t out, int threads) {
  const T* yp = reinterpret_cast<const T*>(y);
  T* op = reinterpret_cast<T*>(out);  // contiguous (B, C, L)
  const int64_t L = a.H * a.W;
  visionssm::parallel_for(a.B * a.C, threads_for(a.B * a.C * L, threads), [&](int64_t p) {
    T* buf = visionssm::scratch<T>(5 * L);
    const int64_t b = p / a.C, c = p % a.C;
    const T* rows[4];
    for (int k = 0; k < 4; ++k)
      rows[k] = contiguous_plane(yp + b * a.sb + k * a.sk + c * a.sc, a.H, a.W, a.sh, a.sw,
                                 buf + (k + 1) * L);
    merge_plane_any(rows[0], rows[1], rows[2], rows[3], a.H, a.W, op + p * L, buf);
  });
}

namespace cs = visionssm::cross_scan;

void scan_entry(const pybind11::dict& d, int threads) {
  const cs::Params p = cs::params_from_dict(d, 4, "cross_scan_cpu.scan");
  const auto& st = p.input_strides;
  VSSM_CHECK(p.batch >= 0 && p.channels >= 0 && p.height >= 1 && p.width >= 1, "bad sizes B=", p.batch,
             " C=", p.channels, " H=", p.height, " W=", p.width);
  pybind11::gil_scoped_release release;  // the dict is read; the kernel needs no Python
  const ScanArgs a{p.batch, p.channels, p.height, p.width, st[0], st[1], st[2], st[3], 0};
  if (p.dtype == cs::DType::kFloat32) return scan<float>(a, p.input, p.output, threads);
  if (p.dtype == cs::DType::kFloat64) return scan<double>(a, p.input, p.output, threads);
  visionssm::fail("cross_scan: the CPU kernel takes float32 or float64");
}

void merge_entry(const pybind11::dict& d, int threads) {
  const cs::Params p = cs::params_from_dict(d, 5, "cross_scan_cpu.merge");
  const auto& st = p.input_strides;
  VSSM_CHECK(p.batch >= 0 && p.channels >= 0 && p.height >= 1 && p.width >= 1, "bad sizes B=", p.batch,
             " C=", p.channels, " H=", p.height, " W=", p.width);
  pybind11::gil_scoped_release release;  // the dict is read; the kernel needs no Python
  const ScanArgs a{p.batch, p.channels, p.height, p.width, st[0], st[2], st[3], st[4], st[1]};
  if (p.dtype == cs::DType::kFloat32) return merge<float>(a, p.input, p.output, threads);
  if (p.dtype == cs::DType::kFloat64) return merge<double>(a, p.input, p.output, threads);
  visionssm::fail("cross_merge: the CPU kernel takes float32 or float64");
}

}  // namespace

PYBIND11_MODULE(cross_scan_cpu, m) {
  namespace py = pybind11;
  m.doc() = "VMamba cross-scan (B,C,H,W)->(B,4,C,L) and its adjoint cross-merge, CPU kernels.";
  m.def("scan", &scan_entry, "out (B, 4, C, H*W) contiguous <- cross_scan(x (B, C, H, W), any strides); "
        "params: cross_scan_params.h", py::arg("params"), py::arg("threads") = 0);
  m.def("merge", &merge_entry, "out (B, C, H*W) contiguous <- cross_merge(y (B, 4, C, H, W), any strides); "
        "params: cross_scan_params.h", py::arg("params"), py::arg("threads") = 0);
  m.def("max_threads", &visionssm::max_threads, "OpenMP threads available to kernels");
}
