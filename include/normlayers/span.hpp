// SPDX-License-Identifier: MIT
#pragma once

// normlayers::span<T>: a pointer and a length, the way the functional API takes
// caller-owned vectors (parameters, gradients, saved statistics). It converts
// implicitly from anything with .data() and .size(): a rank-1 Eigen::Tensor or
// TensorMap, std::vector, std::array. A default-constructed span is "absent"
// (as PyTorch's `weight=None`).

#include <cstddef>
#include <type_traits>
#include <utility>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers {

template <typename T>
class span {
 public:
  using element_type = T;
  using index_type = Eigen::Index;

  constexpr span() noexcept = default;
  constexpr span(T* data, index_type size) noexcept : data_(data), size_(size) {}

  template <typename Container,
            typename = std::enable_if_t<
                !std::is_same_v<std::remove_cv_t<std::remove_reference_t<Container>>, span> &&
                std::is_convertible_v<decltype(std::declval<Container&>().data()), T*>>>
  constexpr span(Container& c) noexcept  // NOLINT(google-explicit-constructor)
      : data_(c.data()), size_(static_cast<index_type>(c.size())) {}

  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  constexpr span(span<U> other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), size_(other.size()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr index_type size() const noexcept { return size_; }
  constexpr explicit operator bool() const noexcept { return data_ != nullptr; }
  constexpr T& operator[](index_type i) const noexcept { return data_[i]; }

 private:
  T* data_ = nullptr;
  index_type size_ = 0;
};

}  // namespace normlayers
