// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include <normlayers/detail/affine_params.hpp>
#include <normlayers/detail/running_stats.hpp>
#include <normlayers/functional.hpp>
#include <normlayers/mode.hpp>
#include <normlayers/options.hpp>

namespace normlayers {

// torch.nn.BatchNorm1d/2d/3d: statistics per channel over the batch and every
// spatial position of inputs (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W)
// (channel axis last with channels_last).
// - Training: normalize with the batch mean and biased variance; with
//   track_running_stats, blend them into running_mean/running_var (variance
//   unbiased) and count num_batches_tracked.
// - Eval with track_running_stats: normalize with the running statistics.
// - track_running_stats = false: batch statistics in both modes, no buffers.
//
//   normlayers::BatchNorm<float> bn(64);
//   auto y = bn.forward(x);          // x: (N, 64, H, W); training mode by default
//   auto dx = bn.backward(x, dy);    // adds into bn.weight_grad(), bn.bias_grad()
//   bn.eval();                       // running statistics from now on
template <typename Scalar>
class BatchNorm : public Trainable,
                  public detail::affine_params<detail::param_t<Scalar>>,
                  public detail::running_stats<detail::param_t<Scalar>> {
  static_assert(detail::is_supported_scalar_v<Scalar>, "normlayers supports float and double");
  using params = detail::affine_params<detail::param_t<Scalar>>;
  using buffers = detail::running_stats<detail::param_t<Scalar>>;

 public:
  using scalar_type = Scalar;
  using param_type = detail::param_t<Scalar>;
  using acc_type = detail::acc_t<Scalar>;
  using vector_type = typename params::vector_type;
  using stats_type = Eigen::Tensor<acc_type, 1>;

  // Throws std::invalid_argument for num_features <= 0, eps < 0 or momentum
  // outside [0, 1].
  explicit BatchNorm(Eigen::Index num_features, BatchNormOptions options = {})
      : params("BatchNorm", checked_features(num_features), options.affine, options.affine),
        buffers("BatchNorm", num_features, options.track_running_stats, options.momentum),
        num_features_(num_features),
        options_(options) {
    detail::check_eps("BatchNorm", options.eps);
  }

  Eigen::Index num_features() const noexcept { return num_features_; }
  const BatchNormOptions& options() const noexcept { return options_; }

  // Running statistics reset, weight to one, bias to zero (PyTorch's reset_parameters).
  void reset_parameters() {
    buffers::reset_running_stats();
    params::reset_affine();
  }

  // y = BatchNorm(x); also as operator(). Saves what backward needs; in
  // training mode updates the running statistics. An empty batch gives an
  // empty output and changes no running statistic. Throws std::invalid_argument
  // for a wrong channel count, rank < 2, or one value per channel in training.
  template <typename X>
  typename detail::tensor_traits<X>::tensor forward(const X& x) {
    auto y = detail::empty_like(x);
    forward(x, y);
    return y;
  }
  template <typename X>
  typename detail::tensor_traits<X>::tensor operator()(const X& x) {
    return forward(x);
  }
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    static_assert(std::is_same_v<detail::scalar_of<X>, Scalar>,
                  "input scalar type differs from the layer's");
    const bool training = is_training();
    const auto g = detail::batch_norm_geometry(params::layer_name(), x, y, num_features_,
                                               options_.channels_last, training);
    const bool batch_stats = training || !buffers::tracks_running_stats();
    stats_type mean(num_features_), var(num_features_), rstd(num_features_);
    std::vector<Eigen::Index> dims = detail::dims_of(x);
    detail::batch_norm_run(g, x, y, params::weight_span(), params::bias_span(), batch_stats,
                           buffers::running_mean_span(), buffers::running_var_span(),
                           options_.eps, mean.data(), var.data(), rstd.data());
    if (training && buffers::tracks_running_stats() && g.count > 0) {
      const acc_type unbias = static_cast<acc_type>(g.count) / static_cast<acc_type>(g.count - 1);
      for (Eigen::Index c = 0; c < num_features_; ++c) var(c) *= unbias;
      buffers::update_running_stats(mean.data(), var.data());
    }
    saved_mean_ = std::move(mean);
    saved_rstd_ = std::move(rstd);
    saved_dims_.swap(dims);
    saved_batch_stats_ = batch_stats;
    saved_ = true;
  }

  // dx for the x of the last forward, through the statistics that forward
  // used (batch statistics, or the fixed running ones in eval mode), adding
  // into weight_grad()/bias_grad(). Throws std::logic_error before any forward
  // and std::invalid_argument if x's dims differ from the last forward's.
  template <typename X, typename DY>
  typename detail::tensor_traits<X>::tensor backward(const X& x, const DY& dy) {
    auto dx = detail::empty_like(x);
    backward(x, dy, dx);
    return dx;
  }
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    static_assert(std::is_same_v<detail::scalar_of<X>, Scalar>,
                  "input scalar type differs from the layer's");
    if (!saved_) detail::throw_misuse(params::layer_name(), "backward called before forward");
    const std::vector<Eigen::Index> dims = detail::dims_of(x);
    if (dims != saved_dims_)
      detail::throw_invalid(params::layer_name(), "input has dims ", detail::dims_text{dims},
                            ", expected ", detail::dims_text{saved_dims_},
                            " (the dims of the last forward)");
    detail::batch_norm_backward_checked(
        params::layer_name(), x, dy, dx, num_features_, options_.channels_last,
        params::weight_span(), span<const acc_type>(saved_mean_), span<const acc_type>(saved_rstd_),
        saved_batch_stats_, params::weight_grad_span(), params::bias_grad_span());
  }

  // Whether a forward has saved statistics for backward.
  bool has_saved_statistics() const noexcept { return saved_; }
  // The per-channel mean and 1/sqrt(var + eps) the last forward normalized with.
  const stats_type& saved_mean() const noexcept { return saved_mean_; }
  const stats_type& saved_rstd() const noexcept { return saved_rstd_; }

 private:
  static Eigen::Index checked_features(Eigen::Index n) {
    if (n <= 0) detail::throw_invalid("BatchNorm", "num_features is ", n, ", expected > 0");
    return n;
  }

  Eigen::Index num_features_;
  BatchNormOptions options_;
  stats_type saved_mean_, saved_rstd_;
  std::vector<Eigen::Index> saved_dims_;
  bool saved_batch_stats_ = true;
  bool saved_ = false;
};

}  // namespace normlayers
