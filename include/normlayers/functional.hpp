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
// - The last argument, a normlayers::Parallel, says where the loops run
//   (default: the calling thread); results are the same for any thread count.

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include <normlayers/detail/channel_norm.hpp>
#include <normlayers/detail/instance_group_norm.hpp>
#include <normlayers/detail/running_stats.hpp>
#include <normlayers/detail/scalar.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/detail/trailing_norm.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/parallel.hpp>
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
                              double eps, span<acc_of<X>> mean, span<acc_of<X>> rstd,
                              const Parallel& parallel) {
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  check_eps(layer, eps);
  const TrailingGeometry g = trailing_geometry(layer, x, normalized_shape);
  check_same_dims(layer, "output", y, "the input's", x);
  check_size(layer, "weight", weight, g.size, "the product of normalized_shape");
  check_size(layer, "bias", bias, g.size, "the product of normalized_shape");
  check_size(layer, "mean", mean, g.rows, "one per normalized row");
  check_size(layer, "rstd", rstd, g.rows, "one per normalized row");
  trailing_norm_forward<Centered>(g, parallel, param_order(normalized_shape, tensor_traits<X>::row_major),
                                  x.data(), y.data(), weight, bias,
                                  static_cast<acc_of<X>>(eps), mean.data(), rstd.data());
}

template <bool Centered, typename X, typename DY, typename DX>
void trailing_backward_checked(const char* layer, const X& x, const DY& dy, DX& dx,
                               const Shape& normalized_shape, span<const param_of<X>> weight,
                               span<const acc_of<X>> mean, span<const acc_of<X>> rstd,
                               span<param_of<X>> weight_grad, span<param_of<X>> bias_grad,
                               const Parallel& parallel,
                               aligned_vector<acc_of<X>>* workspace = nullptr) {
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
  trailing_norm_backward<Centered>(g, parallel, param_order(normalized_shape, tensor_traits<X>::row_major),
                                   x.data(), dy.data(), dx.data(), weight, mean.data(),
                                   rstd.data(), weight_grad, bias_grad, workspace);
}

}  // namespace detail

// LayerNorm over the trailing `normalized_shape` of x:
//   y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps), var biased.
// weight, bias: absent or product(normalized_shape) values in PyTorch's order.
// mean, rstd: absent or one value per row (product of the leading dims).
template <typename X, typename Y>
void layer_norm_forward(const X& x, Y&& y, const Shape& normalized_shape,
                        span<const param_of<X>> weight = {}, span<const param_of<X>> bias = {},
                        double eps = 1e-5, span<acc_of<X>> mean = {}, span<acc_of<X>> rstd = {},
                        const Parallel& parallel = {}) {
  detail::trailing_forward_checked<true>("layer_norm_forward", x, y, normalized_shape, weight,
                                         bias, eps, mean, rstd, parallel);
}

// Gradient of layer_norm_forward: writes dx, adds dweight into weight_grad and
// dbias into bias_grad (each absent or product(normalized_shape) values).
// mean and rstd are those the forward filled.
template <typename X, typename DY, typename DX>
void layer_norm_backward(const X& x, const DY& dy, DX&& dx, const Shape& normalized_shape,
                         span<const param_of<X>> weight, span<const acc_of<X>> mean,
                         span<const acc_of<X>> rstd, span<param_of<X>> weight_grad = {},
                         span<param_of<X>> bias_grad = {}, const Parallel& parallel = {}) {
  detail::trailing_backward_checked<true>("layer_norm_backward", x, dy, dx, normalized_shape,
                                          weight, mean, rstd, weight_grad, bias_grad, parallel);
}

// RMSNorm over the trailing `normalized_shape` of x:
//   y = x * rrms * weight,  rrms = 1 / sqrt(mean(x^2) + eps).
// rrms: absent or one value per row. PyTorch's default eps (None) is
// std::numeric_limits<Scalar>::epsilon(); pass it explicitly here.
template <typename X, typename Y>
void rms_norm_forward(const X& x, Y&& y, const Shape& normalized_shape,
                      span<const param_of<X>> weight, double eps, span<acc_of<X>> rrms = {},
                      const Parallel& parallel = {}) {
  detail::trailing_forward_checked<false>("rms_norm_forward", x, y, normalized_shape, weight, {},
                                          eps, {}, rrms, parallel);
}

