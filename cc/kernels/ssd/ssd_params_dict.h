// Params from the dict Python fills (keys = field names; pointers as integers; an Operand `x` is two
// keys, "x" (address) and "x_strides" (list of element strides)), shared by the CPU and CUDA
// pybind11 modules so both read one format. Unknown keys are an error, so a typo never goes
// unnoticed. Host-only.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/ssd/ssd_params.h"

namespace visionssm::ssd {
namespace params_dict {

namespace py = pybind11;
using Setter = std::function<void(Params&, py::handle, const char*)>;

inline Setter addr(std::uintptr_t Params::*field) {
  return [field](Params& p, py::handle v, const char*) { p.*field = v.cast<std::uintptr_t>(); };
}
inline Setter i64(int64_t Params::*field) {
  return [field](Params& p, py::handle v, const char*) { p.*field = v.cast<int64_t>(); };
}
inline Setter f64(double Params::*field) {
  return [field](Params& p, py::handle v, const char*) { p.*field = v.cast<double>(); };
}
inline Setter flag(bool Params::*field) {
  return [field](Params& p, py::handle v, const char*) { p.*field = v.cast<bool>(); };
}
inline Setter operand_ptr(Operand Params::*field) {
  return [field](Params& p, py::handle v, const char*) { (p.*field).ptr = v.cast<std::uintptr_t>(); };
}
inline Setter operand_strides(Operand Params::*field, size_t rank, const char* name) {
  return [field, rank, name](Params& p, py::handle v, const char* module) {
    const auto s = v.cast<std::vector<int64_t>>();
    if (s.size() != rank) fail(module, ": ", name, "_strides must have ", rank, " entries, got ", s.size());
    for (size_t i = 0; i < rank; ++i) (p.*field).stride[i] = s[i];
  };
}

inline const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> table = [] {
    std::map<std::string, Setter> t = {
        {"causal", flag(&Params::causal)}, {"softplus", flag(&Params::softplus)},
        {"batch", i64(&Params::batch)}, {"seqlen", i64(&Params::seqlen)}, {"heads", i64(&Params::heads)},
        {"headdim", i64(&Params::headdim)}, {"groups", i64(&Params::groups)}, {"dstate", i64(&Params::dstate)},
        {"chunk_size", i64(&Params::chunk_size)}, {"dt_min", f64(&Params::dt_min)},
        {"dt_max", f64(&Params::dt_max)}, {"threads", i64(&Params::threads)},
        {"heads_per_task", i64(&Params::heads_per_task)},
        {"y", addr(&Params::y)}, {"pregate", addr(&Params::pregate)}, {"final_states", addr(&Params::final_states)},
        {"dout", addr(&Params::dout)}, {"dfinal", addr(&Params::dfinal)}, {"saved_kv", addr(&Params::saved_kv)},
        {"dx", addr(&Params::dx)}, {"ddt", addr(&Params::ddt)}, {"dB", addr(&Params::dB)}, {"dC", addr(&Params::dC)},
        {"dz", addr(&Params::dz)}, {"dA", addr(&Params::dA)}, {"dD", addr(&Params::dD)},
        {"dbias", addr(&Params::dbias)}, {"dinit", addr(&Params::dinit)},
        {"ws_dt", addr(&Params::ws_dt)}, {"ws_cumsum", addr(&Params::ws_cumsum)},
        {"ws_states", addr(&Params::ws_states)}, {"ws_dY", addr(&Params::ws_dY)},
        {"ws_dstates", addr(&Params::ws_dstates)}, {"ws_extra", addr(&Params::ws_extra)},
        {"ws_xz", addr(&Params::ws_xz)}, {"ws_dcumsum", addr(&Params::ws_dcumsum)},
    };
    const struct {
      const char* name;
      Operand Params::*field;
      size_t rank;
    } operands[] = {{"x", &Params::x, 4}, {"dt", &Params::dt, 3}, {"A", &Params::A, 1},
                    {"B", &Params::B, 4}, {"C", &Params::C, 4}, {"D", &Params::D, 2},
                    {"z", &Params::z, 4}, {"dt_bias", &Params::dt_bias, 1}, {"initial_states", &Params::init, 4}};
    for (const auto& o : operands) {
      t[o.name] = operand_ptr(o.field);
      t[std::string(o.name) + "_strides"] = operand_strides(o.field, o.rank, o.name);
    }
    return t;
  }();
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

// Fills Params from `args`; `dtype` (required) must name one of `dtypes` (the backend's).
// Errors are std::invalid_argument (ValueError in Python) naming `module` and the key.
inline Params params_from_dict(const pybind11::dict& args, const char* module, std::initializer_list<DType> dtypes) {
  Params p;
  bool have_dtype = false;
  for (const auto& item : args) {
    const std::string key = item.first.cast<std::string>();
    if (key == "dtype") {
      const std::string name = item.second.cast<std::string>();
      std::string allowed;  // "a, b or c"
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
    it->second(p, item.second, module);
  }
  if (!have_dtype) fail(module, ": parameter 'dtype' is required");
  return p;
}

}  // namespace visionssm::ssd
