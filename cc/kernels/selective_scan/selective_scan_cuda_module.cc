// pybind11 front of the selective-scan CUDA kernels: Python fills one dict whose keys are the
// fields of Params (pointers as integers, strides in elements), so the extension never links
// libtorch. Host-only code; the kernels are linked from the nvcc-built objects.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/selective_scan/selective_scan_launch.h"

namespace py = pybind11;
namespace ss = visionssm::selective_scan;

namespace {

using Setter = std::function<void(ss::Params&, py::handle)>;

template <typename T>
Setter ptr(T ss::Params::*field) {
  return [field](ss::Params& p, py::handle v) {
    p.*field = reinterpret_cast<T>(static_cast<std::uintptr_t>(v.cast<std::uintptr_t>()));
  };
}

Setter i64(int64_t ss::Params::*field) {
  return [field](ss::Params& p, py::handle v) { p.*field = v.cast<int64_t>(); };
}

Setter flag(bool ss::Params::*field) {
  return [field](ss::Params& p, py::handle v) { p.*field = v.cast<bool>(); };
}

const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> table = {
      {"batch", i64(&ss::Params::batch)}, {"dim", i64(&ss::Params::dim)},
      {"seqlen", i64(&ss::Params::seqlen)}, {"dstate", i64(&ss::Params::dstate)},
      {"groups", i64(&ss::Params::groups)}, {"softplus", flag(&ss::Params::softplus)},
      {"cross2d", flag(&ss::Params::cross2d)}, {"height", i64(&ss::Params::height)},
      {"width", i64(&ss::Params::width)},
      {"u", ptr(&ss::Params::u)}, {"u_batch_stride", i64(&ss::Params::u_batch_stride)},
      {"u_dim_stride", i64(&ss::Params::u_dim_stride)}, {"u_h_stride", i64(&ss::Params::u_h_stride)},
      {"u_w_stride", i64(&ss::Params::u_w_stride)},
      {"delta", ptr(&ss::Params::delta)}, {"delta_batch_stride", i64(&ss::Params::delta_batch_stride)},
      {"delta_dim_stride", i64(&ss::Params::delta_dim_stride)},
      {"A", ptr(&ss::Params::A)},
      {"B", ptr(&ss::Params::B)}, {"B_batch_stride", i64(&ss::Params::B_batch_stride)},
      {"B_group_stride", i64(&ss::Params::B_group_stride)}, {"B_state_stride", i64(&ss::Params::B_state_stride)},
      {"C", ptr(&ss::Params::C)}, {"C_batch_stride", i64(&ss::Params::C_batch_stride)},
      {"C_group_stride", i64(&ss::Params::C_group_stride)}, {"C_state_stride", i64(&ss::Params::C_state_stride)},
      {"D", ptr(&ss::Params::D)}, {"delta_bias", ptr(&ss::Params::delta_bias)},
      {"z", ptr(&ss::Params::z)}, {"z_batch_stride", i64(&ss::Params::z_batch_stride)},
      {"z_dim_stride", i64(&ss::Params::z_dim_stride)},
      {"y", ptr(&ss::Params::y)}, {"last_state", ptr(&ss::Params::last_state)}, {"ckpt", ptr(&ss::Params::ckpt)},
      {"dout", ptr(&ss::Params::dout)}, {"dout_batch_stride", i64(&ss::Params::dout_batch_stride)},
      {"dout_dim_stride", i64(&ss::Params::dout_dim_stride)}, {"dout_h_stride", i64(&ss::Params::dout_h_stride)},
      {"dout_w_stride", i64(&ss::Params::dout_w_stride)},
      {"du", ptr(&ss::Params::du)}, {"ddelta", ptr(&ss::Params::ddelta)}, {"dz", ptr(&ss::Params::dz)},
      {"dA_part", ptr(&ss::Params::dA_part)}, {"dB_part", ptr(&ss::Params::dB_part)},
      {"dC_part", ptr(&ss::Params::dC_part)}, {"dD_part", ptr(&ss::Params::dD_part)},
      {"dbias_part", ptr(&ss::Params::dbias_part)},
  };
  return table;
}

ss::Params to_params(const py::dict& args) {
  ss::Params p;
  bool have_dtype = false;
  for (const auto& item : args) {
    const std::string key = item.first.cast<std::string>();
    if (key == "dtype") {
      const std::string name = item.second.cast<std::string>();
      if (name == "float32") p.dtype = ss::DType::kFloat32;
      else if (name == "float16") p.dtype = ss::DType::kFloat16;
      else if (name == "bfloat16") p.dtype = ss::DType::kBFloat16;
      else visionssm::fail("selective_scan_cuda: dtype must be float32, float16 or bfloat16, got ", name);
      have_dtype = true;
      continue;
    }
    const auto it = setters().find(key);
    if (it == setters().end()) visionssm::fail("selective_scan_cuda: unknown parameter '", key, "'");
    it->second(p, item.second);
  }
  if (!have_dtype) visionssm::fail("selective_scan_cuda: parameter 'dtype' is required");
  return p;
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
