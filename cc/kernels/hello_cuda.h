// Host-side API of the hello-world CUDA kernel (implemented in hello_cuda.cu).
#pragma once

#include <cstdint>
#include <string>

namespace visionssm::hello {

// y[i*ys] += alpha * x[i*xs] for float32 device buffers on `stream` (a cudaStream_t as integer).
// Returns the CUDA error string, empty on success.
std::string axpy_f32(int64_t n, float alpha, std::uintptr_t x, int64_t x_stride, std::uintptr_t y,
                     int64_t y_stride, std::uintptr_t stream);

// Number of visible CUDA devices, or -1 with `error` set when the driver is unusable.
int device_count(std::string* error);

// CUTLASS version the CUDA sources were compiled against, proving the header library is wired.
std::string cutlass_version();

}  // namespace visionssm::hello
