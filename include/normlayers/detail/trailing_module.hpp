// SPDX-License-Identifier: MIT
#pragma once

// State and calls shared by the modules over trailing dims (LayerNorm, RMSNorm):
// parameters, their gradients, the statistics saved by the last forward, and
// forward/backward with the strong exception guarantee.

#include <string_view>
#include <utility>
#include <vector>

#include <normlayers/functional.hpp>
#include <normlayers/mode.hpp>

namespace normlayers::detail {

template <typename Scalar, bool Centered>
class trailing_module : public Trainable {
  static_assert(is_supported_scalar_v<Scalar>, "normlayers supports float and double");

 public:
  using scalar_type = Scalar;
  using param_type = param_t<Scalar>;
  using acc_type = acc_t<Scalar>;
  using vector_type = Eigen::Tensor<param_type, 1>;
  using stats_type = Eigen::Tensor<acc_type, 1>;

  const Shape& normalized_shape() const noexcept { return normalized_shape_; }
  double eps() const noexcept { return eps_; }

  bool has_weight() const noexcept { return has_weight_; }
  bool has_bias() const noexcept { return has_bias_; }
  // The learnable parameters and the gradients backward adds into; one value per
  // normalized element in PyTorch's (row-major) order. Throws std::logic_error
  // if the layer has no such parameter.
  vector_type& weight() { return present(has_weight_, weight_, "weight"); }
  const vector_type& weight() const { return present(has_weight_, weight_, "weight"); }
  vector_type& bias() { return present(has_bias_, bias_, "bias"); }
  const vector_type& bias() const { return present(has_bias_, bias_, "bias"); }
  vector_type& weight_grad() { return present(has_weight_, weight_grad_, "weight_grad"); }
  const vector_type& weight_grad() const {
    return present(has_weight_, weight_grad_, "weight_grad");
  }
  vector_type& bias_grad() { return present(has_bias_, bias_grad_, "bias_grad"); }
  const vector_type& bias_grad() const { return present(has_bias_, bias_grad_, "bias_grad"); }

  // f(std::string_view name, vector_type& parameter) for each parameter, in
  // PyTorch's order and with its names ("weight", "bias").
  template <typename F>
  void for_each_parameter(F&& f) {
    if (has_weight_) f(std::string_view("weight"), weight_);
    if (has_bias_) f(std::string_view("bias"), bias_);
  }
  template <typename F>
  void for_each_parameter(F&& f) const {
    if (has_weight_) f(std::string_view("weight"), weight_);
    if (has_bias_) f(std::string_view("bias"), bias_);
  }

  // Gradients to zero.
  void zero_grad() {
    weight_grad_.setZero();
    bias_grad_.setZero();
  }
  // Weight to one, bias to zero (PyTorch's reset_parameters).
  void reset_parameters() {
    weight_.setConstant(param_type(1));
    bias_.setZero();
  }

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
    trailing_forward_checked<Centered>(name_, x, y, normalized_shape_, weight_span(), bias_span(),
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
    if (!saved_) throw_misuse(name_, "backward called before forward");
    const std::vector<Index> dims = dims_of(x);
    if (dims != saved_dims_)
      throw_invalid(name_, "input has dims ", dims_text{dims}, ", expected ",
                    dims_text{saved_dims_}, " (the dims of the last forward)");
    trailing_backward_checked<Centered>(
        name_, x, dy, dx, normalized_shape_, weight_span(),
        Centered ? span<const acc_type>(saved_mean_) : span<const acc_type>(),
        span<const acc_type>(saved_rstd_),
        has_weight_ ? span<param_type>(weight_grad_) : span<param_type>(),
        has_bias_ ? span<param_type>(bias_grad_) : span<param_type>());
  }

 protected:
  trailing_module(const char* name, Shape normalized_shape, double eps, bool has_weight,
                  bool has_bias)
      : name_(name),
        normalized_shape_(std::move(normalized_shape)),
        eps_(eps),
        has_weight_(has_weight),
        has_bias_(has_bias) {
    check_normalized_shape(name_, normalized_shape_);
    check_eps(name_, eps_);
    const Index n = product(normalized_shape_);
    if (has_weight_) weight_.resize(n), weight_grad_.resize(n);
    if (has_bias_) bias_.resize(n), bias_grad_.resize(n);
    reset_parameters();
    zero_grad();
  }

  const stats_type& saved_mean_tensor() const { return saved_mean_; }
  const stats_type& saved_rstd_tensor() const { return saved_rstd_; }

 private:
  template <typename V>
  V& present(bool has, V& v, const char* what) const {
    if (!has) throw_misuse(name_, what, " requested, but the layer has no ", what);
    return v;
  }
  span<const param_type> weight_span() const {
    return has_weight_ ? span<const param_type>(weight_) : span<const param_type>();
  }
  span<const param_type> bias_span() const {
    return has_bias_ ? span<const param_type>(bias_) : span<const param_type>();
  }

  const char* name_;
  Shape normalized_shape_;
  double eps_;
  bool has_weight_, has_bias_;
  vector_type weight_, bias_, weight_grad_, bias_grad_;
  stats_type saved_mean_, saved_rstd_;
  std::vector<Index> saved_dims_;
  bool saved_ = false;
};

}  // namespace normlayers::detail
