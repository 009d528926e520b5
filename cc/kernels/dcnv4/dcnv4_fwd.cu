// DCNv4 forward on CUDA: one thread per (output pixel, group, chunk of 8 channels), fp32
// accumulation, 16-byte vector loads/stores (dcnv4_layout.h). Compiled, not yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/dcnv4/dcnv4_cuda.h"
#include "cc/kernels/dcnv4/dcnv4_io.cuh"
#include "cc/kernels/dcnv4/dcnv4_layout.h"

namespace visionssm::dcnv4 {
namespace {

template <typename T, int V>
__global__ void __launch_bounds__(kBlockThreads) dcnv4_fwd_kernel(const Params p, const Geometry geo) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  if (t >= geo.forward_threads()) return;
  int64_t q, g, chunk;
  geo.decode_forward(t, &q, &g, &chunk);
  const Pixel px = pixel_of(p, q);
  const int64_t K = geo.K, c0 = g * geo.D + chunk * V;
  const int64_t vsh = p.value_strides[1], vsw = p.value_strides[2], omc = p.offset_mask_strides[3];
  const T* __restrict__ om = reinterpret_cast<const T*>(p.offset_mask) + px.n * p.offset_mask_strides[0] +
                             px.ho * p.offset_mask_strides[1] + px.wo * p.offset_mask_strides[2] + g * 3 * K * omc;
  const T* __restrict__ vn = reinterpret_cast<const T*>(p.value) + px.n * p.value_strides[0] + c0;
  float acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    // The group's offsets and mask are the same for all its chunk threads (broadcast from L1).
    const float dx = to_float(om[2 * k * omc]), dy = to_float(om[(2 * k + 1) * omc]);
    const float m = to_float(om[(2 * K + k) * omc]);
    const Sample smp = sample_position(p, px, k, dx, dy);
    if (!smp.inside) continue;
    const float hf = floorf(smp.h), wf = floorf(smp.w);
    const int64_t y0 = static_cast<int64_t>(hf), x0 = static_cast<int64_t>(wf);
    const float lh = smp.h - hf, lw = smp.w - wf, hh = 1.f - lh, hw = 1.f - lw;
    const float wt[4] = {m * hh * hw, m * hh * lw, m * lh * hw, m * lh * lw};
#pragma unroll
    for (int corner = 0; corner < 4; ++corner) {
      const int64_t y = y0 + corner / 2, x = x0 + corner % 2;
      if (y < 0 || y >= p.height || x < 0 || x >= p.width) continue;
      float v[V];
      load_chunk<T, V>(vn + y * vsh + x * vsw, v);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = fmaf(wt[corner], v[i], acc[i]);
    }
  }
  store_chunk<T, V>(reinterpret_cast<T*>(p.out) + q * geo.G * geo.D + c0, acc);
}

template <typename T>
void launch(const Params& p, int vec) {
  const auto stream = reinterpret_cast<cudaStream_t>(p.stream);
  const Geometry geo(p, vec);
  const unsigned blocks = static_cast<unsigned>(geo.forward_blocks());
  if (vec == kVec)
    dcnv4_fwd_kernel<T, kVec><<<blocks, kBlockThreads, 0, stream>>>(p, geo);
  else
    dcnv4_fwd_kernel<T, 1><<<blocks, kBlockThreads, 0, stream>>>(p, geo);
}

}  // namespace

int64_t elem_bytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

void check_common(const Params& p, const char* who) {
  if (p.dtype == DType::kFloat64) fail(who, ": dtype must be float32, float16 or bfloat16, got float64");
  if (p.batch < 0 || p.height < 1 || p.width < 1 || p.out_height < 0 || p.out_width < 0 || p.group < 0 ||
      p.group_channels < 0)
    fail(who, ": need batch, group, group_channels >= 0 and height, width >= 1");
  if (p.kernel_h < 1 || p.kernel_w < 1 || p.stride_h < 1 || p.stride_w < 1 || p.dilation_h < 1 ||
      p.dilation_w < 1 || p.pad_h < 0 || p.pad_w < 0)
    fail(who, ": bad convolution parameters");
  if (p.remove_center && (p.kernel_h % 2 == 0 || p.kernel_w % 2 == 0)) fail(who, ": remove_center needs odd kernels");
  if (p.points() < 1) fail(who, ": need K >= 1 sampling points");
  if (p.offset_channels < 3 * p.group * p.points())
    fail(who, ": P=", p.offset_channels, " < 3*group*K=", 3 * p.group * p.points());
  if (p.value_strides[3] != 1) fail(who, ": value must have channel stride 1");
  const int64_t eb = elem_bytes(p.dtype);
  for (const auto& [name, ptr] : {std::pair<const char*, std::uintptr_t>{"value", p.value},
                                  {"offset_mask", p.offset_mask}})
    if (ptr == 0 || ptr % eb != 0) fail(who, ": ", name, " must be a non-null ", eb, "-byte aligned pointer");
  if (!Geometry(p, 1).fits_32bit()) fail(who, ": problem too large for 32-bit indexing");
}

int vector_width(const Params& p, bool backward) {
  const int64_t eb = elem_bytes(p.dtype);
  if (p.group_channels % kVec != 0 || !aligned16(p.value, p.value_strides, 3, eb)) return 1;
  if (!backward) return p.out % 16 == 0 ? kVec : 1;
  const bool go = p.grad_output_strides[3] == 1 && aligned16(p.grad_output, p.grad_output_strides, 3, eb);
  return go && p.grad_value % 16 == 0 ? kVec : 1;
}

void check_forward(const Params& p) {
  const char* who = "dcnv4_cuda.forward";
  check_common(p, who);
  if (p.out == 0 || p.out % elem_bytes(p.dtype) != 0) fail(who, ": out must be a non-null aligned pointer");
}

std::string forward(const Params& p) {
  check_forward(p);
  if (p.batch * p.out_height * p.out_width * p.group * p.group_channels == 0) return "";
  const int vec = vector_width(p, false);
  switch (p.dtype) {
    case DType::kFloat32: launch<float>(p, vec); break;
    case DType::kFloat16: launch<__half>(p, vec); break;
    case DType::kBFloat16: launch<__nv_bfloat16>(p, vec); break;
    case DType::kFloat64: break;  // rejected by check_forward
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace visionssm::dcnv4
