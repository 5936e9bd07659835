// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <type_traits>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail {

using Index = Eigen::Index;

// The type statistics and sums are accumulated in (PyTorch's opmath_t):
// float for the 16-bit types, the scalar itself otherwise.
template <typename Scalar>
struct accumulator {
  using type = Scalar;
};
template <>
struct accumulator<Eigen::half> {
  using type = float;
};
template <>
struct accumulator<Eigen::bfloat16> {
  using type = float;
};
template <typename Scalar>
using acc_t = typename accumulator<Scalar>::type;

// The type of learnable parameters and their gradients: the accumulator type, so
// half/bfloat16 activations keep float weights as in mixed-precision training.
template <typename Scalar>
using param_t = acc_t<Scalar>;

// Arrays of per-statistic values and partial sums that kernels load and
// store as packets, row after row: aligned as Eigen aligns its tensors (to
// the widest packet of the ISA compiled for). A packet that straddles two
// cache lines costs twice: on AVX-512 (AMD EPYC), GroupNorm channels-last's
// apply with 16-byte-aligned constants ran at half the speed.
template <typename T>
using aligned_vector = std::vector<T, Eigen::aligned_allocator<T>>;

// Partial sums of work items, `parts` consecutive arrays of n values: added
// into the first array in item order, so the result never depends on which
// thread ran which item (a loop over the n values that vectorizes).
template <typename Acc>
void add_partials_into_first(Acc* partial, Index parts, std::size_t n) {
  for (Index k = 1; k < parts; ++k)
    for (std::size_t s = 0; s < n; ++s) partial[s] += partial[std::size_t(k) * n + s];
}

template <typename Scalar>
inline constexpr bool is_supported_scalar_v =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

}  // namespace normlayers::detail
