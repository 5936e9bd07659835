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
template <bool Centered, typename T>
void block_moments(const T* x, const Block& b, T* mean, T* m2, T* scratch) {
  const Index m = b.reduced();
  if (m == 0) {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = m2[t] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  if (b.lanes == 1) {
    T mu = 0;
    if constexpr (Centered) {
      // sum (x - shift) = sum x - m * shift: exact-enough, even for |mean| >> std.
      const T shift = x[0];
      T sum = 0;
      for (Index q = 0; q < b.Q; ++q)
        sum += sum_run(x + q * b.q_stride, b.S,
                       [shift](auto v) { return psub(v, splat<decltype(v)>(shift)); });
      mu = shift + sum / static_cast<T>(m);
    }
    T ss = 0;
    for (Index q = 0; q < b.Q; ++q)
      ss += sum_run(x + q * b.q_stride, b.S, [mu](auto v) {
        const auto d = psub(v, splat<decltype(v)>(mu));
        return pmul(d, d);
      });
    mean[0] = mu;
    m2[0] = ss;
    return;
  }
  if constexpr (Centered) {
    sum_lanes(
        x, b, [x](auto v, Index t) { return psub(v, load_as<decltype(v)>(x + t)); }, mean, scratch);
    for (Index t = 0; t < b.lanes; ++t) mean[t] = x[t] + mean[t] / static_cast<T>(m);
  } else {
    std::fill(mean, mean + b.lanes, T(0));
  }
  sum_lanes(
      x, b,
      [mean](auto v, Index t) {
        const auto d = psub(v, load_as<decltype(v)>(mean + t));
        return pmul(d, d);
      },
      m2, scratch);
}

// Merges the moments of a second part (count_b values, mean_b, m2_b) into
// those of a first (count_a, mean_a, m2_a), exactly as if computed together
// (Chan, Golub and LeVeque): the step that lets partial statistics computed
// apart (by threads, or by processes in synchronized BatchNorm) combine.
template <typename T>
void merge_moments(T count_a, T& mean_a, T& m2_a, T count_b, T mean_b, T m2_b) {
  const T count = count_a + count_b;
  if (count_b == T(0)) return;
  const T delta = mean_b - mean_a;
  mean_a += delta * (count_b / count);
  m2_a += m2_b + delta * delta * (count_a * count_b / count);
}

}  // namespace normlayers::detail::kernels
