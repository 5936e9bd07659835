// SPDX-License-Identifier: MIT
#pragma once

#include <vector>

#include <normlayers/detail/running_module.hpp>
#include <normlayers/functional.hpp>
#include <normlayers/options.hpp>

namespace normlayers {

// torch.nn.InstanceNorm1d/2d/3d: statistics per (sample, channel) over the
// spatial axes of (N, C, L), (N, C, H, W), (N, C, D, H, W) (channel axis last
// with channels_last). By default no affine parameters and no running
// statistics. With track_running_stats, training mode blends the batch-mean of
// the instances' statistics (variance unbiased per instance) into
// running_mean/running_var with factor momentum (PyTorch uses 0 when momentum
// is unset, and does not count num_batches_tracked), and eval mode normalizes
// with them.
//
//   normlayers::InstanceNorm<float> in(64);
//   auto y = in.forward(x);          // x: (N, 64, H, W)
//   auto dx = in.backward(x, dy);
template <typename Scalar>
class InstanceNorm : public detail::running_module<InstanceNorm<Scalar>, Scalar> {
  using base = detail::running_module<InstanceNorm<Scalar>, Scalar>;
  using module = detail::module_base<InstanceNorm<Scalar>, Scalar>;
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
  explicit InstanceNorm(Eigen::Index num_features, InstanceNormOptions options = {})
      : base("InstanceNorm", num_features, options.eps, options.momentum, options.affine,
             options.track_running_stats),
        options_(options) {}

  const InstanceNormOptions& options() const noexcept { return options_; }

  // y = InstanceNorm(x) into a caller buffer of x's dims (may be x). Throws
  // std::invalid_argument for a wrong channel count, rank < 3, or one spatial
  // value when the instance statistics are used.
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    module::template check_scalar<X>();
    const bool use_input_stats = this->is_training() || !buffers::tracks_running_stats();
    const auto g = detail::instance_norm_geometry(params::layer_name(), x, y, this->num_features(),
                                                  options_.channels_last, use_input_stats);
    const Eigen::Index n = g.num_stats();
    stats_type& mean = module::next_mean(n);
    stats_type& rstd = module::next_rstd(n);
    stats_type var(n);
    std::vector<acc_type> batch_mean, batch_var;
    std::vector<Eigen::Index> dims = detail::dims_of(x);
    if (g.view.size() > 0) {
      detail::instance_norm_forward_run(
          g, module::parallel(), x.data(), y.data(), params::weight_span().data(), params::bias_span().data(),
          static_cast<acc_type>(this->eps()), use_input_stats,
          buffers::running_mean_span().data(), buffers::running_var_span().data(), mean.data(),
          var.data(), rstd.data());
      if (this->is_training() && buffers::tracks_running_stats()) {
        detail::instance_batch_stats(g, mean.data(), var.data(), batch_mean, batch_var);
        buffers::blend_without_count(batch_mean.data(), batch_var.data());
      }
    }
    saved_input_stats_ = use_input_stats;
    module::save(dims);
  }

  // dx into a caller buffer for the x of the last forward, adding into
  // weight_grad()/bias_grad(). Throws std::logic_error before any forward and
  // std::invalid_argument if x's dims differ from the last forward's.
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    module::check_backward_input(x);
    const auto g = detail::instance_norm_backward_geometry(params::layer_name(), x, dy, dx,
                                                           this->num_features(), options_.channels_last);
    if (g.view.size() == 0) return;
    detail::instance_norm_backward_run(g, module::parallel(), x.data(), dy.data(), dx.data(),
                                       params::weight_span().data(),
                                       module::saved_mean_tensor().data(),
                                       module::saved_rstd_tensor().data(), saved_input_stats_,
                                       params::weight_grad_span().data(),
                                       params::bias_grad_span().data());
  }


 private:
  InstanceNormOptions options_;
  bool saved_input_stats_ = true;
};

}  // namespace normlayers