// Gradient of rms_norm_forward: writes dx and adds dweight into weight_grad.
template <typename X, typename DY, typename DX>
void rms_norm_backward(const X& x, const DY& dy, DX&& dx, const Shape& normalized_shape,
                       span<const param_of<X>> weight, span<const acc_of<X>> rrms,
                       span<param_of<X>> weight_grad = {}, const Parallel& parallel = {}) {
  detail::trailing_backward_checked<false>("rms_norm_backward", x, dy, dx, normalized_shape,
                                           weight, {}, rrms, weight_grad, {}, parallel);
}

namespace detail {

// Validation shared by BatchNorm's functional form and module: the channel
// axis (num_features < 0: any count), the output's dims, one value per channel
// in every present span, and more than one value per channel when training.
template <typename X, typename Y>
ChannelGeometry batch_norm_geometry(const char* layer, const X& x, const Y& y, Index num_features,
                                    bool channels_last, bool training) {
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  const ChannelGeometry g = channel_geometry(layer, x, num_features, channels_last);
  check_same_dims(layer, "output", y, "the input's", x);
  if (training && g.count == 1)
    throw_invalid(layer, "expected more than 1 value per channel when training, got input of dims ",
                  dims_text{dims_of(x)});
  return g;
}

inline void check_per_channel(const char* layer, Index channels,
                       std::initializer_list<std::pair<const char*, Index>> sizes) {
  for (const auto& [name, size] : sizes)
    if (size >= 0 && size != channels)
      throw_invalid(layer, name, " has ", size, " elements, expected ", channels,
                    " (one per channel)");
}

template <typename T>
Index size_if(span<T> s) {
  return s ? s.size() : Index(-1);
}

// Normalizes x into y with batch statistics (batch_stats) or with the given
// per-channel mean/var; fills mean, biased var and rstd per channel (NaN for an
// empty input). Validated arguments only.
template <typename X, typename Y>
void batch_norm_run(const ChannelGeometry& g, const X& x, Y& y, span<const param_of<X>> weight,
                    span<const param_of<X>> bias, bool batch_stats,
                    span<const param_of<X>> stats_mean, span<const param_of<X>> stats_var,
                    double eps, acc_of<X>* mean, acc_of<X>* var, acc_of<X>* rstd,
                    const Parallel& parallel) {
  using Acc = acc_of<X>;
  if (g.view.size() == 0) {
    std::fill(mean, mean + g.channels, std::numeric_limits<Acc>::quiet_NaN());
    std::fill(var, var + g.channels, std::numeric_limits<Acc>::quiet_NaN());
    std::fill(rstd, rstd + g.channels, std::numeric_limits<Acc>::quiet_NaN());
    return;
  }
  channel_norm_forward(g.view, parallel, x.data(), y.data(), weight.data(), bias.data(),
                       static_cast<Acc>(eps), batch_stats, stats_mean.data(), stats_var.data(),
                       mean, var, rstd);
}

// Backward of batch_norm_run given its mean and rstd; adds into weight_grad/bias_grad.
template <typename X, typename DY, typename DX>
void batch_norm_backward_checked(const char* layer, const X& x, const DY& dy, DX& dx,
                                 Index num_features, bool channels_last,
                                 span<const param_of<X>> weight, span<const acc_of<X>> mean,
                                 span<const acc_of<X>> rstd, bool batch_stats,
                                 span<param_of<X>> weight_grad, span<param_of<X>> bias_grad,
                                 const Parallel& parallel) {
  using Acc = acc_of<X>;
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  const ChannelGeometry g = channel_geometry(layer, x, num_features, channels_last);
  check_same_dims(layer, "grad_output", dy, "the input's", x);
  check_same_dims(layer, "grad_input", dx, "the input's", x);
  check_per_channel(layer, g.channels,
                      {{"weight", size_if(weight)}, {"weight_grad", size_if(weight_grad)},
                       {"bias_grad", size_if(bias_grad)}, {"mean", mean.size()},
                       {"rstd", rstd.size()}});
  if (g.view.size() == 0) return;
  const auto c = static_cast<std::size_t>(g.channels);
  detail::aligned_vector<Acc> dgamma(weight_grad ? c : 0), dbeta(bias_grad ? c : 0);
  channel_norm_backward(g.view, parallel, x.data(), dy.data(), dx.data(), weight.data(), mean.data(),
                        rstd.data(), batch_stats, weight_grad ? dgamma.data() : nullptr,
                        bias_grad ? dbeta.data() : nullptr);
  for (std::size_t i = 0; i < dgamma.size(); ++i) weight_grad[Index(i)] += static_cast<param_of<X>>(dgamma[i]);
  for (std::size_t i = 0; i < dbeta.size(); ++i) bias_grad[Index(i)] += static_cast<param_of<X>>(dbeta[i]);
}

}  // namespace detail

