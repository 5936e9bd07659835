// SPDX-License-Identifier: MIT
#pragma once

// State and calls shared by the modules over trailing dims (LayerNorm, RMSNorm):
// parameters, their gradients, the statistics saved by the last forward, and
// forward/backward with the strong exception guarantee.

#include <string_view>
#include <utility>
#include <vector>

#include <normlayers/detail/affine_params.hpp>
#include <normlayers/functional.hpp>
#include <normlayers/mode.hpp>

namespace normlayers::detail {

template <typename Scalar, bool Centered>
class trailing_module : public Trainable, public affine_params<param_t<Scalar>> {
  static_assert(is_supported_scalar_v<Scalar>, "normlayers supports float and double");
  using params = affine_params<param_t<Scalar>>;

 public:
  using scalar_type = Scalar;
  using param_type = param_t<Scalar>;
  using acc_type = acc_t<Scalar>;
  using vector_type = typename params::vector_type;
  using stats_type = Eigen::Tensor<acc_type, 1>;

  const Shape& normalized_shape() const noexcept { return normalized_shape_; }
  double eps() const noexcept { return eps_; }

  // Weight to one, bias to zero (PyTorch's reset_parameters).
  void reset_parameters() { params::reset_affine(); }

  // Whether a forward has saved statistics for backward.
  bool has_saved_statistics() const noexcept { return saved_; }

  // y = norm(x); also as operator(). Saves the statistics for backward.
  // Throws std::invalid_argument if x's trailing dims are not normalized_shape.
  template <typename X>
  typename tensor_traits<X>::tensor forward(const X& x) {
    auto y = empty_like(x);
    forward(x, y);
    return y;
  }
  template <typename X>
  typename tensor_traits<X>::tensor operator()(const X& x) {
    return forward(x);
  }
  // Into a caller buffer of x's dims (Tensor or TensorMap; may be x itself).
  template <typename X, typename Y>
  void forward(const X& x, Y&& y) {
    static_assert(std::is_same_v<scalar_of<X>, Scalar>, "input scalar type differs from the layer's");
    const Index rows = x.size() / product(normalized_shape_);
    // Reuse the saved buffers when their size fits: validation throws before
    // anything is written. Otherwise fill new ones and swap them in.
    const bool reuse = saved_rstd_.size() == rows;
    stats_type mean_new, rstd_new;
    if (!reuse) {
      rstd_new.resize(rows);
      if (Centered) mean_new.resize(rows);
    }
    stats_type& mean = reuse ? saved_mean_ : mean_new;
    stats_type& rstd = reuse ? saved_rstd_ : rstd_new;
    std::vector<Index> dims = dims_of(x);
    trailing_forward_checked<Centered>(params::layer_name(), x, y, normalized_shape_, params::weight_span(),
                                       params::bias_span(),
                                       eps_, Centered ? span<acc_type>(mean) : span<acc_type>(),
                                       span<acc_type>(rstd));
    if (!reuse) {
      saved_mean_ = std::move(mean_new);
      saved_rstd_ = std::move(rstd_new);
    }
    saved_dims_.swap(dims);
    saved_ = true;
  }

  // dx for the x of the last forward, adding the parameter gradients into
  // weight_grad()/bias_grad(). Throws std::logic_error before any forward and
  // std::invalid_argument if x's dims differ from the last forward's.
  template <typename X, typename DY>
  typename tensor_traits<X>::tensor backward(const X& x, const DY& dy) {
    auto dx = empty_like(x);
    backward(x, dy, dx);
    return dx;
  }
  template <typename X, typename DY, typename DX>
  void backward(const X& x, const DY& dy, DX&& dx) {
    static_assert(std::is_same_v<scalar_of<X>, Scalar>, "input scalar type differs from the layer's");
    if (!saved_) throw_misuse(params::layer_name(), "backward called before forward");
    const std::vector<Index> dims = dims_of(x);
    if (dims != saved_dims_)
      throw_invalid(params::layer_name(), "input has dims ", dims_text{dims}, ", expected ",
                    dims_text{saved_dims_}, " (the dims of the last forward)");
    trailing_backward_checked<Centered>(
        params::layer_name(), x, dy, dx, normalized_shape_, params::weight_span(),
        Centered ? span<const acc_type>(saved_mean_) : span<const acc_type>(),
        span<const acc_type>(saved_rstd_),
        params::weight_grad_span(), params::bias_grad_span());
  }

 protected:
  trailing_module(const char* name, Shape normalized_shape, double eps, bool has_weight,
                  bool has_bias)
      : params(name, checked_size(name, normalized_shape), has_weight, has_bias),
        normalized_shape_(std::move(normalized_shape)),
        eps_(eps) {
    check_eps(name, eps_);
  }

  const stats_type& saved_mean_tensor() const { return saved_mean_; }
  const stats_type& saved_rstd_tensor() const { return saved_rstd_; }

 private:
  static Index checked_size(const char* name, const Shape& normalized_shape) {
    check_normalized_shape(name, normalized_shape);
    return product(normalized_shape);
  }

  Shape normalized_shape_;
  double eps_;
  stats_type saved_mean_, saved_rstd_;
  std::vector<Index> saved_dims_;
  bool saved_ = false;
};

}  // namespace normlayers::detail
