// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include <normlayers/detail/running_module.hpp>
#include <normlayers/functional.hpp>
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
class BatchNorm : public detail::running_module<BatchNorm<Scalar>, Scalar> {
  using base = detail::running_module<BatchNorm<Scalar>, Scalar>;
  using module = detail::module_base<BatchNorm<Scalar>, Scalar>;
  using params = detail::affine_params<detail::param_t<Scalar>>;
  using buffers = detail::running_stats<detail::param_t<Scalar>>;

 public:
  using typename base::acc_type;
  using typename base::param_type;
  using typename base::stats_type;
  using module::backward;
  using module::forward;

  // Throws std::invalid_argument for num_features <= 0, eps < 0 or momentum
  // outside [0, 1].
  explicit BatchNorm(Eigen::Index num_features, BatchNormOptions options = {})
      : base("BatchNorm", num_features, options.eps, options.momentum, options.affine,
             options.track_running_stats),
        options_(options) {}

  const BatchNormOptions& options() const noexcept { return options_; }

  // y = BatchNorm(x) into a caller buffer of x's dims (may be x). Saves what
  // backward needs; in training mode updates the running statistics. An empty
  // batch gives an empty output and changes no running statistic. Throws
  // std::invalid_argument for a wrong channel count, rank < 2, or one value
  // per channel in training.
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    module::template check_scalar<X>();
    const bool training = this->is_training();
    const auto g = detail::batch_norm_geometry(params::layer_name(), x, y, this->num_features(),
                                               options_.channels_last, training);
    const bool batch_stats = training || !buffers::tracks_running_stats();
    stats_type& mean = module::next_mean(this->num_features());
    stats_type& rstd = module::next_rstd(this->num_features());
    stats_type var(this->num_features());
    std::vector<Eigen::Index> dims = detail::dims_of(x);
    detail::batch_norm_run(g, x, y, params::weight_span(), params::bias_span(), batch_stats,
                           buffers::running_mean_span(), buffers::running_var_span(),
                           this->eps(), mean.data(), var.data(), rstd.data(), module::parallel());
    if (training && buffers::tracks_running_stats() && g.count > 0) {
      const acc_type unbias = static_cast<acc_type>(g.count) / static_cast<acc_type>(g.count - 1);
      for (Eigen::Index c = 0; c < this->num_features(); ++c) var(c) *= unbias;
      buffers::update_running_stats(mean.data(), var.data());
    }
    saved_batch_stats_ = batch_stats;
    module::save(dims);
  }

  // dx into a caller buffer for the x of the last forward, through the
  // statistics that forward used (batch statistics, or the fixed running ones
  // in eval mode), adding into weight_grad()/bias_grad(). Throws
  // std::logic_error before any forward and std::invalid_argument if x's dims
  // differ from the last forward's.
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    module::check_backward_input(x);
    detail::batch_norm_backward_checked(
        params::layer_name(), x, dy, dx, this->num_features(), options_.channels_last,
        params::weight_span(), span<const acc_type>(module::saved_mean_tensor()),
        span<const acc_type>(module::saved_rstd_tensor()), saved_batch_stats_,
        params::weight_grad_span(), params::bias_grad_span(), module::parallel());
  }


 private:
  BatchNormOptions options_;
  bool saved_batch_stats_ = true;
};

}  // namespace normlayers
