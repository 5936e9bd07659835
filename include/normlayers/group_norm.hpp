// SPDX-License-Identifier: MIT
#pragma once

#include <vector>

#include <normlayers/detail/affine_params.hpp>
#include <normlayers/detail/module.hpp>
#include <normlayers/functional.hpp>
#include <normlayers/options.hpp>

namespace normlayers {

// torch.nn.GroupNorm: the channels (dim 1, or last with channels_last) split
// into num_groups groups of consecutive channels; statistics per (sample,
// group) over the group's channels and all spatial positions; weight and bias
// per channel. The same in training and eval mode. Inputs (N, C, *), rank >= 2.
//
//   normlayers::GroupNorm<float> gn(32, 320);
//   auto y = gn.forward(x);          // x: (N, 320, H, W)
//   auto dx = gn.backward(x, dy);
template <typename Scalar>
class GroupNorm : public detail::module_base<GroupNorm<Scalar>, Scalar>,
                  public detail::affine_params<detail::param_t<Scalar>> {
  using base = detail::module_base<GroupNorm<Scalar>, Scalar>;
  using params = detail::affine_params<detail::param_t<Scalar>>;

 public:
  using typename base::acc_type;
  using typename base::param_type;
  using typename base::stats_type;
  using vector_type = typename params::vector_type;
  using base::backward;
  using base::forward;

  // Throws std::invalid_argument for non-positive counts, num_channels not
  // divisible by num_groups, or eps < 0.
  GroupNorm(Eigen::Index num_groups, Eigen::Index num_channels, GroupNormOptions options = {})
      : base("GroupNorm"),
        params("GroupNorm", checked_channels(num_groups, num_channels), options.affine,
               options.affine),
        num_groups_(num_groups),
        num_channels_(num_channels),
        options_(options) {
    detail::check_eps("GroupNorm", options.eps);
  }

  Eigen::Index num_groups() const noexcept { return num_groups_; }
  Eigen::Index num_channels() const noexcept { return num_channels_; }
  const GroupNormOptions& options() const noexcept { return options_; }

  // Weight to one, bias to zero.
  void reset_parameters() { params::reset_affine(); }

  // y = GroupNorm(x) into a caller buffer of x's dims (may be x). Throws
  // std::invalid_argument for a wrong channel count or rank < 2.
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    base::template check_scalar<X>();
    const auto g = detail::group_geometry(params::layer_name(), x, num_groups_, num_channels_,
                                          options_.channels_last);
    detail::check_same_dims(params::layer_name(), "output", y, "the input's", x);
    const Eigen::Index n = g.num_group_stats();
    stats_type& mean = base::next_mean(n);
    stats_type& rstd = base::next_rstd(n);
    std::vector<Eigen::Index> dims = detail::dims_of(x);
    if (g.inst.view.size() > 0)
      detail::group_norm_forward_run(g, base::parallel(), x.data(), y.data(), params::weight_span().data(),
                                     params::bias_span().data(),
                                     static_cast<acc_type>(options_.eps), mean.data(),
                                     rstd.data());
    base::save(dims);
  }

  // dx into a caller buffer for the x of the last forward, adding into
  // weight_grad()/bias_grad(). Throws std::logic_error before any forward and
  // std::invalid_argument if x's dims differ from the last forward's.
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    base::check_backward_input(x);
    const auto g = detail::group_norm_backward_geometry(params::layer_name(), x, dy, dx,
                                                        num_groups_, num_channels_,
                                                        options_.channels_last);
    if (g.inst.view.size() == 0) return;
    detail::group_norm_backward_run(g, base::parallel(), x.data(), dy.data(), dx.data(),
                                    params::weight_span().data(), base::saved_mean_tensor().data(),
                                    base::saved_rstd_tensor().data(),
                                    params::weight_grad_span().data(),
                                    params::bias_grad_span().data());
  }

  // Mean and 1/sqrt(var + eps) per (sample, group) of the last forward, in the
  // input's storage order of (N, G).
  const stats_type& saved_mean() const noexcept { return base::saved_mean_tensor(); }
  const stats_type& saved_rstd() const noexcept { return base::saved_rstd_tensor(); }

 private:
  static Eigen::Index checked_channels(Eigen::Index num_groups, Eigen::Index num_channels) {
    detail::check_groups("GroupNorm", num_groups, num_channels);
    return num_channels;
  }

  Eigen::Index num_groups_, num_channels_;
  GroupNormOptions options_;
};

}  // namespace normlayers
