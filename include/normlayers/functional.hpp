// SPDX-License-Identifier: MIT
#pragma once

// Stateless forward and backward of every norm, on caller buffers. The modules
// (LayerNorm, RMSNorm, ...) are thin wrappers over these; a framework that
// keeps several forwards in flight calls them directly and keeps the saved
// statistics itself.
//
// Conventions, for every function here:
// - x, y, dy, dx are Eigen::Tensor or Eigen::TensorMap of one scalar type
//   (float or double), one rank and one storage order; y may be x, dx may be dy.
// - Parameters and their gradients are normlayers::span (convertible from a
//   rank-1 Eigen::Tensor, TensorMap or std::vector); an absent span means
//   "no such parameter" (PyTorch's None). Gradients are *added* into the spans.
// - Saved statistics (mean, rstd) hold one value per statistic in the input's
//   storage order of the statistic axes.
// - A violated precondition throws std::invalid_argument before anything is
//   written.

#include <type_traits>
#include <vector>

#include <normlayers/detail/scalar.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/detail/trailing_norm.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/span.hpp>

namespace normlayers {

using Shape = std::vector<Eigen::Index>;

// The parameter and accumulator types of a tensor type X (float and double:
// the scalar itself).
template <typename X>
using param_of = detail::param_t<detail::scalar_of<X>>;
template <typename X>
using acc_of = detail::acc_t<detail::scalar_of<X>>;

namespace detail {

template <bool Centered, typename X, typename Y>
void trailing_forward_checked(const char* layer, const X& x, Y& y, const Shape& normalized_shape,
                              span<const param_of<X>> weight, span<const param_of<X>> bias,
                              double eps, span<acc_of<X>> mean, span<acc_of<X>> rstd) {
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  check_eps(layer, eps);
  const TrailingGeometry g = trailing_geometry(layer, x, normalized_shape);
  check_same_dims(layer, "output", y, "the input's", x);
  check_size(layer, "weight", weight, g.size, "the product of normalized_shape");
  check_size(layer, "bias", bias, g.size, "the product of normalized_shape");
  check_size(layer, "mean", mean, g.rows, "one per normalized row");
  check_size(layer, "rstd", rstd, g.rows, "one per normalized row");
  trailing_norm_forward<Centered>(g, param_order(normalized_shape, tensor_traits<X>::row_major),
                                  x.data(), y.data(), weight, bias,
                                  static_cast<acc_of<X>>(eps), mean.data(), rstd.data());
}

template <bool Centered, typename X, typename DY, typename DX>
void trailing_backward_checked(const char* layer, const X& x, const DY& dy, DX& dx,
                               const Shape& normalized_shape, span<const param_of<X>> weight,
                               span<const acc_of<X>> mean, span<const acc_of<X>> rstd,
                               span<param_of<X>> weight_grad, span<param_of<X>> bias_grad) {
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  const TrailingGeometry g = trailing_geometry(layer, x, normalized_shape);
  check_same_dims(layer, "grad_output", dy, "the input's", x);
  check_same_dims(layer, "grad_input", dx, "the input's", x);
  check_size(layer, "weight", weight, g.size, "the product of normalized_shape");
  check_size(layer, "weight_grad", weight_grad, g.size, "the product of normalized_shape");
  check_size(layer, "bias_grad", bias_grad, g.size, "the product of normalized_shape");
  if (Centered && (!mean || mean.size() != g.rows))
    throw_invalid(layer, "mean has ", mean.size(), " elements, expected ", g.rows,
                  " (one per normalized row, from the forward)");
  if (!rstd || rstd.size() != g.rows)
    throw_invalid(layer, "rstd has ", rstd.size(), " elements, expected ", g.rows,
                  " (one per normalized row, from the forward)");
  trailing_norm_backward<Centered>(g, param_order(normalized_shape, tensor_traits<X>::row_major),
                                   x.data(), dy.data(), dx.data(), weight, mean.data(),
                                   rstd.data(), weight_grad, bias_grad);
}

}  // namespace detail

// LayerNorm over the trailing `normalized_shape` of x:
//   y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps), var biased.
// weight, bias: absent or product(normalized_shape) values in PyTorch's order.
// mean, rstd: absent or one value per row (product of the leading dims).
template <typename X, typename Y>
void layer_norm_forward(const X& x, Y&& y, const Shape& normalized_shape,
                        span<const param_of<X>> weight = {}, span<const param_of<X>> bias = {},
                        double eps = 1e-5, span<acc_of<X>> mean = {}, span<acc_of<X>> rstd = {}) {
  detail::trailing_forward_checked<true>("layer_norm_forward", x, y, normalized_shape, weight,
                                         bias, eps, mean, rstd);
}

// Gradient of layer_norm_forward: writes dx, adds dweight into weight_grad and
// dbias into bias_grad (each absent or product(normalized_shape) values).
// mean and rstd are those the forward filled.
template <typename X, typename DY, typename DX>
void layer_norm_backward(const X& x, const DY& dy, DX&& dx, const Shape& normalized_shape,
                         span<const param_of<X>> weight, span<const acc_of<X>> mean,
                         span<const acc_of<X>> rstd, span<param_of<X>> weight_grad = {},
                         span<param_of<X>> bias_grad = {}) {
  detail::trailing_backward_checked<true>("layer_norm_backward", x, dy, dx, normalized_shape,
                                          weight, mean, rstd, weight_grad, bias_grad);
}

// RMSNorm over the trailing `normalized_shape` of x:
//   y = x * rrms * weight,  rrms = 1 / sqrt(mean(x^2) + eps).
// rrms: absent or one value per row. PyTorch's default eps (None) is
// std::numeric_limits<Scalar>::epsilon(); pass it explicitly here.
template <typename X, typename Y>
void rms_norm_forward(const X& x, Y&& y, const Shape& normalized_shape,
                      span<const param_of<X>> weight, double eps, span<acc_of<X>> rrms = {}) {
  detail::trailing_forward_checked<false>("rms_norm_forward", x, y, normalized_shape, weight, {},
                                          eps, {}, rrms);
}

// Gradient of rms_norm_forward: writes dx and adds dweight into weight_grad.
template <typename X, typename DY, typename DX>
void rms_norm_backward(const X& x, const DY& dy, DX&& dx, const Shape& normalized_shape,
                       span<const param_of<X>> weight, span<const acc_of<X>> rrms,
                       span<param_of<X>> weight_grad = {}) {
  detail::trailing_backward_checked<false>("rms_norm_backward", x, dy, dx, normalized_shape,
                                           weight, {}, rrms, weight_grad, {});
}

}  // namespace normlayers
