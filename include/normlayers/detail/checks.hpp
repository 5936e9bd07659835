// SPDX-License-Identifier: MIT
#pragma once

// Argument checks shared by every layer: tensors of matching dims, spans of
// the expected length. Each throws std::invalid_argument naming the layer, the
// argument, what was given and what was expected.

#include <functional>
#include <numeric>
#include <type_traits>
#include <vector>

#include <normlayers/detail/scalar.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/span.hpp>

namespace normlayers::detail {

inline Index product(const std::vector<Index>& dims) {
  return std::accumulate(dims.begin(), dims.end(), Index(1), std::multiplies<Index>());
}

template <typename A, typename B>
void check_same_dims(const char* layer, const char* what, const A& a, const char* ref_name,
                     const B& ref) {
  static_assert(tensor_traits<A>::rank == tensor_traits<B>::rank, "tensors must have one rank");
  static_assert(tensor_traits<A>::layout == tensor_traits<B>::layout,
                "tensors must have one storage order");
  static_assert(std::is_same_v<scalar_of<A>, scalar_of<B>>, "tensors must have one scalar type");
  const auto da = dims_of(a), db = dims_of(ref);
  if (da != db)
    throw_invalid(layer, what, " has dims ", dims_text{da}, ", expected ", dims_text{db}, " (",
                  ref_name, ")");
}

template <typename T>
void check_size(const char* layer, const char* what, span<T> s, Index expected,
                const char* meaning) {
  if (s && s.size() != expected)
    throw_invalid(layer, what, " has ", s.size(), " elements, expected ", expected, " (", meaning,
                  ")");
}

}  // namespace normlayers::detail
