// DCNv4 backward on CUDA (partition: dcnv4_layout.h). Compiled, not yet run on a GPU.
//
// dcnv4_bwd_kernel: a (pixel, group) unit of `lanes` threads walks the K points; each lane sums
// go * corner value (weighted for d/dm, d/dw, d/dh) over its channel chunks in fp32, the unit
// reduces the three sums over its lanes in a fixed tree in shared memory, and lane 0 writes the
// offset/mask gradients. The value gradient, a scatter, is made one of two ways:
//   deterministic (the default): lane 0 writes one (destination key, entry id, weight) per corner;
//     cub's stable radix sort orders them by destination, then dcnv4_gather_kernel sums each
//     destination's segment in ascending entry order (no atomics; bitwise reproducible);
//   atomic: float32 atomicAdd into a float32 grad_value (run-to-run rounding noise), cast after.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cc/kernels/common/check.h"
#include "cc/kernels/dcnv4/dcnv4_cuda.h"
#include "cc/kernels/dcnv4/dcnv4_io.cuh"
#include "cc/kernels/dcnv4/dcnv4_layout.h"

namespace visionssm::dcnv4 {
namespace {

// (256, 1): without the explicit minimum ptxas capped the float32 scalar variant at 64 registers
// and spilled; 1 CTA/SM is a floor, not a target (it uses <= 96 registers).
template <typename T, int V, bool kAtomic>
__global__ void __launch_bounds__(kBlockThreads, 1)
    dcnv4_bwd_kernel(const Params p, const Geometry geo, float* __restrict__ gv32, uint32_t* __restrict__ keys,
                     uint32_t* __restrict__ ids, float* __restrict__ weights) {
  __shared__ float red[3][kBlockThreads];
  const int tid = threadIdx.x;
  int64_t q, g;
  int lane;
  const bool active = geo.decode_backward(blockIdx.x, tid, &q, &g, &lane);
  const Pixel px = active ? pixel_of(p, q) : Pixel{0, 0, 0};
  const int64_t K = geo.K, D = geo.D, C = geo.G * geo.D, omc = p.offset_mask_strides[3];
  const int64_t vsh = p.value_strides[1], vsw = p.value_strides[2];
  const T* __restrict__ om = reinterpret_cast<const T*>(p.offset_mask) + px.n * p.offset_mask_strides[0] +
                             px.ho * p.offset_mask_strides[1] + px.wo * p.offset_mask_strides[2] + g * 3 * K * omc;
  const T* __restrict__ go = reinterpret_cast<const T*>(p.grad_output) + px.n * p.grad_output_strides[0] +
                             px.ho * p.grad_output_strides[1] + px.wo * p.grad_output_strides[2] + g * D;
  const T* __restrict__ vn = reinterpret_cast<const T*>(p.value) + px.n * p.value_strides[0] + g * D;
  T* __restrict__ gom_pix = reinterpret_cast<T*>(p.grad_offset_mask) + q * p.offset_channels;
  T* __restrict__ gom = gom_pix + g * 3 * K;
  if (active && g == 0 && lane == 0)  // padding channels get a zero gradient
    for (int64_t c = 3 * geo.G * K; c < p.offset_channels; ++c) gom_pix[c] = from_float<T>(0.f);
  const float s = static_cast<float>(p.offset_scale);
  for (int64_t k = 0; k < K; ++k) {
    float m = 0.f;
    Sample smp{0.f, 0.f, false};
    if (active) {
      m = to_float(om[(2 * K + k) * omc]);
      smp = sample_position(p, px, k, to_float(om[2 * k * omc]), to_float(om[(2 * k + 1) * omc]));
    }
    const float hf = floorf(smp.h), wf = floorf(smp.w);
    const int64_t y0 = static_cast<int64_t>(hf), x0 = static_cast<int64_t>(wf);
    const float lh = smp.h - hf, lw = smp.w - wf, hh = 1.f - lh, hw = 1.f - lw;
    float gm = 0.f, gw = 0.f, gh = 0.f;
    if (smp.inside) {  // false for inactive threads
      for (int64_t c = lane; c < geo.chunks; c += geo.lanes) {
        float gq[V];
        load_chunk<T, V>(go + c * V, gq);
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          const int64_t y = y0 + corner / 2, x = x0 + corner % 2;
          if (y < 0 || y >= p.height || x < 0 || x >= p.width) continue;
          // Corner weight and its derivatives d/dw, d/dh (selects, not arrays: no local memory).
          const float fy = corner / 2 ? lh : hh, fx = corner % 2 ? lw : hw;
          const float cw = fy * fx, cdw = corner % 2 ? fy : -fy, cdh = corner / 2 ? fx : -fx;
          float v[V];
          load_chunk<T, V>(vn + y * vsh + x * vsw + c * V, v);
          float dot = 0.f;
#pragma unroll
          for (int i = 0; i < V; ++i) dot = fmaf(gq[i], v[i], dot);
          gm = fmaf(cw, dot, gm);
          gw = fmaf(cdw, dot, gw);
          gh = fmaf(cdh, dot, gh);
          if constexpr (kAtomic) {
            float* dst = gv32 + ((px.n * p.height + y) * p.width + x) * C + g * D + c * V;
            const float a = m * cw;
#pragma unroll
            for (int i = 0; i < V; ++i) atomicAdd(dst + i, a * gq[i]);
          }
        }
      }
    }
    red[0][tid] = gm;
    red[1][tid] = gw;
    red[2][tid] = gh;
    __syncthreads();
    for (int stride = first_tree_stride(geo.lanes); stride > 0; stride /= 2) {  // same tree for every unit
      if (lane < stride && lane + stride < geo.lanes)
#pragma unroll
        for (int r = 0; r < 3; ++r) red[r][tid] += red[r][tid + stride];
      __syncthreads();
    }
    if (active && lane == 0) {
      gom[2 * k] = from_float<T>(m * s * red[1][tid]);
      gom[2 * k + 1] = from_float<T>(m * s * red[2][tid]);
      gom[2 * K + k] = from_float<T>(red[0][tid]);
      if constexpr (!kAtomic) {
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          const int64_t y = y0 + corner / 2, x = x0 + corner % 2;
          const bool in = smp.inside && y >= 0 && y < p.height && x >= 0 && x < p.width;
          const int64_t e = geo.entry_index(q, g, k, corner);
          keys[e] = static_cast<uint32_t>(in ? ((px.n * p.height + y) * p.width + x) * geo.G + g : geo.dests);
          ids[e] = static_cast<uint32_t>(e);
          weights[e] = m * ((corner / 2 ? lh : hh) * (corner % 2 ? lw : hw));
        }
      }
    }
    __syncthreads();  // red is reused by the next point
  }
}

