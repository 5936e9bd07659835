// SPDX-License-Identifier: MIT
#pragma once

// Reductions and element-wise passes over one statistic block of the canonical
// view: Q runs, q_stride apart, of S rows of `lanes` contiguous values (see
// view.hpp). With lanes == 1 a run is contiguous and is reduced along its
// length (sum_run); with lanes > 1 every row holds one value of each of
// `lanes` statistics and the sums run across rows, vector lanes across
// statistics. Every sum over a statistic's values goes through here, in an
// order fixed by the block's shape alone (so results do not depend on the
// thread count), with partial sums per block of rows so the rounding error
// grows with the block length plus the number of blocks, not with n.

#include <algorithm>

#include <normlayers/detail/kernels/simd.hpp>

namespace normlayers::detail::kernels {

// lanes statistics side by side; consecutive rows are row_stride apart (the
// view's T, which exceeds `lanes` when the lanes are cut into pieces).
struct Block {
  Index Q = 1, S = 1, lanes = 1, q_stride = 0, row_stride = 1;
  bool stream = false;  // write outputs with streaming stores (see simd.hpp)
  Index reduced() const { return Q * S; }
  Index row(Index q, Index s) const { return q * q_stride + s * row_stride; }
};

inline constexpr Index row_block = 128;  // rows per partial sum, lane sums

// Calls f(row_offset) for every row of the block in memory order, and
// flush() after every row_block rows and at the end.
template <typename F, typename Flush>
void for_each_row(const Block& b, F f, Flush flush) {
  Index rows = 0;
  for (Index q = 0; q < b.Q; ++q)
    for (Index s = 0; s < b.S; ++s) {
      f(b.row(q, s));
      if (++rows == row_block) flush(), rows = 0;
    }
  flush();
}

// out[t] = sum over the block's rows of f(x[row + t], t) for every lane;
// f(v, t) takes a packet of lanes t.. (or a scalar in the tail). `partial`
// is scratch of b.lanes values.
template <typename T, typename F>
void sum_lanes(const T* x, const Block& b, F f, T* out, T* partial) {
  constexpr Index N = packet_size<T>;
  const Index L = b.lanes;
  std::fill(out, out + L, T(0));
  std::fill(partial, partial + L, T(0));
  for_each_row(
      b,
      [&](Index row) {
        const T* xr = x + row;
        Index t = 0;
        for (; t + N <= L; t += N) store(partial + t, padd(load(partial + t), f(load(xr + t), t)));
        for (; t < L; ++t) partial[t] += f(xr[t], t);
      },
      [&] {
        for (Index t = 0; t < L; ++t) out[t] += partial[t], partial[t] = 0;
      });
}

// Two lane sums over two arrays: f(x, y, a, b, t) adds into a and b.
// `partial` is scratch of 2 * b.lanes values.
template <typename T, typename F>
void sum2_lanes(const T* x, const T* y, const Block& b, F f, T* out_a, T* out_b, T* partial) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  const Index L = b.lanes;
  T* pa = partial;
  T* pb = partial + L;
  std::fill(out_a, out_a + L, T(0));
  std::fill(out_b, out_b + L, T(0));
  std::fill(partial, partial + 2 * L, T(0));
  for_each_row(
      b,
      [&](Index row) {
        Index t = 0;
        for (; t + N <= L; t += N) {
          P a = load(pa + t), c = load(pb + t);
          f(load(x + row + t), load(y + row + t), a, c, t);
          store(pa + t, a);
          store(pb + t, c);
        }
        for (; t < L; ++t) f(x[row + t], y[row + t], pa[t], pb[t], t);
      },
      [&] {
        for (Index t = 0; t < L; ++t) {
          out_a[t] += pa[t], out_b[t] += pb[t];
          pa[t] = pb[t] = 0;
        }
      });
}

// out[i] = f(x[i], t) for every value of the block, t the lane (of a packet's
// first value); with lanes == 1, t = 0 throughout.
template <typename T, typename F>
void map_block(const T* x, T* out, const Block& b, F f) {
  const Index L = b.lanes;
  if (L == 1) {
    for (Index q = 0; q < b.Q; ++q) {
      const Index o = q * b.q_stride;
      map_run(x + o, out + o, b.S, [f](auto v, Index) { return f(v, Index(0)); }, b.stream);
    }
    return;
  }
  for (Index q = 0; q < b.Q; ++q)
    for (Index s = 0; s < b.S; ++s) {
      const Index o = b.row(q, s);
      map_run(x + o, out + o, L, f, b.stream);
    }
}

// out[i] = f(x[i], y[i], t): map_block over two inputs.
template <typename T, typename F>
void map2_block(const T* x, const T* y, T* out, const Block& b, F f) {
  const Index L = b.lanes;
  if (L == 1) {
    for (Index q = 0; q < b.Q; ++q) {
      const Index o = q * b.q_stride;
      map2_run(
          x + o, y + o, out + o, b.S, [f](auto xv, auto yv, Index) { return f(xv, yv, Index(0)); },
          b.stream);
    }
    return;
  }
  for (Index q = 0; q < b.Q; ++q)
    for (Index s = 0; s < b.S; ++s) {
      const Index o = b.row(q, s);
      map2_run(x + o, y + o, out + o, L, f, b.stream);
    }
}

}  // namespace normlayers::detail::kernels
