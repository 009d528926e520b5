// Parallel loops for the CPU kernels. OpenMP: torch bundles libgomp.so.1 under the same soname,
// so inside a torch process both share one runtime and one thread pool.
#pragma once

#include <algorithm>
#include <atomic>
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

// Calls body(i) for i in [0, n) on `threads` workers (<= 0: all available) that each take the
// next index from a shared counter: the machine may be shared, and with a static split a
// descheduled worker's share would wait for it. Each body(i) must write only its own outputs, so
// results do not depend on which worker ran it.
template <typename Body>
void parallel_for_dynamic(int64_t n, int threads, const Body& body) {
  if (threads <= 0) threads = max_threads();
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  if (workers == 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(workers, static_cast<int>(workers), [&](int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      body(i);
  });
}

}  // namespace visionssm
