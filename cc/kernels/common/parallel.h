// Parallel loops for the CPU kernels. OpenMP: torch bundles libgomp.so.1 under the same soname,
// so inside a torch process both share one runtime and one thread pool.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace visionssm {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Calls body(i) for i in [0, n), spread over `threads` threads (<= 0: all available).
// Iterations must be independent. Static schedule: equal-cost rows, no scheduling overhead.
template <typename Body>
void parallel_for(int64_t n, int threads, const Body& body) {
#ifdef _OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
  if (threads > 1 && n > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace visionssm
