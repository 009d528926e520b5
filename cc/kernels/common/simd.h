// Fixed-width vectors for the CPU kernels: GCC vector extensions, lowered to whatever ISA the
// enclosing clone (clones.h) targets, so one source serves AVX2 and the SSE baseline.
#pragma once

#include <cstddef>
#include <cstring>

#include "cc/kernels/common/clones.h"

namespace visionssm::simd {

template <typename T, int N, std::size_t Align = N * sizeof(T)>
struct VecType {
  typedef T type __attribute__((vector_size(N * sizeof(T)), aligned(Align)));
};

// N lanes of T, naturally aligned (a local or register value).
template <typename T, int N>
using vec = typename VecType<T, N>::type;

// N lanes of T that may sit at any address a T may (values kept in buffers of T and passed
// between always-inline helpers without realigning the stack).
template <typename T, int N>
using vec_unaligned = typename VecType<T, N, alignof(T)>::type;

// Loads/stores through memcpy: no alignment or aliasing assumptions, one vector move each.
template <typename V, typename T>
VSSM_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T, typename V>
VSSM_INLINE void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace visionssm::simd
