// Params from the dict Python fills (keys = field names, pointers as integers, strides in
// elements), shared by the CPU and CUDA pybind11 modules so both read one format. Every key is
// checked: an unknown one is an error (ValueError), so a typo never goes unnoticed. Host-only.
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
#include "cc/kernels/dcnv4/dcnv4_params.h"

namespace visionssm::dcnv4 {
namespace params_dict {

namespace py = pybind11;
using Setter = std::function<void(Params&, py::handle)>;

inline Setter i64(int64_t Params::*field) {
  return [field](Params& p, py::handle v) { p.*field = v.cast<int64_t>(); };
}
inline Setter u64(std::uintptr_t Params::*field) {
  return [field](Params& p, py::handle v) { p.*field = v.cast<std::uintptr_t>(); };
}
inline Setter strides(int64_t (Params::*field)[4], const char* name) {
  return [field, name](Params& p, py::handle v) {
    const auto s = v.cast<std::vector<int64_t>>();
    if (s.size() != 4) fail(name, " must have 4 entries (n, h, w, c), got ", s.size());
    for (int i = 0; i < 4; ++i) (p.*field)[i] = s[i];
  };
}

inline const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> table = {
      {"batch", i64(&Params::batch)}, {"height", i64(&Params::height)}, {"width", i64(&Params::width)},
      {"out_height", i64(&Params::out_height)}, {"out_width", i64(&Params::out_width)},
      {"offset_channels", i64(&Params::offset_channels)},
      {"kernel_h", i64(&Params::kernel_h)}, {"kernel_w", i64(&Params::kernel_w)},
      {"stride_h", i64(&Params::stride_h)}, {"stride_w", i64(&Params::stride_w)},
      {"pad_h", i64(&Params::pad_h)}, {"pad_w", i64(&Params::pad_w)},
      {"dilation_h", i64(&Params::dilation_h)}, {"dilation_w", i64(&Params::dilation_w)},
      {"group", i64(&Params::group)}, {"group_channels", i64(&Params::group_channels)},
      {"offset_scale", [](Params& p, py::handle v) { p.offset_scale = v.cast<double>(); }},
      {"remove_center", [](Params& p, py::handle v) { p.remove_center = v.cast<bool>(); }},
      {"value_strides", strides(&Params::value_strides, "value_strides")},
      {"offset_mask_strides", strides(&Params::offset_mask_strides, "offset_mask_strides")},
      {"grad_output_strides", strides(&Params::grad_output_strides, "grad_output_strides")},
      {"value", u64(&Params::value)}, {"offset_mask", u64(&Params::offset_mask)},
      {"grad_output", u64(&Params::grad_output)}, {"out", u64(&Params::out)},
      {"grad_value", u64(&Params::grad_value)}, {"grad_offset_mask", u64(&Params::grad_offset_mask)},
      {"threads", [](Params& p, py::handle v) { p.threads = v.cast<int>(); }},
      {"stream", u64(&Params::stream)}, {"workspace", u64(&Params::workspace)},
      {"workspace_bytes", i64(&Params::workspace_bytes)},
      {"deterministic", [](Params& p, py::handle v) { p.deterministic = v.cast<bool>(); }},
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

// Fills Params from `args`; `dtype` (required) must name one of `dtypes` (the backend's).
inline Params params_from_dict(const pybind11::dict& args, const char* who, std::initializer_list<DType> dtypes) {
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
      if (!have_dtype) fail(who, ": dtype must be ", allowed, ", got ", name);
      continue;
    }
    const auto it = params_dict::setters().find(key);
    if (it == params_dict::setters().end()) fail(who, ": unknown parameter '", key, "'");
    it->second(p, item.second);
  }
  if (!have_dtype) fail(who, ": parameter 'dtype' is required");
  return p;
}

// The checks both backends share: sizes, convolution parameters, P, channel strides.
inline void check_geometry(const Params& p, const char* who) {
  if (p.batch < 0 || p.height < 1 || p.width < 1 || p.out_height < 0 || p.out_width < 0)
    fail(who, ": need batch >= 0, height, width >= 1 and out sizes >= 0, got ", p.batch, ", ", p.height, ", ",
         p.width, ", ", p.out_height, ", ", p.out_width);
  if (p.kernel_h < 1 || p.kernel_w < 1 || p.stride_h < 1 || p.stride_w < 1 || p.dilation_h < 1 ||
      p.dilation_w < 1 || p.pad_h < 0 || p.pad_w < 0)
    fail(who, ": bad convolution parameters");
  if (p.remove_center && (p.kernel_h % 2 == 0 || p.kernel_w % 2 == 0))
    fail(who, ": remove_center needs odd kernels");
  if (p.points() < 1 || p.group < 0 || p.group_channels < 0)
    fail(who, ": need K >= 1 and group, group_channels >= 0");
  if (p.offset_channels < 3 * p.group * p.points())
    fail(who, ": P=", p.offset_channels, " < 3*group*K=", 3 * p.group * p.points());
  if (p.value_strides[3] != 1) fail(who, ": value must have channel stride 1");
}

}  // namespace visionssm::dcnv4
