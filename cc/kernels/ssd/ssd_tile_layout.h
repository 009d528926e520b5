// The CuTe types of the SSD kernels' 64 x 64 tensor-core tile (used by ssd_cuda_tile.cuh), in a
// header the host compiler can read too, so ssd_index_test.cc checks the very layouts the kernels
// use. Types only: no device code.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/atom/mma_atom.hpp>
#include <cute/tensor.hpp>

#include "cc/kernels/ssd/ssd_layout.h"

namespace visionssm::ssd {

// Operand element and MMA atom per input dtype. float32 inputs run on TF32 tensor cores (10-bit
// mantissa operands, fp32 accumulation): relative error per product ~2^-11, see docs/perf.md.
template <typename T>
struct MmaFor;
template <>
struct MmaFor<__half> {
  using E = cute::half_t;
  using Atom = cute::SM80_16x8x16_F32F16F16F32_TN;
};
template <>
struct MmaFor<__nv_bfloat16> {
  using E = cute::bfloat16_t;
  using Atom = cute::SM80_16x8x16_F32BF16BF16F32_TN;
};
template <>
struct MmaFor<float> {
  using E = cute::tfloat32_t;
  using Atom = cute::SM80_16x8x8_F32TF32TF32F32_TN;
};

template <typename T>
struct TileGemm {
  using E = typename MmaFor<T>::E;
  using Atom = typename MmaFor<T>::Atom;
  using AtomK = decltype(cute::size<2>(typename cute::MMA_Traits<Atom>::Shape_MNK{}));
  using TileShape = cute::Shape<cute::Int<kTile>, cute::Int<kTile>>;
  using TiledMma = decltype(cute::make_tiled_mma(cute::MMA_Atom<Atom>{},
                                                 cute::Layout<cute::Shape<cute::_2, cute::_2, cute::_1>>{},
                                                 cute::Tile<cute::Int<kTile>, cute::Int<kTile>, AtomK>{}));
  // Row r, column k at r * kLd + k; 16 bytes of padding per row move consecutive rows to other
  // banks for the fragment loads.
  static constexpr int kLd = kTile + 16 / int(sizeof(E));
  static constexpr int kElems = kTile * kLd;
  using SmemLayout = cute::Layout<TileShape, cute::Stride<cute::Int<kLd>, cute::_1>>;
};

}  // namespace visionssm::ssd
