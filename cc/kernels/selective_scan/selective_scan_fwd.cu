// Selective-scan forward: parameter checks, dispatch over dtype x d_state path x cross-2D, launch.
// Instantiates only the combinations the ops use (float32/float16/bfloat16 inputs; N = 1 and the
// tiled N path; plain and cross-2D). Not yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/selective_scan/selective_scan_config.h"
#include "cc/kernels/selective_scan/selective_scan_fwd.cuh"
#include "cc/kernels/selective_scan/selective_scan_launch.h"

namespace visionssm::selective_scan {
namespace {

int64_t element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

void check_pointer(const char* name, const void* ptr, int64_t align, bool required) {
  if (!ptr) {
    if (required) fail("selective_scan: ", name, " is required (got a null pointer)");
    return;
  }
  if (reinterpret_cast<std::uintptr_t>(ptr) % align != 0)
    fail("selective_scan: ", name, " must be ", align, "-byte aligned (address ", ptr, ")");
}

template <typename T, typename Geo>
void launch(const Params& p, cudaStream_t stream) {
  const int64_t blocks = RowTiling(p.dim / p.groups, p.groups, p.batch, Geo::kRows).num_blocks();
  if (p.cross2d) {
    selective_scan_fwd_kernel<T, Geo, true><<<unsigned(blocks), Geo::kThreads, 0, stream>>>(p);
  } else {
    selective_scan_fwd_kernel<T, Geo, false><<<unsigned(blocks), Geo::kThreads, 0, stream>>>(p);
  }
}

template <typename T>
void launch_dtype(const Params& p, cudaStream_t stream) {
  if (p.dstate == 1) {
    launch<T, FwdN1>(p, stream);
  } else {
    launch<T, FwdTiled>(p, stream);
  }
}

}  // namespace

int64_t chunk_len() { return kChunkLen; }

int64_t fwd_blocks(const Params& p) {
  const int rows = p.dstate == 1 ? FwdN1::kRows : FwdTiled::kRows;
  return RowTiling(p.dim / p.groups, p.groups, p.batch, rows).num_blocks();
}

void check_params(const Params& p, bool backward) {
  if (p.batch < 1 || p.dim < 1 || p.seqlen < 1)
    fail("selective_scan: batch, dim and L must be >= 1 (empty sizes are handled before the launch), got batch=",
         p.batch, " dim=", p.dim, " L=", p.seqlen);
  if (p.dstate < 1 || p.dstate > kMaxDState)
    fail("selective_scan: d_state (A.shape[1]) must be in [1, ", kMaxDState, "], got ", p.dstate);
  if (p.groups < 1 || p.dim % p.groups != 0)
    fail("selective_scan: groups must divide dim, got dim=", p.dim, " groups=", p.groups);
  if (p.cross2d) {
    if (p.groups != 4) fail("selective_scan: cross-2D needs groups == 4 (one per traversal), got ", p.groups);
    if (p.height < 1 || p.width < 1 || p.height * p.width != p.seqlen)
      fail("selective_scan: cross-2D needs H * W == L, got H=", p.height, " W=", p.width, " L=", p.seqlen);
    if (p.seqlen > INT_MAX) fail("selective_scan: cross-2D needs H * W < 2^31, got ", p.seqlen);
  }
  const int64_t es = element_size(p.dtype);
  check_pointer("u", p.u, es, true);
  check_pointer("delta", p.delta, es, true);
  check_pointer("A", p.A, 4, true);
  check_pointer("B", p.B, es, true);
  check_pointer("C", p.C, es, true);
  check_pointer("D", p.D, 4, false);
  check_pointer("delta_bias", p.delta_bias, 4, false);
  check_pointer("z", p.z, es, false);
  if (!backward) {
    check_pointer("y", p.y, es, true);
    check_pointer("last_state", p.last_state, 4, false);
    check_pointer("ckpt", p.ckpt, 4, false);
  } else {
    check_pointer("dout", p.dout, es, true);
    check_pointer("ckpt", p.ckpt, 4, true);
    check_pointer("du", p.du, es, true);
    check_pointer("ddelta", p.ddelta, es, true);
    check_pointer("dz", p.dz, es, p.z != nullptr);
    check_pointer("dA_part", p.dA_part, 4, true);
    check_pointer("dB_part", p.dB_part, 4, true);
    check_pointer("dC_part", p.dC_part, 4, true);
    check_pointer("dD_part", p.dD_part, 4, p.D != nullptr);
    check_pointer("dbias_part", p.dbias_part, 4, p.delta_bias != nullptr);
  }
  const int64_t blocks = backward ? bwd_blocks(p) : fwd_blocks(p);
  if (blocks > INT_MAX) fail("selective_scan: batch * dim too large for one launch (", blocks, " CTAs)");
}

std::string forward(Params p, std::uintptr_t stream) {
  check_params(p, false);
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
