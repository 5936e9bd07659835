// SPDX-License-Identifier: MIT
#pragma once

// The modules over trailing dims (LayerNorm, RMSNorm): normalized_shape, eps,
// per-element parameters, and forward/backward with the strong exception
// guarantee. `Centered` selects LayerNorm (true) or RMSNorm (false).

#include <utility>
#include <vector>

#include <normlayers/detail/affine_params.hpp>
#include <normlayers/detail/module.hpp>
#include <normlayers/functional.hpp>

namespace normlayers::detail {

template <typename Derived, typename Scalar, bool Centered>
class trailing_module : public module_base<Derived, Scalar>,
                        public affine_params<param_t<Scalar>> {
  using base = module_base<Derived, Scalar>;
  using params = affine_params<param_t<Scalar>>;

 public:
  using typename base::acc_type;
  using typename base::param_type;
  using typename base::stats_type;
  using vector_type = typename params::vector_type;
  using base::backward;
  using base::forward;

  const Shape& normalized_shape() const noexcept { return normalized_shape_; }
  double eps() const noexcept { return eps_; }

  // Weight to one, bias to zero (PyTorch's reset_parameters).
  void reset_parameters() { params::reset_affine(); }

  // y = norm(x) into a caller buffer of x's dims (Tensor or TensorMap; may be
  // x itself). Saves the statistics for backward. Throws
  // std::invalid_argument if x's trailing dims are not normalized_shape.
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    base::template check_scalar<X>();
    const Index rows = x.size() / product(normalized_shape_);
    stats_type& mean = base::next_mean(Centered ? rows : 0);
    stats_type& rstd = base::next_rstd(rows);
    std::vector<Index> dims = dims_of(x);
    trailing_forward_checked<Centered>(params::layer_name(), x, y, normalized_shape_,
                                       params::weight_span(), params::bias_span(), eps_,
                                       Centered ? span<acc_type>(mean) : span<acc_type>(),
                                       span<acc_type>(rstd), base::parallel());
    base::save(dims);
  }

  // dx into a caller buffer for the x of the last forward, adding the
  // parameter gradients into weight_grad()/bias_grad(). Throws
  // std::logic_error before any forward and std::invalid_argument if x's dims
  // differ from the last forward's.
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    base::check_backward_input(x);
    trailing_backward_checked<Centered>(
        params::layer_name(), x, dy, dx, normalized_shape_, params::weight_span(),
        Centered ? span<const acc_type>(base::saved_mean_tensor()) : span<const acc_type>(),
        span<const acc_type>(base::saved_rstd_tensor()), params::weight_grad_span(),
        params::bias_grad_span(), base::parallel(), &workspace_);
  }

 protected:
  trailing_module(const char* name, Shape normalized_shape, double eps, bool has_weight,
                  bool has_bias)
      : base(name),
        params(name, checked_size(name, normalized_shape), has_weight, has_bias),
        normalized_shape_(std::move(normalized_shape)),
        eps_(eps) {
    check_eps(name, eps_);
  }

 private:
  static Index checked_size(const char* name, const Shape& normalized_shape) {
    check_normalized_shape(name, normalized_shape);
    return product(normalized_shape);
  }

  Shape normalized_shape_;
  double eps_;
  aligned_vector<acc_type> workspace_;  // backward's chunk sums, kept between calls
};

}  // namespace normlayers::detail
