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

namespace normlayers {

// torch.nn.BatchNorm1d/2d/3d(num_features, eps=1e-5, momentum=0.1, affine=True,
// track_running_stats=True); channels_last puts the channel axis last (NHWC).
struct BatchNormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // unset: cumulative average, 1/num_batches_tracked
  bool affine = true;                    // learnable per-channel weight and bias
  bool track_running_stats = true;       // running_mean/running_var, used in eval mode
  bool channels_last = false;            // channel axis: last instead of dim 1
};

}  // namespace normlayers

namespace normlayers {

// torch.nn.InstanceNorm1d/2d/3d(num_features, eps=1e-5, momentum=0.1,
// affine=False, track_running_stats=False).
struct InstanceNormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // unset: running stats never move (PyTorch passes 0)
  bool affine = false;                   // learnable per-channel weight and bias
  bool track_running_stats = false;      // running_mean/running_var, used in eval mode
  bool channels_last = false;            // channel axis: last instead of dim 1
};

// torch.nn.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True).
struct GroupNormOptions {
  double eps = 1e-5;
  bool affine = true;          // learnable per-channel weight and bias
  bool channels_last = false;  // channel axis: last instead of dim 1
};

}  // namespace normlayers
