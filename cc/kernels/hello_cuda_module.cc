// pybind11 front of the hello-world CUDA kernel. Host-only code: compiled by the C++ compiler,
// linked with the nvcc-built objects and the static CUDA runtime.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/hello_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(hello_cuda, m) {
  m.doc() = "Hello-world CUDA kernel of the VisionSSM build chain.";
  m.def(
      "axpy",
      [](int64_t n, float alpha, std::uintptr_t x, int64_t xs, std::uintptr_t y, int64_t ys,
         std::uintptr_t stream) {
        std::string err;
        {
          py::gil_scoped_release release;
          err = visionssm::hello::axpy_f32(n, alpha, x, xs, y, ys, stream);
        }
        if (!err.empty()) throw std::runtime_error("hello_cuda.axpy: CUDA error: " + err);
      },
      "y += alpha * x on float32 device buffers", py::arg("n"), py::arg("alpha"), py::arg("x"),
      py::arg("x_stride"), py::arg("y"), py::arg("y_stride"), py::arg("stream"));
  m.def("device_count", []() {
    std::string err;
    int count = visionssm::hello::device_count(&err);
    return py::make_tuple(count, err);
  }, "(count, error): CUDA devices visible to the runtime; count -1 with the error if none usable");
  m.def("cutlass_version", &visionssm::hello::cutlass_version);
}
