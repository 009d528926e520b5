// Selective-scan backward: dispatch over dtype x d_state path x cross-2D, launch. Same
// combinations as the forward. Not yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "cc/kernels/selective_scan/selective_scan_bwd.cuh"
#include "cc/kernels/selective_scan/selective_scan_config.h"
#include "cc/kernels/selective_scan/selective_scan_launch.h"

namespace visionssm::selective_scan {
namespace {

template <typename T, typename Geo>
void launch(const Params& p, cudaStream_t stream) {
  const int64_t blocks = RowTiling(p.dim / p.groups, p.groups, p.batch, Geo::kRows).num_blocks();
  if (p.cross2d) {
    selective_scan_bwd_kernel<T, Geo, true><<<unsigned(blocks), Geo::kThreads, 0, stream>>>(p);
  } else {
    selective_scan_bwd_kernel<T, Geo, false><<<unsigned(blocks), Geo::kThreads, 0, stream>>>(p);
  }
}

template <typename T>
void launch_dtype(const Params& p, cudaStream_t stream) {
  if (p.dstate == 1) {
    launch<T, BwdN1>(p, stream);
  } else {
    launch<T, BwdTiled>(p, stream);
  }
}

int bwd_rows(int64_t dstate) { return dstate == 1 ? BwdN1::kRows : BwdTiled::kRows; }

}  // namespace

int64_t bwd_slices(int64_t dim, int64_t groups, int64_t dstate) {
  const int rows = bwd_rows(dstate);
  return (dim / groups + rows - 1) / rows;
}

int64_t bwd_blocks(const Params& p) {
  return RowTiling(p.dim / p.groups, p.groups, p.batch, bwd_rows(p.dstate)).num_blocks();
}

std::string backward(Params p, std::uintptr_t stream) {
  check_params(p, true);
  p.chunk = kChunkLen;
  p.nchunks = (p.seqlen + kChunkLen - 1) / kChunkLen;
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: launch_dtype<float>(p, s); break;
    case DType::kFloat16: launch_dtype<__half>(p, s); break;
    case DType::kBFloat16: launch_dtype<__nv_bfloat16>(p, s); break;
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace visionssm::selective_scan
