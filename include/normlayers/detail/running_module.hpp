// SPDX-License-Identifier: MIT
#pragma once

// The modules with per-channel parameters and running statistics (BatchNorm,
// InstanceNorm): num_features, eps, parameters, buffers, reset_parameters.

#include <optional>

#include <normlayers/detail/affine_params.hpp>
#include <normlayers/detail/module.hpp>
#include <normlayers/detail/running_stats.hpp>

namespace normlayers::detail {

template <typename Derived, typename Scalar>
class running_module : public module_base<Derived, Scalar>,
                       public affine_params<param_t<Scalar>>,
                       public running_stats<param_t<Scalar>> {
  using base = module_base<Derived, Scalar>;
  using params = affine_params<param_t<Scalar>>;
  using buffers = running_stats<param_t<Scalar>>;

 public:
  using typename base::acc_type;
  using typename base::param_type;
  using typename base::stats_type;
  using vector_type = typename params::vector_type;

  Index num_features() const noexcept { return num_features_; }
  double eps() const noexcept { return eps_; }

  // Running statistics reset, weight to one, bias to zero (PyTorch's
  // reset_parameters).
  void reset_parameters() {
    buffers::reset_running_stats();
    params::reset_affine();
  }

  // The per-statistic mean and 1/sqrt(var + eps) the last forward normalized with.
  const stats_type& saved_mean() const noexcept { return base::saved_mean_tensor(); }
  const stats_type& saved_rstd() const noexcept { return base::saved_rstd_tensor(); }

 protected:
  // Throws std::invalid_argument for num_features <= 0, eps < 0 or momentum
  // outside [0, 1].
  running_module(const char* layer, Index num_features, double eps,
                 std::optional<double> momentum, bool affine, bool track_running_stats)
      : base(layer),
        params(layer, check_num_features(layer, num_features), affine, affine),
        buffers(layer, num_features, track_running_stats, momentum),
        num_features_(num_features),
        eps_(eps) {
    check_eps(layer, eps);
  }

 private:
  Index num_features_;
  double eps_;
};

}  // namespace normlayers::detail
