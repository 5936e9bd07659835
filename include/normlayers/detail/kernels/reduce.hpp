// SPDX-License-Identifier: MIT
#pragma once

// Summation in a fixed order whose rounding error grows with the block length
// plus the number of blocks rather than with n. Every sum over a statistic's
// values goes through reduce_block, so there is one place to tune (and one
// order to keep for bitwise determinism across thread counts).
//
// A statistic block of the canonical view (all t lanes of one (p, r)) is Q
// runs, q_stride apart, of S rows of `lanes` contiguous values. The summand is
// a function of the offset in the block and the lane, so one pass can read
// several arrays; V is the accumulator (a scalar, or Sum2 for two sums).

#include <algorithm>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail::kernels {

using Index = Eigen::Index;

struct Block {
  Index Q = 1, S = 1, lanes = 1, q_stride = 0;
  Index reduced() const { return Q * S; }
};

// Two sums carried together (e.g. sum(dy) and sum(dy * (x - mean))).
template <typename Acc>
struct Sum2 {
  Acc a = 0, b = 0;
  Sum2& operator+=(const Sum2& o) {
    a += o.a;
    b += o.b;
    return *this;
  }
  friend Sum2 operator+(Sum2 l, const Sum2& r) { return l += r; }
};

inline constexpr Index run_block = 1024;  // values per partial sum, contiguous runs
inline constexpr Index row_block = 128;   // rows per partial sum, lane sums

// sum of f(i) for i < n: 8 independent accumulators per block of `run_block`
// values, combined pairwise; block sums added in order.
template <typename V, typename F>
V reduce_run(Index n, F f) {
  constexpr Index ways = 8;
  V total{};
  for (Index b = 0; b < n; b += run_block) {
    const Index e = std::min(n, b + run_block);
    V acc[ways] = {};
    Index i = b;
    for (; i + ways <= e; i += ways)
      for (Index l = 0; l < ways; ++l) acc[l] += f(i + l);
    for (Index l = 0; i < e; ++i, ++l) acc[l] += f(i);
    total += ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
  return total;
}

// out[t] = sum over the block of f(offset, t) for every lane t, where offset is
// the element's offset from the block start. `partial` is scratch of b.lanes
// values (unused when lanes == 1).
template <typename V, typename F>
void reduce_block(const Block& b, F f, V* out, V* partial) {
  if (b.lanes == 1) {
    V total{};
    for (Index q = 0; q < b.Q; ++q) {
      const Index base = q * b.q_stride;
      total += reduce_run<V>(b.S, [&](Index i) { return f(base + i, Index(0)); });
    }
    out[0] = total;
    return;
  }
  std::fill(out, out + b.lanes, V{});
  std::fill(partial, partial + b.lanes, V{});
  Index rows_in_partial = 0;
  for (Index q = 0; q < b.Q; ++q) {
    for (Index s = 0; s < b.S; ++s) {
      const Index row = q * b.q_stride + s * b.lanes;
      for (Index t = 0; t < b.lanes; ++t) partial[t] += f(row + t, t);
      if (++rows_in_partial == row_block) {
        for (Index t = 0; t < b.lanes; ++t) out[t] += partial[t], partial[t] = V{};
        rows_in_partial = 0;
      }
    }
  }
  for (Index t = 0; t < b.lanes; ++t) out[t] += partial[t];
}

// Calls f(offset, t) for every element of the block, in memory order.
template <typename F>
void for_each_in_block(const Block& b, F f) {
  for (Index q = 0; q < b.Q; ++q)
    for (Index s = 0; s < b.S; ++s) {
      const Index row = q * b.q_stride + s * b.lanes;
      for (Index t = 0; t < b.lanes; ++t) f(row + t, t);
    }
}

}  // namespace normlayers::detail::kernels
