// SPDX-License-Identifier: MIT
#pragma once

// What the library needs to know about an Eigen::Tensor or Eigen::TensorMap:
// its scalar, rank, storage order, extents and data pointer.

#include <type_traits>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail {

template <typename T>
struct tensor_traits {
  using plain = std::remove_cv_t<std::remove_reference_t<T>>;
  using eigen_traits = Eigen::internal::traits<plain>;
  using scalar = std::remove_const_t<typename eigen_traits::Scalar>;
  static constexpr int rank = static_cast<int>(eigen_traits::NumDimensions);
  static constexpr int layout = static_cast<int>(eigen_traits::Layout);
  static constexpr bool row_major = layout == static_cast<int>(Eigen::RowMajor);
  // The owning tensor type with the same scalar, rank and storage order.
  using tensor = Eigen::Tensor<scalar, rank, layout, Eigen::Index>;
};

template <typename T>
using scalar_of = typename tensor_traits<T>::scalar;

template <typename T>
std::vector<Eigen::Index> dims_of(const T& t) {
  constexpr auto rank = static_cast<std::size_t>(tensor_traits<T>::rank);
  std::vector<Eigen::Index> d(rank);
  for (std::size_t i = 0; i < rank; ++i) d[i] = t.dimensions()[i];
  return d;
}

// A new tensor with the extents of `like`.
template <typename T>
typename tensor_traits<T>::tensor empty_like(const T& like) {
  typename tensor_traits<T>::tensor out(like.dimensions());
  return out;
}

}  // namespace normlayers::detail
