// SPDX-License-Identifier: MIT
#pragma once

// Compile-time dispatch on which affine parameters are present, so inner loops
// carry no branches: call(gamma, beta, f) invokes f(std::bool_constant<has_gamma>,
// std::bool_constant<has_beta>).

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

// gamma[i] if present, else 1; beta[i] if present, else 0.
template <bool Has, typename Acc, typename P>
inline Acc scale_at(const P* gamma, Eigen::Index i) {
  if constexpr (Has) {
    return static_cast<Acc>(gamma[i]);
  } else {
    (void)gamma;
    (void)i;
    return Acc(1);
  }
}
template <bool Has, typename Acc, typename P>
inline Acc shift_at(const P* beta, Eigen::Index i) {
  if constexpr (Has) {
    return static_cast<Acc>(beta[i]);
  } else {
    (void)beta;
    (void)i;
    return Acc(0);
  }
}

}  // namespace normlayers::detail::kernels
