// SPDX-License-Identifier: MIT
#pragma once

// Learnable weight and bias of a layer, the gradients backward adds into them,
// and their PyTorch names; shared by every module.

#include <string_view>

#include <normlayers/detail/scalar.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/span.hpp>

namespace normlayers::detail {

inline Index check_num_features(const char* layer, Index n) {
  if (n <= 0) throw_invalid(layer, "num_features is ", n, ", expected > 0");
  return n;
}

template <typename P>
class affine_params {
 public:
  using vector_type = Eigen::Tensor<P, 1>;

  bool has_weight() const noexcept { return has_weight_; }
  bool has_bias() const noexcept { return has_bias_; }
  // The parameters and the gradients backward adds into. Throws
  // std::logic_error if the layer has no such parameter.
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

 protected:
  affine_params(const char* layer, Index n, bool has_weight, bool has_bias)
      : layer_(layer), has_weight_(has_weight), has_bias_(has_bias) {
    if (has_weight_) weight_.resize(n), weight_grad_.resize(n);
    if (has_bias_) bias_.resize(n), bias_grad_.resize(n);
    reset_affine();
    zero_grad();
  }

  // Weight to one, bias to zero.
  void reset_affine() {
    weight_.setConstant(P(1));
    bias_.setZero();
  }

  const char* layer_name() const noexcept { return layer_; }
  span<const P> weight_span() const {
    return has_weight_ ? span<const P>(weight_) : span<const P>();
  }
  span<const P> bias_span() const { return has_bias_ ? span<const P>(bias_) : span<const P>(); }
  span<P> weight_grad_span() { return has_weight_ ? span<P>(weight_grad_) : span<P>(); }
  span<P> bias_grad_span() { return has_bias_ ? span<P>(bias_grad_) : span<P>(); }

 private:
  template <typename V>
  V& present(bool has, V& v, const char* what) const {
    if (!has) throw_misuse(layer_, what, " requested, but the layer has no ", what);
    return v;
  }

  const char* layer_;
  bool has_weight_, has_bias_;
  vector_type weight_, bias_, weight_grad_, bias_grad_;
};

}  // namespace normlayers::detail
