// Argument checks for kernel entry points. Python validates user input first (with messages that
// name the argument); these guard the C++ boundary against misuse of the raw-pointer ABI.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace visionssm {

template <typename... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::invalid_argument(message.str());
}

#define VSSM_CHECK(cond, ...)                                \
  do {                                                       \
    if (!(cond)) ::visionssm::fail(__func__, ": ", __VA_ARGS__); \
  } while (0)

}  // namespace visionssm
