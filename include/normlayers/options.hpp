// SPDX-License-Identifier: MIT
#pragma once

// Options of every layer, as small aggregates with PyTorch's defaults:
//   normlayers::LayerNormOptions o;  o.eps = 1e-6;  o.bias = false;

#include <optional>

namespace normlayers {

// torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)
struct LayerNormOptions {
  double eps = 1e-5;
  bool elementwise_affine = true;  // learnable per-element weight (and bias)
  bool bias = true;                // with elementwise_affine: also a learnable bias
};

// torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)
struct RMSNormOptions {
  std::optional<double> eps;       // unset: std::numeric_limits<Scalar>::epsilon()
  bool elementwise_affine = true;  // learnable per-element weight
};

}  // namespace normlayers
