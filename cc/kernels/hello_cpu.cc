// Smallest end-to-end native kernel: y[i*ys] += alpha * x[i*xs] on float32 or float64 buffers
// given as raw addresses (torch's data_ptr()), so the module never links libtorch.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/parallel.h"

namespace {

template <typename T>
void axpy(int64_t n, double alpha, std::uintptr_t x, int64_t x_stride, std::uintptr_t y,
          int64_t y_stride, int threads) {
  const T* xp = reinterpret_cast<const T*>(x);
  T* yp = reinterpret_cast<T*>(y);
  const T a = static_cast<T>(alpha);
  visionssm::parallel_for(n, n >= (1 << 16) ? threads : 1,
                          [&](int64_t i) { yp[i * y_stride] += a * xp[i * x_stride]; });
}

void axpy_dispatch(const std::string& dtype, int64_t n, double alpha, std::uintptr_t x,
                   int64_t x_stride, std::uintptr_t y, int64_t y_stride, int threads) {
  VSSM_CHECK(n >= 0, "n must be >= 0, got ", n);
  if (dtype == "float32") return axpy<float>(n, alpha, x, x_stride, y, y_stride, threads);
  if (dtype == "float64") return axpy<double>(n, alpha, x, x_stride, y, y_stride, threads);
  visionssm::fail("axpy: dtype must be float32 or float64, got ", dtype);
}

}  // namespace

PYBIND11_MODULE(hello_cpu, m) {
  m.doc() = "Hello-world CPU kernel of the VisionSSM build chain.";
  m.def("axpy", &axpy_dispatch, "y += alpha * x over n strided elements",
        pybind11::arg("dtype"), pybind11::arg("n"), pybind11::arg("alpha"), pybind11::arg("x"),
        pybind11::arg("x_stride"), pybind11::arg("y"), pybind11::arg("y_stride"),
        pybind11::arg("threads") = 0, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("max_threads", &visionssm::max_threads, "OpenMP threads available to kernels");
}
