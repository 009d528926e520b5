// The element types the kernels take, one enum for every op's Params (Python passes the name:
// "float32", "float16", "bfloat16", "float64"). Host and device.
#pragma once

namespace visionssm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "?";
}

}  // namespace visionssm
