// Host API of the SSD CUDA kernels (ssd_fwd.cu, ssd_bwd.cu). Plain C++: the pybind11 module
// includes it without CUDA or CUTLASS headers. Not yet run on a GPU.
#pragma once

#include <cstdint>
#include <string>

#include "cc/kernels/ssd/ssd_layout.h"
#include "cc/kernels/ssd/ssd_params.h"

namespace visionssm::ssd {

// Throws std::invalid_argument naming the first field that breaks the kernels' contract.
void check_params(const Params& p, bool backward);

// Check, then launch on `stream` (a cudaStream_t as integer). Return the CUDA error string, empty
// on success. The backward recomputes dt', the cumsums and the chunk states itself (the forward
// saves only pregate).
std::string forward(const Params& p, std::uintptr_t stream);
std::string backward(const Params& p, std::uintptr_t stream);

}  // namespace visionssm::ssd
