// Per-thread scratch buffers for the CPU kernels: grown on demand, never shrunk, so a thread
// allocates once per run of tasks. One buffer per element type and thread: a caller must not
// hold two scratch<T>() results of the same T at once.
#pragma once

#include <cstddef>
#include <vector>

namespace visionssm {

template <typename T>
T* scratch(std::size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace visionssm
