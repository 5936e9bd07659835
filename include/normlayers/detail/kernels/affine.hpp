// SPDX-License-Identifier: MIT
#pragma once

// Compile-time dispatch on which affine parameters are present, so inner loops
// carry no branches: with_affine(gamma, beta, f) invokes
// f(std::bool_constant<has_gamma>, std::bool_constant<has_beta>).

#include <type_traits>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail::kernels {

template <typename P, typename F>
void with_affine(const P* gamma, const P* beta, F&& f) {
  if (gamma && beta) {
    f(std::true_type{}, std::true_type{});
  } else if (gamma) {
    f(std::true_type{}, std::false_type{});
  } else if (beta) {
    f(std::false_type{}, std::true_type{});
  } else {
    f(std::false_type{}, std::false_type{});
  }
}

}  // namespace normlayers::detail::kernels
