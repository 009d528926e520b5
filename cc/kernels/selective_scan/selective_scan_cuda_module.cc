// pybind11 front of the selective-scan CUDA kernels: Python fills one dict whose keys are the
// fields of Params (selective_scan_params_dict.h, shared with the CPU module), so the extension
// never links libtorch. Host-only code; the kernels are linked from the nvcc-built objects.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/selective_scan/selective_scan_launch.h"
#include "cc/kernels/selective_scan/selective_scan_params_dict.h"

namespace py = pybind11;
namespace ss = visionssm::selective_scan;

namespace {

ss::Params to_params(const py::dict& args) {
  return ss::params_from_dict(args, "selective_scan_cuda",
                              {ss::DType::kFloat32, ss::DType::kFloat16, ss::DType::kBFloat16});
}

void run(const py::dict& args, std::uintptr_t stream, bool backward) {
  const ss::Params p = to_params(args);
  ss::check_params(p, backward);  // invalid_argument -> ValueError, before releasing the GIL
  std::string err;
  {
    py::gil_scoped_release release;
    err = backward ? ss::backward(p, stream) : ss::forward(p, stream);
  }
  if (!err.empty())
    throw std::runtime_error(std::string("selective_scan_cuda.") + (backward ? "backward" : "forward") +
                             ": CUDA error: " + err);
}

}  // namespace

PYBIND11_MODULE(selective_scan_cuda, m) {
  m.doc() = "Selective-scan CUDA kernels (forward/backward, N = 1 and tiled paths, cross-2D). Not yet run on a GPU.";
  m.def("chunk_len", &ss::chunk_len, "sequence positions per chunk: ckpt has ceil(L / chunk_len()) states per row");
  m.def("bwd_slices", &ss::bwd_slices, py::arg("dim"), py::arg("groups"), py::arg("dstate"),
        "leading size of dB_part/dC_part (CTAs per group in the backward)");
  m.def("fwd_blocks", [](const py::dict& a) { return ss::fwd_blocks(to_params(a)); }, "CTAs of the forward launch");
  m.def("bwd_blocks", [](const py::dict& a) { return ss::bwd_blocks(to_params(a)); }, "CTAs of the backward launch");
  m.def("check", [](const py::dict& a, bool backward) { ss::check_params(to_params(a), backward); },
        py::arg("params"), py::arg("backward") = false, "raise ValueError if the launch parameters are invalid");
  m.def("forward", [](const py::dict& a, std::uintptr_t stream) { run(a, stream, false); }, py::arg("params"),
        py::arg("stream"), "launch the forward on `stream` (cudaStream_t as integer)");
  m.def("backward", [](const py::dict& a, std::uintptr_t stream) { run(a, stream, true); }, py::arg("params"),
        py::arg("stream"), "launch the backward on `stream`");
}
