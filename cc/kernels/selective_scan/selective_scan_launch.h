// Host API of the selective-scan CUDA kernels (implemented in selective_scan_fwd.cu / _bwd.cu).
// Plain C++: the pybind11 module includes it without CUDA or CUTLASS headers.
#pragma once

#include <cstdint>
#include <string>

#include "cc/kernels/selective_scan/selective_scan_params.h"

namespace visionssm::selective_scan {

// Sequence positions per chunk (all kernels): the forward saves the state entering each chunk
// (Params::ckpt, nchunks = ceil(L / chunk_len())) and the backward restarts from it.
int64_t chunk_len();

// CTAs per group in the backward = leading size of dB_part/dC_part: ceil((dim / groups) / rows),
// rows = channels summed per CTA (depends on the d_state path).
int64_t bwd_slices(int64_t dim, int64_t groups, int64_t dstate);

// CTAs the forward/backward launch (one per row block of kRows channels), for the tests.
int64_t fwd_blocks(const Params& p);
int64_t bwd_blocks(const Params& p);

// Checks the parameters (throws std::invalid_argument naming the field), fills chunk/nchunks,
// launches on `stream` (a cudaStream_t as integer). Returns the CUDA error string, empty on success.
std::string forward(Params p, std::uintptr_t stream);
std::string backward(Params p, std::uintptr_t stream);

// Throws std::invalid_argument naming the first field that breaks the kernels' contract.
void check_params(const Params& p, bool backward);

}  // namespace visionssm::selective_scan