// BatchNorm (torch.nn.functional.batch_norm) with the channel axis at dim 1, or
// last with channels_last. training: normalize with the batch's statistics
// (biased variance) and, when running_mean/running_var are given, blend them in:
// running = (1 - momentum) * running + momentum * batch (variance unbiased).
// Not training: normalize with running_mean/running_var (required).
// save_mean, save_rstd: absent or one per channel; the mean and 1/sqrt(var + eps)
// used, as batch_norm_backward wants them.
// Throws std::invalid_argument for mismatched dims or sizes, momentum outside
// [0, 1], eps < 0, or training with one value per channel.
template <typename X, typename Y>
void batch_norm_forward(const X& x, Y&& y, span<const param_of<X>> weight,
                        span<const param_of<X>> bias, span<param_of<X>> running_mean,
                        span<param_of<X>> running_var, bool training, double momentum = 0.1,
                        double eps = 1e-5, span<acc_of<X>> save_mean = {},
                        span<acc_of<X>> save_rstd = {}, bool channels_last = false,
                        const Parallel& parallel = {}) {
  using Acc = acc_of<X>;
  const char* layer = "batch_norm_forward";
  detail::check_eps(layer, eps);
  detail::check_momentum(layer, momentum);
  const auto g = detail::batch_norm_geometry(layer, x, y, -1, channels_last, training);
  detail::check_per_channel(
      layer, g.channels,
      {{"weight", detail::size_if(weight)}, {"bias", detail::size_if(bias)},
       {"running_mean", detail::size_if(running_mean)},
       {"running_var", detail::size_if(running_var)}, {"save_mean", detail::size_if(save_mean)},
       {"save_rstd", detail::size_if(save_rstd)}});
  if (bool(running_mean) != bool(running_var))
    detail::throw_invalid(layer, "running_mean and running_var must be given together");
  if (!training && !running_mean)
    detail::throw_invalid(layer, "running_mean and running_var are required when not training");
  const auto c = static_cast<std::size_t>(g.channels);
  detail::aligned_vector<Acc> mean(c), var(c), rstd(c);
  detail::batch_norm_run(g, x, y, weight, bias, training, span<const param_of<X>>(running_mean),
                         span<const param_of<X>>(running_var), eps, mean.data(), var.data(),
                         rstd.data(), parallel);
  if (training && running_mean && g.count > 0) {
    const Acc unbias = static_cast<Acc>(g.count) / static_cast<Acc>(g.count - 1);
    for (Acc& v : var) v *= unbias;
    detail::blend_running_stats(running_mean.data(), running_var.data(), g.channels, mean.data(),
                                var.data(), momentum);
  }
  if (save_mean) std::copy(mean.begin(), mean.end(), save_mean.data());
  if (save_rstd) std::copy(rstd.begin(), rstd.end(), save_rstd.data());
}

// Gradient of batch_norm_forward: writes dx and adds dweight/dbias into
// weight_grad/bias_grad (absent or one per channel). save_mean, save_rstd are
// those the forward filled; training as given to the forward (true: gradient
// through the batch statistics; false: dx = weight * rstd * dy).
template <typename X, typename DY, typename DX>
void batch_norm_backward(const X& x, const DY& dy, DX&& dx, span<const param_of<X>> weight,
                         span<const acc_of<X>> save_mean, span<const acc_of<X>> save_rstd,
                         bool training, span<param_of<X>> weight_grad = {},
                         span<param_of<X>> bias_grad = {}, bool channels_last = false,
                         const Parallel& parallel = {}) {
  detail::batch_norm_backward_checked("batch_norm_backward", x, dy, dx, -1, channels_last, weight,
                                      save_mean, save_rstd, training, weight_grad, bias_grad,
                                      parallel);
}

