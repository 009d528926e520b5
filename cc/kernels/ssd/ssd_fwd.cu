// SSD forward: parameter checks, dtype dispatch and the four launches (ssd_fwd.cuh). Instantiates
// float32 (TF32 tensor cores), float16 and bfloat16. Not yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/ssd/ssd_fwd.cuh"
#include "cc/kernels/ssd/ssd_launch.h"

namespace visionssm::ssd {
namespace {

int64_t element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

void check_pointer(const char* name, std::uintptr_t ptr, int64_t align, bool required) {
  if (!ptr) {
    if (required) fail("ssd_cuda: ", name, " is required (got a null pointer)");
    return;
  }
  if (ptr % align != 0) fail("ssd_cuda: ", name, " must be ", align, "-byte aligned (address ", ptr, ")");
}

template <typename T>
void launch_forward(const Params& p, const Geometry& g, cudaStream_t s) {
  const unsigned chunks = unsigned(g.chunk_block_count());
  ssd_chunk_cumsum_kernel<T><<<chunks, kScanThreads, 0, s>>>(p, g);
  ssd_chunk_state_kernel<T, false><<<dim3(chunks, unsigned(g.pblocks * g.nblocks)), kMmaThreads, 0, s>>>(p, g);
  ssd_state_passing_kernel<<<dim3(unsigned(g.state_blocks), unsigned(g.batch * g.heads)), kPassThreads, 0, s>>>(p, g);
  ssd_chunk_scan_kernel<T><<<dim3(chunks, unsigned(g.qblocks * g.pblocks)), kMmaThreads, 0, s>>>(p, g);
}

}  // namespace

void check_params(const Params& p, bool backward) {
  if (p.dtype == DType::kFloat64) fail("ssd_cuda: dtype must be float32, float16 or bfloat16, got float64");
  if (p.batch < 1 || p.seqlen < 1 || p.heads < 1 || p.headdim < 1 || p.dstate < 1)
    fail("ssd_cuda: batch, L, heads, headdim and dstate must be >= 1 (empty sizes are handled before the launch), "
         "got batch=", p.batch, " L=", p.seqlen, " heads=", p.heads, " headdim=", p.headdim, " dstate=", p.dstate);
  if (p.groups < 1 || p.heads % p.groups != 0)
    fail("ssd_cuda: groups must divide heads, got heads=", p.heads, " groups=", p.groups);
  if (p.causal && (p.chunk_size < 1 || p.chunk_size > kMaxChunk))
    fail("ssd_cuda: chunk_size must be in [1, ", kMaxChunk, "] for the causal kernels, got ", p.chunk_size);
  if (!p.causal && p.init.ptr) fail("ssd_cuda: initial_states is only valid with causal=true");
  if (!(p.dt_min <= p.dt_max)) fail("ssd_cuda: dt_limit must satisfy dt_min <= dt_max, got (", p.dt_min, ", ", p.dt_max, ")");
  const Geometry g = Geometry::of(p);
  if (g.chunk_block_count() > INT_MAX || g.batch * g.heads > 65535 || g.state_blocks > INT_MAX)
    fail("ssd_cuda: problem too large for one launch (batch * heads * chunks = ", g.chunk_block_count(),
         ", batch * heads = ", g.batch * g.heads, ")");
  const int64_t es = element_size(p.dtype);
  check_pointer("x", p.x.ptr, es, true);
  check_pointer("dt", p.dt.ptr, es, true);
  check_pointer("A", p.A.ptr, 4, true);
  check_pointer("B", p.B.ptr, es, true);
  check_pointer("C", p.C.ptr, es, true);
  check_pointer("D", p.D.ptr, 4, false);
  check_pointer("z", p.z.ptr, es, false);
  check_pointer("dt_bias", p.dt_bias.ptr, 4, false);
  check_pointer("initial_states", p.init.ptr, 4, false);
  check_pointer("final_states", p.final_states, 4, true);
  check_pointer("ws_dt", p.ws_dt, 4, true);
  check_pointer("ws_cumsum", p.ws_cumsum, 4, true);
  check_pointer("ws_states", p.ws_states, 4, true);
  if (!backward) {
    check_pointer("y", p.y, es, true);
    check_pointer("pregate", p.pregate, es, false);
    return;
  }
  check_pointer("dout", p.dout, es, true);
  check_pointer("dfinal", p.dfinal, 4, false);
  check_pointer("pregate", p.pregate, es, p.z.ptr != 0);
  check_pointer("ws_dY", p.ws_dY, es, p.z.ptr != 0);
  check_pointer("dz", p.dz, es, p.z.ptr != 0);
  check_pointer("ws_dstates", p.ws_dstates, 4, true);
  check_pointer("ws_extra", p.ws_extra, 4, true);
  check_pointer("ws_xz", p.ws_xz, 4, true);
  check_pointer("ws_dcumsum", p.ws_dcumsum, 4, true);
  check_pointer("dx", p.dx, es, true);
  check_pointer("ddt", p.ddt, es, true);
  check_pointer("dB", p.dB, 4, true);
  check_pointer("dC", p.dC, 4, true);
  check_pointer("dA", p.dA, 4, true);
  check_pointer("dbias", p.dbias, 4, true);
  check_pointer("dD", p.dD, 4, p.D.ptr != 0);
  check_pointer("dinit", p.dinit, 4, false);
}

std::string forward(const Params& p, std::uintptr_t stream) {
  check_params(p, false);
  const Geometry g = Geometry::of(p);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: launch_forward<float>(p, g, s); break;
    case DType::kFloat16: launch_forward<__half>(p, g, s); break;
    case DType::kBFloat16: launch_forward<__nv_bfloat16>(p, g, s); break;
    case DType::kFloat64: break;  // refused by check_params
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace visionssm::ssd
