// SPDX-License-Identifier: MIT
#pragma once

// Moments of one statistic block of the canonical view (all t lanes of one
// (p, r)): the mean and M2 = sum (x - mean)^2, or for the uncentered variant
// (RMSNorm) mean = 0 and M2 = sum x^2. Two passes: a shifted sum for the mean
// (shift = the lane's first value, so |mean| >> std loses nothing), then the
// centered sum of squares over data that is still in cache.

#include <limits>

#include <normlayers/detail/kernels/reduce.hpp>

namespace normlayers::detail::kernels {

// mean[t], m2[t] for t < b.lanes. `scratch` holds b.lanes values.
template <bool Centered, typename T, typename Acc>
void block_moments(const T* x, const Block& b, Acc* mean, Acc* m2, Acc* scratch) {
  const Index m = b.reduced();
  if (m == 0) {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = m2[t] = std::numeric_limits<Acc>::quiet_NaN();
    return;
  }
  if constexpr (Centered) {
    // sum (x - x_first) per lane; x_first is x[t] itself.
    reduce_block<Acc>(
        b, [x](Index i, Index t) { return static_cast<Acc>(x[i]) - static_cast<Acc>(x[t]); },
        mean, scratch);
    for (Index t = 0; t < b.lanes; ++t)
      mean[t] = static_cast<Acc>(x[t]) + mean[t] / static_cast<Acc>(m);
  } else {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = 0;
  }
  reduce_block<Acc>(
      b,
      [x, mean](Index i, Index t) {
        const Acc d = static_cast<Acc>(x[i]) - mean[t];
        return d * d;
      },
      m2, scratch);
}

}  // namespace normlayers::detail::kernels
