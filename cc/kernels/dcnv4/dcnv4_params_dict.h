// Params from the dict Python fills (keys = field names, pointers as integers, strides in
// elements), shared by the CPU and CUDA pybind11 modules so both read one format. Every key is
// checked: an unknown one is an error (ValueError), so a typo never goes unnoticed. Host-only.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "cc/kernels/common/params_dict.h"
#include "cc/kernels/dcnv4/dcnv4_params.h"

namespace visionssm::dcnv4 {
namespace params_dict {

namespace py = pybind11;
using Setter = ::visionssm::params_dict::Setter<Params>;

inline Setter i64(int64_t Params::*field) { return ::visionssm::params_dict::field(field); }
inline Setter u64(std::uintptr_t Params::*field) { return ::visionssm::params_dict::field(field); }
inline Setter strides(int64_t (Params::*field)[4], const char* name) {
  return [field, name](Params& p, py::handle v, const char*) {
    const auto s = v.cast<std::vector<int64_t>>();
    if (s.size() != 4) fail(name, " must have 4 entries (n, h, w, c), got ", s.size());
    for (int i = 0; i < 4; ++i) (p.*field)[i] = s[i];
  };
}

inline const ::visionssm::params_dict::Setters<Params>& setters() {
  static const ::visionssm::params_dict::Setters<Params> table = {
      {"batch", i64(&Params::batch)}, {"height", i64(&Params::height)}, {"width", i64(&Params::width)},
      {"out_height", i64(&Params::out_height)}, {"out_width", i64(&Params::out_width)},
      {"offset_channels", i64(&Params::offset_channels)},
      {"kernel_h", i64(&Params::kernel_h)}, {"kernel_w", i64(&Params::kernel_w)},
      {"stride_h", i64(&Params::stride_h)}, {"stride_w", i64(&Params::stride_w)},
      {"pad_h", i64(&Params::pad_h)}, {"pad_w", i64(&Params::pad_w)},
      {"dilation_h", i64(&Params::dilation_h)}, {"dilation_w", i64(&Params::dilation_w)},
      {"group", i64(&Params::group)}, {"group_channels", i64(&Params::group_channels)},
      {"offset_scale", ::visionssm::params_dict::field(&Params::offset_scale)},
      {"remove_center", ::visionssm::params_dict::field(&Params::remove_center)},
      {"value_strides", strides(&Params::value_strides, "value_strides")},
      {"offset_mask_strides", strides(&Params::offset_mask_strides, "offset_mask_strides")},
      {"grad_output_strides", strides(&Params::grad_output_strides, "grad_output_strides")},
      {"value", u64(&Params::value)}, {"offset_mask", u64(&Params::offset_mask)},
      {"grad_output", u64(&Params::grad_output)}, {"out", u64(&Params::out)},
      {"grad_value", u64(&Params::grad_value)}, {"grad_offset_mask", u64(&Params::grad_offset_mask)},
      {"threads", ::visionssm::params_dict::field(&Params::threads)},
      {"stream", u64(&Params::stream)}, {"workspace", u64(&Params::workspace)},
      {"workspace_bytes", i64(&Params::workspace_bytes)},
      {"deterministic", ::visionssm::params_dict::field(&Params::deterministic)},
  };
  return table;
}

}  // namespace params_dict

// Fills Params from `args`; `dtype` (required) must name one of `dtypes` (the backend's).
inline Params params_from_dict(const pybind11::dict& args, const char* who, std::initializer_list<DType> dtypes) {
  return ::visionssm::params_dict::parse<Params>(args, who, dtypes, params_dict::setters());
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
