// SPDX-License-Identifier: MIT
#pragma once

// Every violated precondition throws std::invalid_argument, and misuse (such as
// backward before forward) std::logic_error, with a message of the form
//   normlayers::<Layer>: <argument> <what was given>, expected <what was expected>
// A throwing call leaves the layer's parameters and statistics as they were.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail {

template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

// Prints a list of extents as [2, 3, 4].
struct dims_text {
  const std::vector<Eigen::Index>& dims;
};
inline std::ostream& operator<<(std::ostream& os, const dims_text& d) {
  os << '[';
  for (std::size_t i = 0; i < d.dims.size(); ++i) os << (i ? ", " : "") << d.dims[i];
  return os << ']';
}

template <typename... Parts>
[[noreturn]] void throw_invalid(const char* layer, Parts&&... parts) {
  throw std::invalid_argument(concat("normlayers::", layer, ": ", std::forward<Parts>(parts)...));
}

template <typename... Parts>
[[noreturn]] void throw_misuse(const char* layer, Parts&&... parts) {
  throw std::logic_error(concat("normlayers::", layer, ": ", std::forward<Parts>(parts)...));
}

inline void check_eps(const char* layer, double eps) {
  if (!(eps >= 0.0)) throw_invalid(layer, "eps is ", eps, ", expected a value >= 0");
}

}  // namespace normlayers::detail
