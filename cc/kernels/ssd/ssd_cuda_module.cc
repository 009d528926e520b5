// pybind11 front of the SSD CUDA kernels: Python fills one dict whose keys are the fields of Params
// (ssd_params_dict.h, shared with the CPU module), so the extension never links libtorch.
// Host-only code; the kernels are linked from the nvcc-built objects. Not yet run on a GPU.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cc/kernels/ssd/ssd_launch.h"
#include "cc/kernels/ssd/ssd_layout.h"
#include "cc/kernels/ssd/ssd_params_dict.h"

namespace py = pybind11;
namespace sd = visionssm::ssd;

namespace {

sd::Params to_params(const py::dict& args) {
  return sd::params_from_dict(args, "ssd_cuda", {sd::DType::kFloat32, sd::DType::kFloat16, sd::DType::kBFloat16});
}

void run(const py::dict& args, std::uintptr_t stream, bool backward) {
  const sd::Params p = to_params(args);
  sd::check_params(p, backward);  // invalid_argument -> ValueError, before releasing the GIL
  std::string err;
  {
    py::gil_scoped_release release;
    err = backward ? sd::backward(p, stream) : sd::forward(p, stream);
  }
  if (!err.empty())
    throw std::runtime_error(std::string("ssd_cuda.") + (backward ? "backward" : "forward") + ": CUDA error: " + err);
}

// The geometry and the float32 workspace sizes (elements) for these sizes, so Python allocates
// exactly what the kernels index.
py::dict layout(const py::dict& args) {
  const sd::Geometry g = sd::Geometry::of(to_params(args));
  const sd::Workspace w = sd::Workspace::of(g);
  py::dict out;
  out["chunk"] = g.Q, out["chunks"] = g.chunks, out["qblocks"] = g.qblocks, out["pblocks"] = g.pblocks;
  out["nblocks"] = g.nblocks, out["state_blocks"] = g.state_blocks;
  out["ws_dt"] = w.dt, out["ws_cumsum"] = w.cumsum, out["ws_states"] = w.states, out["ws_extra"] = w.extra;
  out["ws_xz"] = w.xz, out["ws_dcumsum"] = w.dcumsum, out["dA"] = w.dA, out["dbias"] = w.dbias, out["dD"] = w.dD;
  return out;
}

}  // namespace

PYBIND11_MODULE(ssd_cuda, m) {
  m.doc() = "Mamba-2 chunked SSD and VSSD non-causal SSD: CUDA forward/backward on tensor cores. Not yet run on a GPU.";
  m.attr("max_chunk") = sd::kMaxChunk;
  m.def("layout", &layout, py::arg("params"), "chunk geometry and workspace sizes (float32 elements)");
  m.def("check", [](const py::dict& a, bool backward) { sd::check_params(to_params(a), backward); },
        py::arg("params"), py::arg("backward") = false, "raise ValueError if the launch parameters are invalid");
  m.def("forward", [](const py::dict& a, std::uintptr_t stream) { run(a, stream, false); }, py::arg("params"),
        py::arg("stream"), "launch the forward on `stream` (cudaStream_t as integer)");
  m.def("backward", [](const py::dict& a, std::uintptr_t stream) { run(a, stream, true); }, py::arg("params"),
        py::arg("stream"), "launch the backward on `stream`");
}