namespace detail {

// Validation shared by InstanceNorm's functional form and module.
template <typename X, typename Y>
InstanceGeometry instance_norm_geometry(const char* layer, const X& x, const Y& y,
                                        Index num_features, bool channels_last,
                                        bool use_input_stats) {
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  const InstanceGeometry g =
      instance_geometry(layer, x, num_features, channels_last, 3, "(N, C, spatial...)");
  check_same_dims(layer, "output", y, "the input's", x);
  if (use_input_stats && g.count == 1)
    throw_invalid(layer, "expected more than 1 spatial element when training, got input of dims ",
                  dims_text{dims_of(x)});
  return g;
}

template <typename X, typename DY, typename DX>
InstanceGeometry instance_norm_backward_geometry(const char* layer, const X& x, const DY& dy,
                                                 const DX& dx, Index num_features,
                                                 bool channels_last) {
  const InstanceGeometry g =
      instance_geometry(layer, x, num_features, channels_last, 3, "(N, C, spatial...)");
  check_same_dims(layer, "grad_output", dy, "the input's", x);
  check_same_dims(layer, "grad_input", dx, "the input's", x);
  return g;
}

template <typename X, typename DY, typename DX>
GroupGeometry group_norm_backward_geometry(const char* layer, const X& x, const DY& dy,
                                           const DX& dx, Index num_groups, Index num_channels,
                                           bool channels_last) {
  static_assert(is_supported_scalar_v<scalar_of<X>>, "normlayers supports float and double");
  const GroupGeometry g = group_geometry(layer, x, num_groups, num_channels, channels_last);
  check_same_dims(layer, "grad_output", dy, "the input's", x);
  check_same_dims(layer, "grad_input", dx, "the input's", x);
  return g;
}

}  // namespace detail

// InstanceNorm (torch.nn.functional.instance_norm): statistics per (sample,
// channel) over the spatial axes; channel axis at dim 1, or last with
// channels_last; rank >= 3. use_input_stats: each instance's own statistics,
// and running_mean/running_var (when given) blend in the batch-mean of them
// (variance unbiased per instance) with factor momentum. Otherwise the running
// statistics (required) normalize. save_mean, save_rstd: absent or N*C values,
// in the input's storage order of (N, C).
template <typename X, typename Y>
void instance_norm_forward(const X& x, Y&& y, span<const param_of<X>> weight = {},
                           span<const param_of<X>> bias = {}, span<param_of<X>> running_mean = {},
                           span<param_of<X>> running_var = {}, bool use_input_stats = true,
                           double momentum = 0.1, double eps = 1e-5,
                           span<acc_of<X>> save_mean = {}, span<acc_of<X>> save_rstd = {},
                           bool channels_last = false, const Parallel& parallel = {}) {
  using Acc = acc_of<X>;
  const char* layer = "instance_norm_forward";
  detail::check_eps(layer, eps);
  detail::check_momentum(layer, momentum);
  const auto g = detail::instance_norm_geometry(layer, x, y, -1, channels_last, use_input_stats);
  detail::check_per_channel(layer, g.channels,
                            {{"weight", detail::size_if(weight)},
                             {"bias", detail::size_if(bias)},
                             {"running_mean", detail::size_if(running_mean)},
                             {"running_var", detail::size_if(running_var)}});
  detail::check_size(layer, "save_mean", save_mean, g.num_stats(), "one per (sample, channel)");
  detail::check_size(layer, "save_rstd", save_rstd, g.num_stats(), "one per (sample, channel)");
  if (bool(running_mean) != bool(running_var))
    detail::throw_invalid(layer, "running_mean and running_var must be given together");
  if (!use_input_stats && !running_mean)
    detail::throw_invalid(layer, "running_mean and running_var are required without use_input_stats");
  if (g.view.size() == 0) return;
  const auto n = static_cast<std::size_t>(g.num_stats());
  detail::aligned_vector<Acc> mean(n), var(n), rstd(n);
  detail::instance_norm_forward_run(g, parallel, x.data(), y.data(), weight.data(), bias.data(),
                                    static_cast<Acc>(eps), use_input_stats, running_mean.data(),
                                    running_var.data(), mean.data(), var.data(), rstd.data());
  if (use_input_stats && running_mean) {
    std::vector<Acc> batch_mean, batch_var;
    detail::instance_batch_stats(g, mean.data(), var.data(), batch_mean, batch_var);
    detail::blend_running_stats(running_mean.data(), running_var.data(), g.channels,
                                batch_mean.data(), batch_var.data(), momentum);
  }
  if (save_mean) std::copy(mean.begin(), mean.end(), save_mean.data());
  if (save_rstd) std::copy(rstd.begin(), rstd.end(), save_rstd.data());
}

