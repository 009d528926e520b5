// The one matrix building block of the SSD CUDA kernels: a 64 x 64 fp32 accumulator tile owned by
// 4 warps (128 threads), fed from two 64 x 64 K-major shared-memory operand tiles, on tensor cores.
// Plus the per-chunk input accessors every kernel uses. Device code only; not yet run on a GPU.
//
// Where CuTe is used and why:
//  * MmaFor/TileGemm::TiledMma (ssd_tile_layout.h, host-visible for the index test): CuTe's SM80 mma.sync atoms (16x8x16 for fp16/bf16, 16x8x8 for
//    tf32) tiled 2 x 2 over the warps and permuted to a 64 x 64 x K tile. CuTe owns the
//    register-fragment layouts of the atoms, which are easy to get wrong by hand; the same atoms
//    run on sm_90a (mma.sync is valid there; see docs/perf.md for why no wgmma path yet).
//  * tile_mma: thr.partition_A/B slice the shared-memory tiles into each thread's fragments and
//    cute::gemm issues the atoms over them, one K step (16 or 8) at a time.
//  * for_each_acc: partition_C of an identity tensor gives each accumulator element its (row, col)
//    in the tile, so epilogues (masks, decays, stores) are written in tile coordinates; the host
//    test (ssd_index_test.cc) checks that those coordinates cover the tile exactly once.
// Operand loads are plain per-element loads with the scale/mask/convert applied on the way into
// shared memory (the operands are always transformed: decays, dt', masks, dtype conversion),
// so no cp.async/TMA copy atom is used.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>

#include "cc/kernels/common/cuda_math.cuh"
#include "cc/kernels/ssd/ssd_layout.h"
#include "cc/kernels/ssd/ssd_tile_layout.h"
#include "cc/kernels/ssd/ssd_params.h"

namespace visionssm::ssd {

// The accumulator fragment of one thread (32 floats).
template <typename T>
__device__ __forceinline__ auto make_acc() {
  typename TileGemm<T>::TiledMma mma;
  auto acc = cute::partition_fragment_C(mma, typename TileGemm<T>::TileShape{});
  cute::clear(acc);
  return acc;
}

// acc += A B^T with A, B the 64 x 64 K-major shared tiles (A rows = output rows, B rows = output
// columns). Callers synchronise before (tiles filled) and after (before refilling them).
template <typename T, typename Acc>
__device__ __forceinline__ void tile_mma(const typename TileGemm<T>::E* a, const typename TileGemm<T>::E* b,
                                         Acc& acc) {
  using G = TileGemm<T>;
  typename G::TiledMma mma;
  auto thr = mma.get_thread_slice(threadIdx.x);
  auto sA = cute::make_tensor(cute::make_smem_ptr(a), typename G::SmemLayout{});
  auto sB = cute::make_tensor(cute::make_smem_ptr(b), typename G::SmemLayout{});
  auto tCsA = thr.partition_A(sA);
  auto tCsB = thr.partition_B(sB);
  auto tCrA = thr.partition_fragment_A(sA);
  auto tCrB = thr.partition_fragment_B(sB);
  CUTE_UNROLL
  for (int k = 0; k < cute::size<2>(tCrA); ++k) {
    cute::copy(tCsA(cute::_, cute::_, k), tCrA(cute::_, cute::_, k));
    cute::copy(tCsB(cute::_, cute::_, k), tCrB(cute::_, cute::_, k));
    cute::gemm(mma, acc, tCrA(cute::_, cute::_, k), tCrB(cute::_, cute::_, k), acc);
  }
}

// f(row, col, value&) for every accumulator element of this thread, in tile coordinates.
template <typename T, typename Acc, typename F>
__device__ __forceinline__ void for_each_acc(Acc& acc, F&& f) {
  typename TileGemm<T>::TiledMma mma;
  auto thr = mma.get_thread_slice(threadIdx.x);
  auto coord = thr.partition_C(cute::make_identity_tensor(typename TileGemm<T>::TileShape{}));
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc); ++i) f(int(cute::get<0>(coord(i))), int(cute::get<1>(coord(i))), acc(i));
}

