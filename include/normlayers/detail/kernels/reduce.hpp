// SPDX-License-Identifier: MIT
#pragma once

// Summation in a fixed order whose rounding error grows with the block length
// plus the number of blocks rather than with n. Every sum in the kernels goes
// through these two helpers, so there is one place to tune (and one order to
// keep for bitwise determinism across thread counts).

#include <algorithm>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail::kernels {

using Index = Eigen::Index;

inline constexpr Index run_block = 1024;  // values per partial sum, contiguous runs
inline constexpr Index row_block = 128;   // rows per partial sum, lane sums

// sum_i f(x[i]) over n contiguous values; f maps an Acc to an Acc.
// 8 independent accumulators per block of `run_block` values, combined pairwise.
template <typename Acc, typename T, typename F>
Acc reduce_run(const T* x, Index n, F f) {
  constexpr Index lanes = 8;
  Acc total = 0;
  for (Index b = 0; b < n; b += run_block) {
    const Index e = std::min(n, b + run_block);
    Acc acc[lanes] = {};
    Index i = b;
    for (; i + lanes <= e; i += lanes)
      for (Index l = 0; l < lanes; ++l) acc[l] += f(static_cast<Acc>(x[i + l]));
    for (Index l = 0; i < e; ++i, ++l) acc[l] += f(static_cast<Acc>(x[i]));
    total += ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
  return total;
}

// out[t] = sum over (q, s) of f(x[q*q_stride + s*lanes + t], t) for t < lanes:
// per-lane sums over Q runs of S rows of `lanes` contiguous values, in blocks
// of `row_block` rows. `partial` is scratch of `lanes` values.
template <typename Acc, typename T, typename F>
void reduce_lanes(const T* x, Index Q, Index S, Index lanes, Index q_stride, F f, Acc* out,
                  Acc* partial) {
  std::fill(out, out + lanes, Acc(0));
  std::fill(partial, partial + lanes, Acc(0));
  Index rows_in_partial = 0;
  for (Index q = 0; q < Q; ++q) {
    const T* run = x + q * q_stride;
    for (Index s = 0; s < S; ++s) {
      const T* row = run + s * lanes;
      for (Index t = 0; t < lanes; ++t) partial[t] += f(static_cast<Acc>(row[t]), t);
      if (++rows_in_partial == row_block) {
        for (Index t = 0; t < lanes; ++t) out[t] += partial[t];
        std::fill(partial, partial + lanes, Acc(0));
        rows_in_partial = 0;
      }
    }
  }
  for (Index t = 0; t < lanes; ++t) out[t] += partial[t];
}

}  // namespace normlayers::detail::kernels
