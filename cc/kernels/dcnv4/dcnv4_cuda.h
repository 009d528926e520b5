// Host API of the DCNv4 CUDA kernels (dcnv4_fwd.cu, dcnv4_bwd.cu). Compiled, not yet run on a GPU.
// Each returns "" or the CUDA error of the launch; argument errors throw std::invalid_argument.
#pragma once

#include <cstdint>
#include <string>

#include "cc/kernels/dcnv4/dcnv4_params.h"

namespace visionssm::dcnv4 {

// Checks both directions share (dtype, sizes, value/offset_mask pointers, 32-bit index range).
void check_common(const Params& p, const char* who);
int64_t elem_bytes(DType t);
// Argument checks of a launch (dtype, sizes, pointers, alignment, workspace); throws on misuse.
void check_forward(const Params& p);
void check_backward(const Params& p);
// Channels per thread the launch will use: 8 (16-byte vector loads) or 1.
int vector_width(const Params& p, bool backward);
// out <- dcnv4(value, offset_mask).
std::string forward(const Params& p);
// Bytes of scratch the backward needs (p.deterministic: the sort's arrays; atomic mode: a float32
// grad_value for 16-bit dtypes, else 0).
int64_t backward_workspace_bytes(const Params& p);
// grad_value, grad_offset_mask <- backward(grad_output).
std::string backward(const Params& p);

}  // namespace visionssm::dcnv4