// s(r, k) = E(f(r, k)) over the 64 x 64 tile. kRowFast: consecutive threads take consecutive rows
// (when the tile row is the contiguous dimension in global memory), else consecutive columns.
template <typename T, bool kRowFast, typename F>
__device__ __forceinline__ void fill(typename TileGemm<T>::E* s, F&& f) {
  using G = TileGemm<T>;
  for (int i = threadIdx.x; i < kTile * kTile; i += kMmaThreads) {
    const int r = kRowFast ? i % kTile : i / kTile;
    const int k = kRowFast ? i / kTile : i % kTile;
    s[r * G::kLd + k] = typename G::E(f(r, k));
  }
}

// One (batch, head, chunk): pointers at the chunk's first token, the valid token count q, and
// zero-filled element reads (t, feature beyond q / the size read 0: the ragged edges of a tile).
template <typename T>
struct ChunkIn {
  const T *x, *B, *C;
  int64_t xt, xp, Bt, Bn, Ct, Cn;
  int64_t q, P, N;
  const float *dt, *cumsum;  // dt', in-chunk cumsum (Q floats each, workspace)
  int64_t bh_chunk;          // (batch * heads + head) * chunks + chunk: index of the chunk's workspace rows

  __device__ ChunkIn(const Params& p, const Geometry& g, const ChunkCoord& cc) {
    const int64_t t0 = cc.chunk * g.Q, grp = g.head_group(cc.head);
    q = g.tokens(cc.chunk), P = g.headdim, N = g.dstate;
    x = reinterpret_cast<const T*>(p.x.ptr) + cc.batch * p.x.stride[0] + t0 * p.x.stride[1] + cc.head * p.x.stride[2];
    xt = p.x.stride[1], xp = p.x.stride[3];
    B = reinterpret_cast<const T*>(p.B.ptr) + cc.batch * p.B.stride[0] + t0 * p.B.stride[1] + grp * p.B.stride[2];
    Bt = p.B.stride[1], Bn = p.B.stride[3];
    C = reinterpret_cast<const T*>(p.C.ptr) + cc.batch * p.C.stride[0] + t0 * p.C.stride[1] + grp * p.C.stride[2];
    Ct = p.C.stride[1], Cn = p.C.stride[3];
    bh_chunk = g.bhc(cc.batch, cc.head, cc.chunk);
    dt = reinterpret_cast<const float*>(p.ws_dt) + bh_chunk * g.Q;
    cumsum = reinterpret_cast<const float*>(p.ws_cumsum) + bh_chunk * g.Q;
  }
  __device__ __forceinline__ float xv(int64_t t, int64_t i) const {
    return t < q && i < P ? cuda::to_float(x[t * xt + i * xp]) : 0.f;
  }
  __device__ __forceinline__ float Bv(int64_t t, int64_t n) const {
    return t < q && n < N ? cuda::to_float(B[t * Bt + n * Bn]) : 0.f;
  }
  __device__ __forceinline__ float Cv(int64_t t, int64_t n) const {
    return t < q && n < N ? cuda::to_float(C[t * Ct + n * Cn]) : 0.f;
  }
};

// Per-token factors of chunk `in` into shared vectors of length Q (threads stride over tokens):
//   scale: the factor on x_j in the chunk state and dx: dt'_j (causal) or w_j = -dt'_j A;
//   decay: exp(cumsum_last - cumsum_j) (causal) or 1.
template <typename T>
__device__ __forceinline__ void token_factors(const Params& p, const Geometry& g, const ChunkIn<T>& in, float A,
                                              float* s_cumsum, float* s_dt, float* s_scale, float* s_decay) {
  const float last = in.cumsum[g.Q - 1];
  for (int i = threadIdx.x; i < g.Q; i += blockDim.x) {
    const float d = in.dt[i], cs = in.cumsum[i];
    if (s_cumsum) s_cumsum[i] = cs;
    if (s_dt) s_dt[i] = d;
    if (s_scale) s_scale[i] = p.causal ? d : -d * A;
    if (s_decay) s_decay[i] = p.causal ? __expf(last - cs) : 1.f;
  }
}

__device__ __forceinline__ float head_A(const Params& p, int64_t h) {
  return reinterpret_cast<const float*>(p.A.ptr)[h * p.A.stride[0]];
}

}  // namespace visionssm::ssd
