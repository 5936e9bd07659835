// SPDX-License-Identifier: MIT
#pragma once

#include <limits>

#include <normlayers/detail/trailing_module.hpp>
#include <normlayers/options.hpp>

namespace normlayers {

// torch.nn.RMSNorm: per sample over the trailing normalized_shape,
//   y = x / sqrt(mean(x^2) + eps) * weight,
// with eps defaulting to std::numeric_limits<Scalar>::epsilon() (PyTorch's
// eps=None). No mean is subtracted and there is no bias.
//
//   normlayers::RMSNorm<float> rms({4096});
//   auto y = rms.forward(x);
//   auto dx = rms.backward(x, dy);   // adds into rms.weight_grad()
template <typename Scalar>
class RMSNorm : public detail::trailing_module<RMSNorm<Scalar>, Scalar, false> {
  using base = detail::trailing_module<RMSNorm<Scalar>, Scalar, false>;

 public:
  // Throws std::invalid_argument for an empty or non-positive normalized_shape
  // or eps < 0.
  explicit RMSNorm(Shape normalized_shape, RMSNormOptions options = {})
      : base("RMSNorm", std::move(normalized_shape),
             options.eps.value_or(static_cast<double>(std::numeric_limits<Scalar>::epsilon())),
             options.elementwise_affine, false),
        options_(options) {}

  const RMSNormOptions& options() const noexcept { return options_; }

  // 1/sqrt(mean(x^2) + eps) of each row of the last forward, in the input's
  // storage order of the leading dims.
  const typename base::stats_type& saved_rrms() const { return base::saved_rstd_tensor(); }

 private:
  RMSNormOptions options_;
};

}  // namespace normlayers
