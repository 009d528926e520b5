// pybind11 front of the DCNv4 CUDA kernels (raw pointers + stream; params: dcnv4_params.h).
// Compiled, not yet run on a GPU.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cc/kernels/dcnv4/dcnv4_cuda.h"
#include "cc/kernels/dcnv4/dcnv4_params_dict.h"

namespace py = pybind11;
namespace dc = visionssm::dcnv4;

namespace {

constexpr auto kCudaDTypes = {dc::DType::kFloat32, dc::DType::kFloat16, dc::DType::kBFloat16};

dc::Params parse(const py::dict& d, const char* who) { return dc::params_from_dict(d, who, kCudaDTypes); }

void run(const dc::Params& p, std::string (*fn)(const dc::Params&), const char* who) {
  std::string err;
  {
    py::gil_scoped_release release;
    err = fn(p);
  }
  if (!err.empty()) throw std::runtime_error(std::string(who) + ": CUDA error: " + err);
}

}  // namespace

PYBIND11_MODULE(dcnv4_cuda, m) {
  m.doc() = "DCNv4 forward/backward CUDA kernels (channel-last, 8-channel vector loads, fp32 accumulation). "
            "Not yet run on a GPU.";
  m.def(
      "forward", [](const py::dict& d) { run(parse(d, "dcnv4_cuda.forward"), &dc::forward, "dcnv4_cuda.forward"); },
      py::arg("params"), "out (N, Ho, Wo, G*D) contiguous <- dcnv4(value, offset_mask)");
  m.def(
      "backward", [](const py::dict& d) { run(parse(d, "dcnv4_cuda.backward"), &dc::backward, "dcnv4_cuda.backward"); },
      py::arg("params"),
      "grad_value (N, H, W, G*D) and grad_offset_mask (N, Ho, Wo, P), contiguous, fully written; needs a "
      "workspace of workspace_bytes(params) bytes");
  m.def(
      "workspace_bytes", [](const py::dict& d) { return dc::backward_workspace_bytes(parse(d, "dcnv4_cuda.workspace_bytes")); },
      py::arg("params"), "scratch bytes of the backward (deterministic: the sort; atomic: a float32 grad_value)");
  m.def(
      "check",
      [](const py::dict& d, bool backward) {
        const dc::Params p = parse(d, "dcnv4_cuda.check");
        backward ? dc::check_backward(p) : dc::check_forward(p);
      },
      py::arg("params"), py::arg("backward"), "the launch's argument checks alone (raises ValueError)");
  m.def(
      "vector_width", [](const py::dict& d, bool backward) { return dc::vector_width(parse(d, "dcnv4_cuda.vector_width"), backward); },
      py::arg("params"), py::arg("backward"), "channels per thread: 8 (16-byte loads) or 1");
}
