// Warp-level scans of the affine maps h -> a*h + b that the selective scan composes.
//
// Composition "first (a0, b0), then (a1, b1)" is (a1*a0, a1*b0 + b1); it is associative, so a
// Kogge-Stone scan over the 32 lanes (5 shuffle steps) gives every lane the composition of all maps
// of the lanes before it (forward) or after it (reverse). All 32 lanes must call these together.
#pragma once

namespace visionssm::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// In place: lane i ends with the composition of lanes 0..i (inclusive, in order).
__device__ __forceinline__ void warp_inclusive_scan(float& a, float& b, int lane) {
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const float pa = __shfl_up_sync(kFullMask, a, offset);
    const float pb = __shfl_up_sync(kFullMask, b, offset);
    if (lane >= offset) {  // earlier maps (pa, pb) first, then ours
      b = a * pb + b;
      a = a * pa;
    }
  }
}

// In place: lane i ends with the composition of lanes 31, 30, ..., i (the maps applied from the
// end of the sequence towards lane i, as a reverse-time recurrence needs).
__device__ __forceinline__ void warp_reverse_inclusive_scan(float& a, float& b, int lane) {
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const float pa = __shfl_down_sync(kFullMask, a, offset);
    const float pb = __shfl_down_sync(kFullMask, b, offset);
    if (lane + offset < 32) {  // later lanes' maps first, then ours
      b = a * pb + b;
      a = a * pa;
    }
  }
}

// Fixed-order butterfly sum: every lane gets the same total, independent of timing.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

}  // namespace visionssm::cuda
