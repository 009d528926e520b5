// pybind11 front of the standalone cross-scan/cross-merge CUDA kernels (raw pointers + stream).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/cross_scan/cross_scan_cuda.h"
#include "cc/kernels/cross_scan/cross_scan_params_dict.h"

namespace py = pybind11;
namespace cs = visionssm::cross_scan;

namespace {

void raise_if(const std::string& err, const char* op) {
  if (!err.empty()) throw std::runtime_error(std::string("cross_scan_cuda.") + op + ": CUDA error: " + err);
}

}  // namespace

PYBIND11_MODULE(cross_scan_cuda, m) {
  m.doc() = "Standalone cross-scan/cross-merge CUDA kernels. Not yet run on a GPU.";
  m.def(
      "scan",
      [](const py::dict& d) {
        const cs::Params p = cs::params_from_dict(d, 4, "cross_scan_cuda.scan");
        std::string err;
        {
          py::gil_scoped_release release;
          err = cs::scan(p.dtype, p.input, p.input_strides.data(), p.output, p.batch, p.channels, p.height, p.width,
                         p.stream);
        }
        raise_if(err, "scan");
      },
      py::arg("params"), "x (B, C, H, W), any strides -> out (B, 4, C, H*W) contiguous (params: cross_scan_params.h)");
  m.def(
      "merge",
      [](const py::dict& d) {
        const cs::Params p = cs::params_from_dict(d, 5, "cross_scan_cuda.merge");
        const int64_t L = p.height * p.width;
        const int64_t size[5] = {p.batch, 4, p.channels, p.height, p.width};
        const int64_t dense[5] = {4 * p.channels * L, p.channels * L, L, p.width, 1};
        for (int i = 0; i < 5; ++i)  // the kernel reads y densely (a size-1 dim's stride is irrelevant)
          if (size[i] > 1 && p.input_strides[i] != dense[i])
            visionssm::fail("cross_scan_cuda.merge: y must be contiguous (B, 4, C, H, W)");
        std::string err;
        {
          py::gil_scoped_release release;
          err = cs::merge(p.dtype, p.input, p.output, p.batch, p.channels, p.height, p.width, p.stream);
        }
        raise_if(err, "merge");
      },
      py::arg("params"), "y (B, 4, C, H, W) contiguous -> out (B, C, H*W) contiguous (params: cross_scan_params.h)");
  m.def("num_blocks", &cs::num_blocks, "CTAs of one launch (32 x 32 tiles x C x B)");
}
