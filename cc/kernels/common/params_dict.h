// Reading an op's Params from the dict Python fills (keys = field names, pointers as integers),
// the one mechanism behind every <op>_params_dict.h: each op lists its keys as setters, `parse`
// applies them, checks `dtype` against the backend's types and refuses unknown keys, so a typo never
// goes unnoticed. Errors are std::invalid_argument (ValueError in Python) naming `module`. Host-only.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/dtype.h"

namespace visionssm::params_dict {

namespace py = pybind11;

template <class Params>
using Setter = std::function<void(Params&, py::handle, const char* module)>;

template <class Params>
using Setters = std::map<std::string, Setter<Params>>;

// A field read as its own type (integers, floats, bools, addresses kept as std::uintptr_t).
template <class Params, class T>
Setter<Params> field(T Params::*f) {
  return [f](Params& p, py::handle v, const char*) { p.*f = v.cast<T>(); };
}

// A typed pointer field, passed as an integer address.
template <class Params, class T>
Setter<Params> pointer(T* Params::*f) {
  return [f](Params& p, py::handle v, const char*) { p.*f = reinterpret_cast<T*>(v.cast<std::uintptr_t>()); };
}

// `name` if it is one of `dtypes`, else an error listing them ("a, b or c").
inline DType dtype_from_name(const std::string& name, const char* module, std::initializer_list<DType> dtypes) {
  std::string allowed;
  size_t i = 0;
  for (const DType t : dtypes) {
    if (name == dtype_name(t)) return t;
    allowed += (i == 0 ? "" : i + 1 == dtypes.size() ? " or " : ", ");
    allowed += dtype_name(t);
    ++i;
  }
  fail(module, ": dtype must be ", allowed, ", got ", name);
}

// Params from `args`: `dtype` (required) must name one of `dtypes`; every other key must be in `setters`.
template <class Params>
Params parse(const py::dict& args, const char* module, std::initializer_list<DType> dtypes,
             const Setters<Params>& setters) {
  Params p;
  bool have_dtype = false;
  for (const auto& item : args) {
    const std::string key = item.first.cast<std::string>();
    if (key == "dtype") {
      p.dtype = dtype_from_name(item.second.cast<std::string>(), module, dtypes);
      have_dtype = true;
      continue;
    }
    const auto it = setters.find(key);
    if (it == setters.end()) fail(module, ": unknown parameter '", key, "'");
    it->second(p, item.second, module);
  }
  if (!have_dtype) fail(module, ": parameter 'dtype' is required");
  return p;
}

}  // namespace visionssm::params_dict