__device__ __forceinline__ uint32_t lower_bound(const uint32_t* __restrict__ keys, uint32_t lo, uint32_t hi,
                                                uint32_t key) {
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// grad_value row d = ((n*H + y)*W + x)*G + g, chunk c: the sum of weight * grad_output over the
// destination's sorted entries, in ascending entry order. Every element is written (0 if none).
template <typename T, int V>
__global__ void __launch_bounds__(kBlockThreads)
    dcnv4_gather_kernel(const Params p, const Geometry geo, const uint32_t* __restrict__ keys,
                        const uint32_t* __restrict__ ids, const float* __restrict__ weights) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  if (t >= geo.gather_threads()) return;
  const uint32_t nc = static_cast<uint32_t>(geo.chunks), tt = static_cast<uint32_t>(t);
  const uint32_t d = tt / nc, chunk = tt - d * nc, ng = static_cast<uint32_t>(geo.G), g = d - (d / ng) * ng;
  const uint32_t n_entries = static_cast<uint32_t>(geo.entries);
  const uint32_t lo = lower_bound(keys, 0, n_entries, d), hi = lower_bound(keys, lo, n_entries, d + 1);
  float acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.f;
  for (uint32_t j = lo; j < hi; ++j) {
    const uint32_t e = ids[j];
    const Pixel px = pixel_of(p, geo.entry_pixel(e));
    const T* src = reinterpret_cast<const T*>(p.grad_output) + px.n * p.grad_output_strides[0] +
                   px.ho * p.grad_output_strides[1] + px.wo * p.grad_output_strides[2] + g * geo.D + chunk * V;
    float gq[V];
    load_chunk<T, V>(src, gq);
    const float w = weights[e];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = fmaf(w, gq[i], acc[i]);
  }
  store_chunk<T, V>(reinterpret_cast<T*>(p.grad_value) + static_cast<int64_t>(d) * geo.D + chunk * V, acc);
}

template <typename T>
__global__ void cast_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = from_float<T>(src[i]);
}

unsigned blocks_of(int64_t threads, int per_block) { return static_cast<unsigned>((threads + per_block - 1) / per_block); }

// cub's scratch for sorting `entries` keys of `bits` bits (a size query; launches nothing).
int64_t cub_bytes(int64_t entries, int bits) {
  size_t bytes = 0;
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                                          static_cast<uint32_t*>(nullptr),
                                                          static_cast<const uint32_t*>(nullptr),
                                                          static_cast<uint32_t*>(nullptr), static_cast<int>(entries), 0,
                                                          bits);
  if (err != cudaSuccess) fail("dcnv4_cuda.backward_workspace_bytes: cub size query failed: ", cudaGetErrorString(err));
  return static_cast<int64_t>(bytes);
}

