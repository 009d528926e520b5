// Params from the dict Python fills (keys = field names, pointers as integers, strides in
// elements), shared by the CPU and CUDA pybind11 modules so both read one format. Host-only.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cc/kernels/common/check.h"
#include "cc/kernels/common/params_dict.h"
#include "cc/kernels/cross_scan/cross_scan_params.h"

namespace visionssm::cross_scan {

// The dict's keys are the field names; `rank` is the number of input strides the op needs (4 for scan,
// 5 for merge).
inline Params params_from_dict(const pybind11::dict& d, int rank, const char* who) {
  namespace py = pybind11;
  for (const char* key : {"dtype", "batch", "channels", "height", "width", "input", "input_strides", "output"})
    if (!d.contains(key)) visionssm::fail(who, ": params lack '", key, "'");
  Params p;
  p.dtype = params_dict::dtype_from_name(d["dtype"].cast<std::string>(), who,
                                         {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64});
  p.batch = d["batch"].cast<int64_t>();
  p.channels = d["channels"].cast<int64_t>();
  p.height = d["height"].cast<int64_t>();
  p.width = d["width"].cast<int64_t>();
  p.input = d["input"].cast<std::uintptr_t>();
  p.output = d["output"].cast<std::uintptr_t>();
  p.input_strides = d["input_strides"].cast<std::vector<int64_t>>();
  if (d.contains("stream")) p.stream = d["stream"].cast<std::uintptr_t>();
  if (static_cast<int>(p.input_strides.size()) != rank)
    visionssm::fail(who, ": input_strides must have ", rank, " entries, got ", p.input_strides.size());
  return p;
}

}  // namespace visionssm::cross_scan
