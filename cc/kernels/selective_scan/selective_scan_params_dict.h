// Params from the dict Python fills (keys = field names, pointers as integers, strides in
// elements), shared by the CPU and CUDA pybind11 modules so both read one format. Host-only.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>

#include "cc/kernels/common/params_dict.h"
#include "cc/kernels/selective_scan/selective_scan_params.h"

namespace visionssm::selective_scan {
namespace params_dict {

using Setter = ::visionssm::params_dict::Setter<Params>;

template <typename T>
Setter ptr(T* Params::*field) { return ::visionssm::params_dict::pointer(field); }
inline Setter i64(int64_t Params::*field) { return ::visionssm::params_dict::field(field); }
inline Setter flag(bool Params::*field) { return ::visionssm::params_dict::field(field); }

// Every field Python may set (chunk/nchunks are the launcher's).
inline const ::visionssm::params_dict::Setters<Params>& setters() {
  static const ::visionssm::params_dict::Setters<Params> table = {
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

}  // namespace params_dict

// Fills Params from `args`; `dtype` (required) must name one of `dtypes` (the backend's), and an
// unknown key is an error (std::invalid_argument -> ValueError), so a typo never goes unnoticed.
inline Params params_from_dict(const pybind11::dict& args, const char* module, std::initializer_list<DType> dtypes) {
  return ::visionssm::params_dict::parse<Params>(args, module, dtypes, params_dict::setters());
}

}  // namespace visionssm::selective_scan
