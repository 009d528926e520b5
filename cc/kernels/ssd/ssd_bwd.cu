// SSD backward: the recompute (forward kernels 1-3) and the six backward launches (ssd_bwd.cuh).
// Instantiates float32 (TF32 tensor cores), float16 and bfloat16. Not yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cc/kernels/ssd/ssd_bwd.cuh"
#include "cc/kernels/ssd/ssd_launch.h"

namespace visionssm::ssd {
namespace {

template <typename T>
void launch_backward(const Params& p, const Geometry& g, cudaStream_t s) {
  const unsigned chunks = unsigned(g.chunk_block_count());
  const dim3 pass(unsigned(g.state_blocks), unsigned(g.batch * g.heads));
  ssd_chunk_cumsum_kernel<T><<<chunks, kScanThreads, 0, s>>>(p, g);
  ssd_chunk_state_kernel<T, false><<<dim3(chunks, unsigned(g.pblocks * g.nblocks)), kMmaThreads, 0, s>>>(p, g);
  ssd_state_passing_kernel<<<pass, kPassThreads, 0, s>>>(p, g);
  if (p.z.ptr) {
    const int64_t total = g.batch * g.seqlen * g.heads * g.headdim;
    const unsigned blocks = unsigned(std::min<int64_t>(cdiv(total, 256), 65536));
    ssd_gate_bwd_kernel<T><<<blocks, 256, 0, s>>>(p, g);
  }
  ssd_chunk_state_kernel<T, true><<<dim3(chunks, unsigned(g.pblocks * g.nblocks)), kMmaThreads, 0, s>>>(p, g);
  ssd_bwd_state_passing_kernel<<<pass, kPassThreads, 0, s>>>(p, g);
  ssd_bwd_dx_kernel<T><<<dim3(chunks, unsigned(g.qblocks * g.pblocks)), kMmaThreads, 0, s>>>(p, g);
  ssd_bwd_dbc_kernel<T><<<dim3(chunks, unsigned(g.qblocks * g.nblocks)), kMmaThreads, 0, s>>>(p, g);
  ssd_bwd_dt_kernel<T><<<chunks, kScanThreads, 0, s>>>(p, g);
}

}  // namespace

std::string backward(const Params& p, std::uintptr_t stream) {
  check_params(p, true);
  const Geometry g = Geometry::of(p);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: launch_backward<float>(p, g, s); break;
    case DType::kFloat16: launch_backward<__half>(p, g, s); break;
    case DType::kBFloat16: launch_backward<__nv_bfloat16>(p, g, s); break;
    case DType::kFloat64: break;  // refused by check_params
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace visionssm::ssd
