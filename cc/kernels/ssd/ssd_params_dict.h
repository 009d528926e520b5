// Params from the dict Python fills (keys = field names; pointers as integers; an Operand `x` is two
// keys, "x" (address) and "x_strides" (list of element strides)), shared by the CPU and CUDA
// pybind11 modules so both read one format. Unknown keys are an error, so a typo never goes
// unnoticed. Host-only.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "cc/kernels/common/params_dict.h"
#include "cc/kernels/ssd/ssd_params.h"

namespace visionssm::ssd {
namespace params_dict {

namespace py = pybind11;
using Setter = ::visionssm::params_dict::Setter<Params>;

inline Setter addr(std::uintptr_t Params::*field) { return ::visionssm::params_dict::field(field); }
inline Setter i64(int64_t Params::*field) { return ::visionssm::params_dict::field(field); }
inline Setter f64(double Params::*field) { return ::visionssm::params_dict::field(field); }
inline Setter flag(bool Params::*field) { return ::visionssm::params_dict::field(field); }
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

inline const ::visionssm::params_dict::Setters<Params>& setters() {
  static const ::visionssm::params_dict::Setters<Params> table = [] {
    ::visionssm::params_dict::Setters<Params> t = {
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

}  // namespace params_dict

// Fills Params from `args`; `dtype` (required) must name one of `dtypes` (the backend's).
// Errors are std::invalid_argument (ValueError in Python) naming `module` and the key.
inline Params params_from_dict(const pybind11::dict& args, const char* module, std::initializer_list<DType> dtypes) {
  return ::visionssm::params_dict::parse<Params>(args, module, dtypes, params_dict::setters());
}

}  // namespace visionssm::ssd
