// SPDX-License-Identifier: MIT
#pragma once

#include <normlayers/detail/trailing_module.hpp>
#include <normlayers/options.hpp>

namespace normlayers {

// torch.nn.LayerNorm: statistics per sample over the trailing normalized_shape,
//   y = (x - mean) / sqrt(var + eps) * weight + bias   (var biased),
// the same in training and eval mode. weight/bias hold one value per element of
// normalized_shape, in PyTorch's row-major order whatever the input's storage
// order, so a PyTorch state_dict's tensors load as they are (flattened).
//
//   normlayers::LayerNorm<float> ln({768});
//   auto y = ln.forward(x);          // x: (..., 768), Tensor or TensorMap
//   auto dx = ln.backward(x, dy);    // adds into ln.weight_grad(), ln.bias_grad()
template <typename Scalar>
class LayerNorm : public detail::trailing_module<LayerNorm<Scalar>, Scalar, true> {
  using base = detail::trailing_module<LayerNorm<Scalar>, Scalar, true>;

 public:
  // Throws std::invalid_argument for an empty or non-positive normalized_shape
  // or eps < 0.
  explicit LayerNorm(Shape normalized_shape, LayerNormOptions options = {})
      : base("LayerNorm", std::move(normalized_shape), options.eps, options.elementwise_affine,
             options.elementwise_affine && options.bias),
        options_(options) {}

  const LayerNormOptions& options() const noexcept { return options_; }

  // Mean and rstd = 1/sqrt(var + eps) of each row of the last forward, in the
  // input's storage order of the leading dims.
  const typename base::stats_type& saved_mean() const { return base::saved_mean_tensor(); }
  const typename base::stats_type& saved_rstd() const { return base::saved_rstd_tensor(); }

 private:
  LayerNormOptions options_;
};

}  // namespace normlayers