// Gradient of instance_norm_forward: writes dx and adds dweight/dbias (summed
// over the samples) into weight_grad/bias_grad. save_mean/save_rstd as the
// forward filled them; use_input_stats as given to the forward.
template <typename X, typename DY, typename DX>
void instance_norm_backward(const X& x, const DY& dy, DX&& dx, span<const param_of<X>> weight,
                            span<const acc_of<X>> save_mean, span<const acc_of<X>> save_rstd,
                            bool use_input_stats = true, span<param_of<X>> weight_grad = {},
                            span<param_of<X>> bias_grad = {}, bool channels_last = false,
                            const Parallel& parallel = {}) {
  const char* layer = "instance_norm_backward";
  const auto g = detail::instance_norm_backward_geometry(layer, x, dy, dx, -1, channels_last);
  detail::check_per_channel(layer, g.channels,
                            {{"weight", detail::size_if(weight)},
                             {"weight_grad", detail::size_if(weight_grad)},
                             {"bias_grad", detail::size_if(bias_grad)}});
  if (save_mean.size() != g.num_stats() || save_rstd.size() != g.num_stats())
    detail::throw_invalid(layer, "save_mean and save_rstd have ", save_mean.size(), " and ",
                          save_rstd.size(), " elements, expected ", g.num_stats(),
                          " (one per (sample, channel), from the forward)");
  if (g.view.size() == 0) return;
  detail::instance_norm_backward_run(g, parallel, x.data(), dy.data(), dx.data(), weight.data(),
                                     save_mean.data(), save_rstd.data(), use_input_stats,
                                     weight_grad.data(), bias_grad.data());
}

// GroupNorm (torch.nn.functional.group_norm): the C channels (dim 1, or last
// with channels_last) split into num_groups groups of consecutive channels;
// statistics per (sample, group) over the group's channels and spatial axes;
// y = (x - mean) * rstd * weight_c + bias_c. save_mean, save_rstd: absent or
// N*num_groups values, in the input's storage order of (N, G).
template <typename X, typename Y>
void group_norm_forward(const X& x, Y&& y, Eigen::Index num_groups, span<const param_of<X>> weight = {},
                        span<const param_of<X>> bias = {}, double eps = 1e-5,
                        span<acc_of<X>> save_mean = {}, span<acc_of<X>> save_rstd = {},
                        bool channels_last = false, const Parallel& parallel = {}) {
  using Acc = acc_of<X>;
  static_assert(detail::is_supported_scalar_v<detail::scalar_of<X>>,
                "normlayers supports float and double");
  const char* layer = "group_norm_forward";
  detail::check_eps(layer, eps);
  const auto g = detail::group_geometry(layer, x, num_groups, -1, channels_last);
  detail::check_same_dims(layer, "output", y, "the input's", x);
  detail::check_per_channel(layer, g.inst.channels,
                            {{"weight", detail::size_if(weight)}, {"bias", detail::size_if(bias)}});
  detail::check_size(layer, "save_mean", save_mean, g.num_group_stats(), "one per (sample, group)");
  detail::check_size(layer, "save_rstd", save_rstd, g.num_group_stats(), "one per (sample, group)");
  if (g.inst.view.size() == 0) return;
  const auto n = static_cast<std::size_t>(g.num_group_stats());
  detail::aligned_vector<Acc> mean(n), rstd(n);
  detail::group_norm_forward_run(g, parallel, x.data(), y.data(), weight.data(), bias.data(),
                                 static_cast<Acc>(eps), mean.data(), rstd.data());
  if (save_mean) std::copy(mean.begin(), mean.end(), save_mean.data());
  if (save_rstd) std::copy(rstd.begin(), rstd.end(), save_rstd.data());
}

// Gradient of group_norm_forward: writes dx, adds dweight/dbias into
// weight_grad/bias_grad. save_mean/save_rstd as the forward filled them.
template <typename X, typename DY, typename DX>
void group_norm_backward(const X& x, const DY& dy, DX&& dx, Eigen::Index num_groups,
                         span<const param_of<X>> weight, span<const acc_of<X>> save_mean,
                         span<const acc_of<X>> save_rstd, span<param_of<X>> weight_grad = {},
                         span<param_of<X>> bias_grad = {}, bool channels_last = false,
                         const Parallel& parallel = {}) {
  const char* layer = "group_norm_backward";
  const auto g =
      detail::group_norm_backward_geometry(layer, x, dy, dx, num_groups, -1, channels_last);
  detail::check_per_channel(layer, g.inst.channels,
                            {{"weight", detail::size_if(weight)},
                             {"weight_grad", detail::size_if(weight_grad)},
                             {"bias_grad", detail::size_if(bias_grad)}});
  if (save_mean.size() != g.num_group_stats() || save_rstd.size() != g.num_group_stats())
    detail::throw_invalid(layer, "save_mean and save_rstd have ", save_mean.size(), " and ",
                          save_rstd.size(), " elements, expected ", g.num_group_stats(),
                          " (one per (sample, group), from the forward)");
  if (g.inst.view.size() == 0) return;
  detail::group_norm_backward_run(g, parallel, x.data(), dy.data(), dx.data(), weight.data(),
                                  save_mean.data(), save_rstd.data(), weight_grad.data(),
                                  bias_grad.data());
}

}  // namespace normlayers
