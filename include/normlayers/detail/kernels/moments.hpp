// SPDX-License-Identifier: MIT
#pragma once

// Moments of one statistic block of the canonical view (all t lanes of one
// (p, r)): the mean and M2 = sum (x - mean)^2, or for the uncentered variant
// (RMSNorm) mean = 0 and M2 = sum x^2. Two passes: a shifted sum for the mean
// (shift = the block's first value, so |mean| >> std loses nothing), then the
// centered sum of squares over data that is still in cache.

#include <limits>

#include <normlayers/detail/kernels/reduce.hpp>

namespace normlayers::detail::kernels {

// One (p, r) block: Q runs, q_stride apart, of S rows of `lanes` contiguous values.
struct Block {
  Index Q = 1, S = 1, lanes = 1, q_stride = 0;
  Index reduced() const { return Q * S; }
};

// mean[t], m2[t] for t < b.lanes. `scratch` holds b.lanes values (used when lanes > 1).
template <bool Centered, typename T, typename Acc>
void block_moments(const T* x, const Block& b, Acc* mean, Acc* m2, Acc* scratch) {
  const Index m = b.reduced();
  if (m == 0) {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = m2[t] = std::numeric_limits<Acc>::quiet_NaN();
    return;
  }
  if (b.lanes == 1) {
    Acc mu = 0;
    if constexpr (Centered) {
      const Acc shift = static_cast<Acc>(x[0]);
      Acc sum = 0;
      for (Index q = 0; q < b.Q; ++q)
        sum += reduce_run<Acc>(x + q * b.q_stride, b.S, [shift](Acc v) { return v - shift; });
      mu = shift + sum / static_cast<Acc>(m);
    }
    Acc ss = 0;
    for (Index q = 0; q < b.Q; ++q)
      ss += reduce_run<Acc>(x + q * b.q_stride, b.S, [mu](Acc v) { return (v - mu) * (v - mu); });
    mean[0] = mu;
    m2[0] = ss;
    return;
  }
  // Lanes across t.
  if constexpr (Centered) {
    const T* first = x;
    reduce_lanes<Acc>(
        x, b.Q, b.S, b.lanes, b.q_stride,
        [first](Acc v, Index t) { return v - static_cast<Acc>(first[t]); }, mean, scratch);
    for (Index t = 0; t < b.lanes; ++t)
      mean[t] = static_cast<Acc>(first[t]) + mean[t] / static_cast<Acc>(m);
  } else {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = 0;
  }
  reduce_lanes<Acc>(
      x, b.Q, b.S, b.lanes, b.q_stride,
      [mean](Acc v, Index t) { return (v - mean[t]) * (v - mean[t]); }, m2, scratch);
}

}  // namespace normlayers::detail::kernels
