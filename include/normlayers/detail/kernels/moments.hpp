// SPDX-License-Identifier: MIT
#pragma once

// Moments of one statistic block of the canonical view (all t lanes of one
// (p, r)): the mean and M2 = sum (x - mean)^2, or for the uncentered variant
// (RMSNorm) mean = 0 and M2 = sum x^2. Two passes: a shifted sum for the mean
// (shift = the lane's first value, so |mean| >> std loses nothing), then the
// centered sum of squares over data that is still in cache. Lanes across
// statistics take both passes per chunk of rows, merged chunk by chunk, so a
// tall block is read from memory once.

#include <limits>

#include <normlayers/detail/kernels/reduce.hpp>

namespace normlayers::detail::kernels {

// Merges the moments of a second part (count_b values, mean_b, m2_b) into
// those of a first (count_a, mean_a, m2_a), exactly as if computed together
// (Chan, Golub and LeVeque): the step that lets partial statistics computed
// apart (by threads, or by processes in synchronized BatchNorm) combine.
// V: a scalar T or a packet of them (lanes merged side by side).
template <typename T, typename V>
void merge_moments(T count_a, V& mean_a, V& m2_a, T count_b, V mean_b, V m2_b) {
  const T count = count_a + count_b;
  if (count_b == T(0)) return;
  const V delta = psub(mean_b, mean_a);
  mean_a = pmadd(delta, splat<V>(count_b / count), mean_a);
  m2_a = padd(m2_a, pmadd(pmul(delta, delta), splat<V>(count_a * count_b / count), m2_b));
}

// The terms of the two passes: acc + (v - shift) for the shifted mean (an
// add, as fma(d, 1, acc): see accumulate), acc + (v - mu)^2 for M2.
template <typename V, typename T>
inline V shifted_term(const V& acc, const V& v, T shift) {
  return accumulate(acc, psub(v, splat<V>(shift)));
}
template <typename V, typename T>
inline V square_term(const V& acc, const V& v, T mu) {
  const V d = psub(v, splat<V>(mu));
  return pmadd(d, d, acc);
}

// mean[k], m2[k] of R rows (stride apart) of S > 0 values, one statistic per
// row (row-major LayerNorm/RMSNorm). The shift is the row's first value, so
// |mean| >> std loses nothing. A row's result does not depend on R.
template <bool Centered, int R, typename T>
void row_moments(const T* x, Index stride, Index S, T* mean, T* m2) {
  T mu[R] = {};
  if constexpr (Centered) {
    T shift[R], sum[R];
    unrolled<R>([&](auto k) { shift[k] = x[k * stride]; });
    sum_rows<R>(x, stride, S, [&shift](auto acc, auto v, auto k) { return shifted_term(acc, v, shift[k]); },
                sum);
    unrolled<R>([&](auto k) { mu[k] = shift[k] + sum[k] / static_cast<T>(S); });
  }
  sum_rows<R>(x, stride, S, [&mu](auto acc, auto v, auto k) { return square_term(acc, v, mu[k]); },
              m2);
  unrolled<R>([&](auto k) { mean[k] = mu[k]; });
}

// mean[t], m2[t] for t < b.lanes.
template <bool Centered, typename T>
void block_moments(const T* x, const Block& b, T* mean, T* m2) {
  const Index m = b.reduced();
  if (m == 0) {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = m2[t] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  if (b.contiguous_runs()) {
    T mu = 0;
    if constexpr (Centered) {
      // sum (x - shift) = sum x - m * shift: exact-enough, even for |mean| >> std.
      const T shift = x[0];
      T sum = 0;
      for (Index q = 0; q < b.Q; ++q)
        sum += sum_run(x + q * b.q_stride, b.S, [shift](auto acc, auto v) { return shifted_term(acc, v, shift); });
      mu = shift + sum / static_cast<T>(m);
    }
    T ss = 0;
    for (Index q = 0; q < b.Q; ++q)
      ss += sum_run(x + q * b.q_stride, b.S, [mu](auto acc, auto v) { return square_term(acc, v, mu); });
    mean[0] = mu;
    m2[0] = ss;
    return;
  }
  // Lanes across statistics: per chunk of rows (in L1/L2 while both passes
  // run), the chunk's mean (shifted by its first row) and centered M2 in
  // registers, merged into the running moments in chunk order.
  Index count = 0;
  for_each_row_chunk(b, [&](auto rows, Index n, Index first) {
    for_each_strip<T, vector_registers / 4>(b.lanes, [&](Index t0, auto k, auto as) {
      using V = decltype(as);
      constexpr int K = decltype(k)::value;
      constexpr Index W = width_of<V, T>;
      V mu[K], ss[K];
      unrolled<K>([&](auto i) { mu[i] = ss[i] = splat<V>(T(0)); });
      if constexpr (Centered) {
        V shift[K];
        unrolled<K>([&](auto i) { shift[i] = load_as<V>(x + first + t0 + i * W); });
        rows([&](Index row) {
          unrolled<K>([&](auto i) {
            mu[i] = accumulate(mu[i], psub(load_as<V>(x + row + t0 + i * W), shift[i]));
          });
        });
        const V inv_n = splat<V>(T(1) / static_cast<T>(n));
        unrolled<K>([&](auto i) { mu[i] = pmadd(mu[i], inv_n, shift[i]); });
      }
      rows([&](Index row) {
        unrolled<K>([&](auto i) {
          const V d = psub(load_as<V>(x + row + t0 + i * W), mu[i]);
          ss[i] = pmadd(d, d, ss[i]);
        });
      });
      unrolled<K>([&](auto i) {
        T* mean_t = mean + t0 + i * W;
        T* m2_t = m2 + t0 + i * W;
        if (count == 0) {
          store_as(mean_t, mu[i]);
          store_as(m2_t, ss[i]);
          return;
        }
        V mean_a = load_as<V>(mean_t), m2_a = load_as<V>(m2_t);
        merge_moments(static_cast<T>(count), mean_a, m2_a, static_cast<T>(n), mu[i], ss[i]);
        store_as(mean_t, mean_a);
        store_as(m2_t, m2_a);
      });
    });
    count += n;
  });
}

}  // namespace normlayers::detail::kernels
