// SPDX-License-Identifier: MIT
#pragma once

#include <vector>

#include <normlayers/detail/affine_params.hpp>
#include <normlayers/detail/module.hpp>
#include <normlayers/detail/running_stats.hpp>
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
class InstanceNorm : public detail::module_base<InstanceNorm<Scalar>, Scalar>,
                     public detail::affine_params<detail::param_t<Scalar>>,
                     public detail::running_stats<detail::param_t<Scalar>> {
  using base = detail::module_base<InstanceNorm<Scalar>, Scalar>;
  using params = detail::affine_params<detail::param_t<Scalar>>;
  using buffers = detail::running_stats<detail::param_t<Scalar>>;

 public:
  using typename base::acc_type;
  using typename base::param_type;
  using typename base::stats_type;
  using vector_type = typename params::vector_type;
  using base::backward;
  using base::forward;

  // Throws std::invalid_argument for num_features <= 0, eps < 0 or momentum
  // outside [0, 1].
  explicit InstanceNorm(Eigen::Index num_features, InstanceNormOptions options = {})
      : base("InstanceNorm"),
        params("InstanceNorm", detail::check_num_features("InstanceNorm", num_features),
               options.affine, options.affine),
        buffers("InstanceNorm", num_features, options.track_running_stats, options.momentum),
        num_features_(num_features),
        options_(options) {
    detail::check_eps("InstanceNorm", options.eps);
  }

  Eigen::Index num_features() const noexcept { return num_features_; }
  const InstanceNormOptions& options() const noexcept { return options_; }

  // Running statistics reset, weight to one, bias to zero.
  void reset_parameters() {
    buffers::reset_running_stats();
    params::reset_affine();
  }

  // y = InstanceNorm(x) into a caller buffer of x's dims (may be x). Throws
  // std::invalid_argument for a wrong channel count, rank < 3, or one spatial
  // value when the instance statistics are used.
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    base::template check_scalar<X>();
    const bool use_input_stats = this->is_training() || !buffers::tracks_running_stats();
    const auto g = detail::instance_norm_geometry(params::layer_name(), x, y, num_features_,
                                                  options_.channels_last, use_input_stats);
    const Eigen::Index n = g.num_stats();
    stats_type& mean = base::next_mean(n);
    stats_type& rstd = base::next_rstd(n);
    stats_type var(n);
    std::vector<acc_type> batch_mean, batch_var;
    std::vector<Eigen::Index> dims = detail::dims_of(x);
    if (g.view.size() > 0) {
      detail::instance_norm_forward_run(
          g, x.data(), y.data(), params::weight_span().data(), params::bias_span().data(),
          static_cast<acc_type>(options_.eps), use_input_stats,
          buffers::running_mean_span().data(), buffers::running_var_span().data(), mean.data(),
          var.data(), rstd.data());
      if (this->is_training() && buffers::tracks_running_stats()) {
        detail::instance_batch_stats(g, mean.data(), var.data(), batch_mean, batch_var);
        buffers::blend_without_count(batch_mean.data(), batch_var.data());
      }
    }
    saved_input_stats_ = use_input_stats;
    base::save(dims);
  }

  // dx into a caller buffer for the x of the last forward, adding into
  // weight_grad()/bias_grad(). Throws std::logic_error before any forward and
  // std::invalid_argument if x's dims differ from the last forward's.
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    base::check_backward_input(x);
    const auto g = detail::instance_norm_backward_geometry(params::layer_name(), x, dy, dx,
                                                           num_features_, options_.channels_last);
    if (g.view.size() == 0) return;
    detail::instance_norm_backward_run(g, x.data(), dy.data(), dx.data(),
                                       params::weight_span().data(),
                                       base::saved_mean_tensor().data(),
                                       base::saved_rstd_tensor().data(), saved_input_stats_,
                                       params::weight_grad_span().data(),
                                       params::bias_grad_span().data());
  }

  // Mean and 1/sqrt(var + eps) per (sample, channel) of the last forward, in
  // the input's storage order of (N, C).
  const stats_type& saved_mean() const noexcept { return base::saved_mean_tensor(); }
  const stats_type& saved_rstd() const noexcept { return base::saved_rstd_tensor(); }

 private:
  Eigen::Index num_features_;
  InstanceNormOptions options_;
  bool saved_input_stats_ = true;
};

}  // namespace normlayers
