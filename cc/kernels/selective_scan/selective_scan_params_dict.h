// Params from the dict Python fills (keys = field names, pointers as integers, strides in
// elements), shared by the CPU and CUDA pybind11 modules so both read one format. Host-only.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/selective_scan/selective_scan_params.h"

namespace visionssm::selective_scan {
namespace params_dict {

namespace py = pybind11;
using Setter = std::function<void(Params&, py::handle)>;

template <typename T>
Setter ptr(T Params::*field) {
  return [field](Params& p, py::handle v) {
    p.*field = reinterpret_cast<T>(static_cast<std::uintptr_t>(v.cast<std::uintptr_t>()));
  };
}

inline Setter i64(int64_t Params::*field) {
  return [field](Params& p, py::handle v) { p.*field = v.cast<int64_t>(); };
}

inline Setter flag(bool Params::*field) {
  return [field](Params& p, py::handle v) { p.*field = v.cast<bool>(); };
}

// Every field Python may set (chunk/nchunks are the launcher's).
inline const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> table = {
      {"batch", i64(&Params::batch)}, {"dim", i64(&Params::dim)},
      {"seqlen", i64(&Params::seqlen)}, {"dstate", i64(&Params::dstate)},
      {"groups", i64(&Params::groups)}, {"softplus", flag(&Params::softplus)},
      {"cross2d", flag(&Params::cross2d)}, {"height", i64(&Params::height)},
      {"width", i64(&Params::width)}, {"slices", i64(&Params::slices)},
      {"u", ptr(&Params::u)}, {"u_batch_stride", i64(&Params::u_batch_stride)},
      {"u_dim_stride", i64(&Params::u_dim_stride)}, {"u_h_stride", i64(&Params::u_h_stride)},
      {"u_w_stride", i64(&Params::u_w_stride)},
      {"delta", ptr(&Params::delta)}, {"delta_batch_stride", i64(&Params::delta_batch_stride)},
      {"delta_dim_stride", i64(&Params::delta_dim_stride)},
      {"A", ptr(&Params::A)}, {"A_dim_stride", i64(&Params::A_dim_stride)},
      {"A_state_stride", i64(&Params::A_state_stride)},
      {"B", ptr(&Params::B)}, {"B_batch_stride", i64(&Params::B_batch_stride)},
      {"B_group_stride", i64(&Params::B_group_stride)}, {"B_state_stride", i64(&Params::B_state_stride)},
      {"C", ptr(&Params::C)}, {"C_batch_stride", i64(&Params::C_batch_stride)},
      {"C_group_stride", i64(&Params::C_group_stride)}, {"C_state_stride", i64(&Params::C_state_stride)},
      {"D", ptr(&Params::D)}, {"D_stride", i64(&Params::D_stride)},
      {"delta_bias", ptr(&Params::delta_bias)}, {"delta_bias_stride", i64(&Params::delta_bias_stride)},
      {"z", ptr(&Params::z)}, {"z_batch_stride", i64(&Params::z_batch_stride)},
      {"z_dim_stride", i64(&Params::z_dim_stride)},
      {"y", ptr(&Params::y)}, {"last_state", ptr(&Params::last_state)}, {"ckpt", ptr(&Params::ckpt)},
      {"saved_delta", ptr(&Params::saved_delta)},
      {"dout", ptr(&Params::dout)}, {"dout_batch_stride", i64(&Params::dout_batch_stride)},
      {"dout_dim_stride", i64(&Params::dout_dim_stride)}, {"dout_h_stride", i64(&Params::dout_h_stride)},
      {"dout_w_stride", i64(&Params::dout_w_stride)},
      {"du", ptr(&Params::du)}, {"ddelta", ptr(&Params::ddelta)}, {"dz", ptr(&Params::dz)},
      {"dA_part", ptr(&Params::dA_part)}, {"dB_part", ptr(&Params::dB_part)},
      {"dC_part", ptr(&Params::dC_part)}, {"dD_part", ptr(&Params::dD_part)},
      {"dbias_part", ptr(&Params::dbias_part)},
  };
  return table;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "?";
}

}  // namespace params_dict

// Fills Params from `args`; `dtype` (required) must name one of `dtypes` (the backend's), and an
// unknown key is an error (std::invalid_argument -> ValueError), so a typo never goes unnoticed.
inline Params params_from_dict(const pybind11::dict& args, const char* module, std::initializer_list<DType> dtypes) {
  Params p;
  bool have_dtype = false;
  for (const auto& item : args) {
    const std::string key = item.first.cast<std::string>();
    if (key == "dtype") {
      const std::string name = item.second.cast<std::string>();
      std::string allowed;  // "a, b or c"
      have_dtype = false;
      size_t i = 0;
      for (const DType t : dtypes) {
        allowed += (i == 0 ? "" : i + 1 == dtypes.size() ? " or " : ", ");
        allowed += params_dict::dtype_name(t);
        ++i;
        if (name == params_dict::dtype_name(t)) {
          p.dtype = t;
          have_dtype = true;
        }
      }
      if (!have_dtype) fail(module, ": dtype must be ", allowed, ", got ", name);
      continue;
    }
    const auto it = params_dict::setters().find(key);
    if (it == params_dict::setters().end()) fail(module, ": unknown parameter '", key, "'");
    it->second(p, item.second);
  }
  if (!have_dtype) fail(module, ": parameter 'dtype' is required");
  return p;
}

}  // namespace visionssm::selective_scan