template <typename T, int V>
std::string run(const Params& p, const Geometry& geo) {
  const auto stream = reinterpret_cast<cudaStream_t>(p.stream);
  auto* ws = reinterpret_cast<char*>(p.workspace);
  const unsigned bwd_blocks = static_cast<unsigned>(geo.backward_blocks());
  const int bwd_threads = geo.backward_block_threads();
  if (!p.deterministic) {
    const int64_t n = p.batch * p.height * p.width * p.channels();
    float* gv32 = sizeof(T) == 4 ? reinterpret_cast<float*>(p.grad_value) : reinterpret_cast<float*>(ws);
    cudaMemsetAsync(gv32, 0, n * sizeof(float), stream);
    dcnv4_bwd_kernel<T, V, true><<<bwd_blocks, bwd_threads, 0, stream>>>(p, geo, gv32, nullptr, nullptr, nullptr);
    if (sizeof(T) != 4)
      cast_kernel<T><<<blocks_of(n, kBlockThreads), kBlockThreads, 0, stream>>>(gv32, reinterpret_cast<T*>(p.grad_value), n);
  } else {
    const int bits = key_bits(geo.dests);
    const Workspace w = workspace_layout(geo.entries, cub_bytes(geo.entries, bits));
    auto* keys_in = reinterpret_cast<uint32_t*>(ws + w.keys_in);
    auto* keys_out = reinterpret_cast<uint32_t*>(ws + w.keys_out);
    auto* ids_in = reinterpret_cast<uint32_t*>(ws + w.ids_in);
    auto* ids_out = reinterpret_cast<uint32_t*>(ws + w.ids_out);
    auto* weights = reinterpret_cast<float*>(ws + w.weights);
    dcnv4_bwd_kernel<T, V, false><<<bwd_blocks, bwd_threads, 0, stream>>>(p, geo, nullptr, keys_in, ids_in, weights);
    size_t scratch = static_cast<size_t>(w.total - w.cub);
    const cudaError_t err = cub::DeviceRadixSort::SortPairs(ws + w.cub, scratch, keys_in, keys_out, ids_in, ids_out,
                                                            static_cast<int>(geo.entries), 0, bits, stream);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    dcnv4_gather_kernel<T, V><<<static_cast<unsigned>(geo.gather_blocks()), kBlockThreads, 0, stream>>>(
        p, geo, keys_out, ids_out, weights);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T>
std::string dispatch(const Params& p) {
  const int vec = vector_width(p, true);
  const Geometry geo(p, vec);
  return vec == kVec ? run<T, kVec>(p, geo) : run<T, 1>(p, geo);
}

bool empty_value_grad(const Params& p) { return p.batch * p.out_height * p.out_width * p.channels() == 0; }

}  // namespace

void check_backward(const Params& p) {
  const char* who = "dcnv4_cuda.backward";
  check_common(p, who);
  const int64_t eb = elem_bytes(p.dtype);
  if (p.grad_output_strides[3] != 1) fail(who, ": grad_output must have channel stride 1");
  for (const auto& [name, ptr] : {std::pair<const char*, std::uintptr_t>{"grad_output", p.grad_output},
                                  {"grad_value", p.grad_value}, {"grad_offset_mask", p.grad_offset_mask}})
    if (ptr == 0 || ptr % eb != 0) fail(who, ": ", name, " must be a non-null ", eb, "-byte aligned pointer");
  if (p.workspace % kWorkspaceAlign != 0) fail(who, ": workspace must be ", kWorkspaceAlign, "-byte aligned");
}

int64_t backward_workspace_bytes(const Params& p) {
  if (empty_value_grad(p)) return 0;
  const Geometry geo(p, 1);
  if (!p.deterministic) return p.dtype == DType::kFloat32 ? 0 : p.batch * p.height * p.width * p.channels() * 4;
  return workspace_layout(geo.entries, cub_bytes(geo.entries, key_bits(geo.dests))).total;
}

std::string backward(const Params& p) {
  check_backward(p);
  // N, G or D = 0: grad_value is empty and Python fills grad_offset_mask with zeros.
  if (empty_value_grad(p)) return "";
  const int64_t need = backward_workspace_bytes(p);
  if (p.workspace_bytes < need || (need > 0 && p.workspace == 0))
    fail("dcnv4_cuda.backward: workspace of ", p.workspace_bytes, " bytes, need ", need);
  switch (p.dtype) {
    case DType::kFloat32: return dispatch<float>(p);
    case DType::kFloat16: return dispatch<__half>(p);
    case DType::kBFloat16: return dispatch<__nv_bfloat16>(p);
    case DType::kFloat64: break;  // rejected by check_backward
  }
  return "";
}

}  // namespace visionssm::dcnv4
