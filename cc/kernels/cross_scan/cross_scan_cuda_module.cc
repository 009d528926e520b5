// pybind11 front of the standalone cross-scan/cross-merge CUDA kernels (raw pointers + stream).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/cross_scan/cross_scan_cuda.h"

namespace py = pybind11;
namespace cs = visionssm::cross_scan;

namespace {

cs::DType parse_dtype(const std::string& name) {
  if (name == "float32") return cs::DType::kFloat32;
  if (name == "float16") return cs::DType::kFloat16;
  if (name == "bfloat16") return cs::DType::kBFloat16;
  if (name == "float64") return cs::DType::kFloat64;
  visionssm::fail("cross_scan_cuda: dtype must be float32, float16, bfloat16 or float64, got ", name);
}

void raise_if(const std::string& err, const char* op) {
  if (!err.empty()) throw std::runtime_error(std::string("cross_scan_cuda.") + op + ": CUDA error: " + err);
}

}  // namespace

PYBIND11_MODULE(cross_scan_cuda, m) {
  m.doc() = "Standalone cross-scan/cross-merge CUDA kernels. Not yet run on a GPU.";
  m.def(
      "scan",
      [](const std::string& dtype, std::uintptr_t x, std::vector<int64_t> x_strides, std::uintptr_t out,
         int64_t B, int64_t C, int64_t H, int64_t W, std::uintptr_t stream) {
        if (x_strides.size() != 4) visionssm::fail("cross_scan_cuda.scan: x_strides must have 4 entries");
        const cs::DType t = parse_dtype(dtype);
        std::string err;
        {
          py::gil_scoped_release release;
          err = cs::scan(t, x, x_strides.data(), out, B, C, H, W, stream);
        }
        raise_if(err, "scan");
      },
      py::arg("dtype"), py::arg("x"), py::arg("x_strides"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("H"),
      py::arg("W"), py::arg("stream"), "x (B, C, H, W), any strides -> out (B, 4, C, H*W) contiguous");
  m.def(
      "merge",
      [](const std::string& dtype, std::uintptr_t y, std::uintptr_t out, int64_t B, int64_t C, int64_t H, int64_t W,
         std::uintptr_t stream) {
        const cs::DType t = parse_dtype(dtype);
        std::string err;
        {
          py::gil_scoped_release release;
          err = cs::merge(t, y, out, B, C, H, W, stream);
        }
        raise_if(err, "merge");
      },
      py::arg("dtype"), py::arg("y"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"),
      py::arg("stream"), "y (B, 4, C, H*W) contiguous -> out (B, C, H*W) contiguous");
  m.def("num_blocks", &cs::num_blocks, "CTAs of one launch (32 x 32 tiles x C x B)");
}
