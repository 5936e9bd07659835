// SPDX-License-Identifier: MIT
#pragma once

// Moments of one statistic block of the canonical view (all t lanes of one
// (p, r)): the mean and M2 = sum (x - mean)^2, or for the uncentered variant
// (RMSNorm) mean = 0 and M2 = sum x^2. Contiguous values: one pass of sums
// shifted by a value near the mean, checked for cancellation (see
// first_values_mean). Lanes across statistics: per chunk of rows (in L1/L2
// while it is read) one pass of sums shifted by a mean of earlier rows, the
// chunks' moments merged in order, so a tall block is read from memory once
// (see block_moments).

#include <limits>

#include <normlayers/detail/kernels/reduce.hpp>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12  // see simd.hpp
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

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
  mean_a = madd(delta, splat<V>(count_b / count), mean_a);
  m2_a = padd(m2_a, madd(pmul(delta, delta), splat<V>(count_a * count_b / count), m2_b));
}

// merge_moments of `lanes` statistics side by side: (mean_b, m2_b)[t], from
// count_b values each, merged into (mean_a, m2_a)[t], from count_a.
template <typename T>
void merge_moments_lanes(T count_a, T* mean_a, T* m2_a, T count_b, const T* mean_b,
                         const T* m2_b, Index lanes) {
  constexpr Index N = packet_size<T>;
  Index t = 0;
  for (; t + N <= lanes; t += N) {
    packet_t<T> m = load(mean_a + t), s = load(m2_a + t);
    merge_moments(count_a, m, s, count_b, load(mean_b + t), load(m2_b + t));
    store(mean_a + t, m);
    store(m2_a + t, s);
  }
  for (; t < lanes; ++t) merge_moments(count_a, mean_a[t], m2_a[t], count_b, mean_b[t], m2_b[t]);
}

// The moments of D statistics of `count` values each (statistic d's mean
// and M2 at m[d * stride], m2[d * stride]) as those of all their values:
//   mean = the average of the means,
//   M2 = sum of the M2s + count * sum_d (m[d] - mean)^2,
// exact for equal counts (the between-statistics part from deviations taken
// after the mean, so nothing cancels), with no division per statistic, and
// vectorized for contiguous statistics (a GroupNorm group from its channels,
// a channel from its positions).
template <typename T>
void merge_equal_moments(Index D, T count, const T* m, const T* m2, Index stride, T& mean,
                         T& M2) {
  if (stride == 1) {
    mean = sum_values(m, D) / static_cast<T>(D);
    const T between = sum_run(m, D, [mu = mean](auto acc, auto v) {
      using V = decltype(v);
      const V d = psub(v, splat<V>(mu));
      return madd(d, d, acc);
    });
    M2 = sum_values(m2, D) + count * between;
    return;
  }
  T sum = 0, within = 0, between = 0;
  for (Index d = 0; d < D; ++d) sum += m[d * stride];
  mean = sum / static_cast<T>(D);
  for (Index d = 0; d < D; ++d) {
    const T dev = m[d * stride] - mean;
    within += m2[d * stride];
    between += dev * dev;
  }
  M2 = within + count * between;
}

// The terms of the centered pass: acc + (v - mu)^2.
template <typename V, typename S>  // S: the scalar mean, or a V of means
inline V square_term(const V& acc, const V& v, const S& mu) {
  V d;
  if constexpr (std::is_same_v<S, V>) {
    d = psub(v, mu);
  } else {
    d = psub(v, splat<V>(mu));
  }
  return madd(d, d, acc);
}

// Contiguous values take one pass of shifted sums, s1 = sum (x - K) and
// s2 = sum (x - K)^2, with K the mean of the first (up to a packet of)
// values: then mean = K + s1/n and M2 = s2 - s1^2/n. The subtraction loses
// log2(s2 / M2) bits, and s2 / M2 = 1 + n (mean - K)^2 / M2 is close to 1
// unless the first values are far from the mean; when it exceeds 4 (more
// than 2 bits) M2 is recomputed by a centered pass, so |mean| >> std, sorted
// or adversarial inputs lose nothing either.
template <typename T>
T first_values_mean(const T* x, Index n) {
  constexpr Index N = packet_size<T>;
  if (n >= N) return predux(load(x)) / static_cast<T>(N);
  T sum = 0;
  for (Index i = 0; i < n; ++i) sum += x[i];
  return sum / static_cast<T>(n);
}
template <typename V, typename S>  // S: the scalar shift, or a V of shifts
inline void shifted_terms(const V& v, V& s1, V& s2, const S& shift) {
  V d;
  if constexpr (std::is_same_v<S, V>) {
    d = psub(v, shift);
  } else {
    d = psub(v, splat<V>(shift));
  }
  s1 = accumulate(s1, d);  // an add, on the FMA pipes (see accumulate)
  s2 = madd(d, d, s2);
}
// mean and M2 from the shifted sums; false if M2 needs the centered pass.
template <typename T>
bool moments_from_shifted(T shift, T s1, T s2, Index n, T& mean, T& m2) {
  const T d = s1 / static_cast<T>(n);
  mean = shift + d;
  m2 = madd(-s1, d, s2);  // s2 - s1 * d, the product unrounded (see madd)
  return s2 <= T(4) * m2;  // also false for NaN
}

// mean[k], m2[k] of R rows (stride apart) of S > 0 values, one statistic per
// row (row-major LayerNorm/RMSNorm, short runs of InstanceNorm, small
// GroupNorm groups). A row's result does not depend on R.
template <bool Centered, int R, typename T>
void row_moments(const T* x, Index stride, Index S, T* mean, T* m2) {
  if constexpr (!Centered) {
    sum_rows<R>(x, stride, S, [](auto acc, auto v, auto) { return square_term(acc, v, T(0)); }, m2);
    unrolled<R>([&](auto k) { mean[k] = T(0); });
  } else {
    T shift[R], s1[R], s2[R];
    unrolled<R>([&](auto k) { shift[k] = first_values_mean(x + k * stride, S); });
    constexpr int R2 = R < 2 ? R : 2;  // rows per sweep: 8 accumulators each
    static_assert(R % R2 == 0, "rows go in pairs");
    unrolled<R / R2>([&](auto pair) {
      constexpr Index k0 = decltype(pair)::value * R2;
      sum2_rows_with<R2>(
          S,
          [xp = x + k0 * stride, stride](auto k, Index i, auto as) {
            return load_as<decltype(as)>(xp + k * stride + i);
          },
          [&shift](const auto& v, auto& a, auto& b, auto k) { shifted_terms(v, a, b, shift[k0 + k]); },
          s1 + k0, s2 + k0);
    });
    unrolled<R>([&](auto k) {
      if (!moments_from_shifted(shift[k], s1[k], s2[k], S, mean[k], m2[k]))
        m2[k] = sum_run(x + k * stride, S,
                        [mu = mean[k]](auto acc, auto v) { return square_term(acc, v, mu); });
    });
  }
}

// LayerNorm rows, InstanceNorm maps (channels-first) and GroupNorm groups of
// at most this many values take their moments a packet of rows at a time
// (short_rows_moments, for_each_row_moments).
inline constexpr Index short_row_values = 256;

// row_moments<true> of rows <= packet_size<T> rows (stride apart) of 0 < S
// values (S at most short_row_values): per row the shifted sums' packets as
// in row_moments (and its first packet's mean as the shift), then the
// horizontal sums of all rows at once (predux_each) and the finish and the
// cancellation check across rows in one packet. Short rows are otherwise
// bound by the latency of one row's reductions and checks after another
// (LayerNorm over 64 values: ~8 ns a row of moments in cache). RMSNorm's
// single sum has no such chain: its rows read no faster this way (RMSNorm
// 2048x64 in cache 14 ns a row either way; 65536x128 from memory 0.8-0.9x).
// The sweeps ask for the values rows_ahead on (the next packet of rows, or
// 8 KiB), so that the reads of one packet of rows overlap the pass over the
// previous one (see for_each_row_moments). A row's result does not depend
// on `rows` (nor on the way: predux_each adds in predux's order, so the
// values are those of row_moments). mean and m2 hold packet_size<T> values
// (those past `rows` are left unspecified).
template <typename T>
void short_rows_moments(const T* x, Index stride, Index S, Index rows, T* mean, T* m2) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  alignas(sizeof(P)) T shift[N], tail_a[N], tail_b[N];
  if (S >= N) {
    P first[N];
    for (Index k = 0; k < N; ++k) first[k] = k < rows ? load(x + k * stride) : splat<P>(T(0));
    store(shift, pmul(predux_each<T>(first), splat<P>(T(1) / static_cast<T>(N))));
  } else {
    for (Index k = 0; k < N; ++k) shift[k] = k < rows ? first_values_mean(x + k * stride, S) : T(0);
  }
  // Sweeps of up to 2 rows (8 accumulators each, see row_moments).
  P sums_a[N], sums_b[N];
  Index k = 0;
  const Index ahead = rows_ahead<T>(int(N), stride);
  const auto sweep = [&](auto r) {
    sum2_rows_packets<decltype(r)::value>(
        0, S,
        [xk = x + k * stride, stride, ahead](auto j, Index i, auto as) {
          using V = decltype(as);
          if constexpr (!std::is_same_v<V, T>) prefetch(xk + j * stride + i + ahead);
          return load_as<V>(xk + j * stride + i);
        },
        [&shift, k](const auto& v, auto& a, auto& b, auto j) {
          shifted_terms(v, a, b, shift[k + j]);
        },
        sums_a + k, sums_b + k, tail_a + k, tail_b + k);
  };
  if constexpr (N >= 2) {  // (a scalar build's batch is one row)
    for (; k + 2 <= rows; k += 2) sweep(std::integral_constant<int, 2>());
  }
  if (k < rows) sweep(std::integral_constant<int, 1>()), ++k;
  for (; k < N; ++k) sums_a[k] = sums_b[k] = splat<P>(T(0)), tail_a[k] = tail_b[k] = T(0);
  // moments_from_shifted, across rows
  const P s1 = padd(predux_each<T>(sums_a), load(tail_a));
  const P s2 = padd(predux_each<T>(sums_b), load(tail_b));
  const P d = Eigen::internal::pdiv(s1, splat<P>(static_cast<T>(S)));
  store(mean, padd(load(shift), d));
  const P M2 = madd(pnegate(s1), d, s2);
  store(m2, M2);
  if (predux_any(pcmp_lt_or_nan(pmul(splat<P>(T(4)), M2), s2))) {
    store(tail_b, s2);
    for (k = 0; k < rows; ++k)
      if (!(tail_b[k] <= T(4) * m2[k]))
        m2[k] = sum_run(x + k * stride, S,
                        [mu = mean[k]](auto acc, auto v) { return square_term(acc, v, mu); });
  }
}

// Calls f(row, count, mean, m2, group) for rows [first, last) of S > 0
// values (row r at x + r * stride), one statistic per row, with the
// moments of rows row .. row + count - 1 in mean[0 .. count) and m2[...]:
// for Centered rows of at most short_row_values values a packet of rows at
// a time (short_rows_moments; count an Index, group packet_size<T>), else
// rows_at_once at a time if at_once, then one by one (row_moments; count a
// std::integral_constant, group its value). `group`: the rows a pass over
// them takes, read before it (how far on it prefetches, see rows_ahead).
// `out`, if given: the rows' output (laid out as x), whose next packet of
// rows in the range (another thread may write past it) is asked for
// (prefetch_for_write) before f writes this one's: a packet of rows is a
// burst of stores to lines not in cache (measured, AVX-512, benchmarks/ab,
// InstanceNorm 32x2048x7x7 forward, against rows_at_once at a time:
// 0.78-0.80x without, 1.10-1.13x with).
template <bool Centered, typename T, typename F>
void for_each_row_moments(const T* x, Index stride, Index S, Index first, Index last,
                          bool at_once, F f, const T* out = nullptr) {
  constexpr Index N = packet_size<T>;
  if (Centered && S <= short_row_values) {
    for (Index row = first; row < last; row += N) {
      alignas(sizeof(packet_t<T>)) T mean[N], m2[N];
      const Index count = std::min(N, last - row);
      short_rows_moments(x + row * stride, stride, S, count, mean, m2);
      if (out && row + N < last)
        prefetch_for_write(out + (row + N) * stride, std::min(N, last - row - N) * stride);
      f(row, count, mean, m2, int(N));
    }
    return;
  }
  for_each_row_group(first, last, at_once, [&](Index row, auto count) {
    constexpr int R = decltype(count)::value;
    T mean[R], m2[R];
    row_moments<Centered, R>(x + row * stride, stride, S, mean, m2);
    f(row, count, mean, m2, R);
  });
}

// M2 -> rstd in place: m2[k] = 1 / sqrt(m2[k] / count + eps) for k < n, by
// packets with the correctly rounded square root (sqrt_exact), as std::sqrt
// is: the same values as one at a time.
template <typename T>
void rstd_from_m2(T* m2, Index n, T count, T eps) {
  constexpr Index N = packet_size<T>;
  const auto rstd = [count, eps](auto v) {
    using V = decltype(v);
    const V var = padd(Eigen::internal::pdiv(v, splat<V>(count)), splat<V>(eps));
    return Eigen::internal::pdiv(splat<V>(T(1)), sqrt_exact<T>(var));
  };
  Index k = 0;
  for (; k + N <= n; k += N) store(m2 + k, rstd(load(m2 + k)));
  for (; k < n; ++k) m2[k] = rstd(m2[k]);
}

// The moments of a block of contiguous runs in two steps, so that a sweep
// over another block can ride along the read (see channel_norm_forward,
// group_norm_forward_fused): runs_shifted_sums reads the block once; before
// run q it takes the functor also(q) and calls it with every offset o of
// the block the run passes (o, as) (a packet or, in tails, a scalar
// position: the type of `as`), prefetching along its runs and, from the
// last, into the block at offset `next` (-1: none; see with_runs_ahead);
// runs_moments finishes the moments from the sums (with the centered pass
// when they cancel, see first_values_mean).
template <typename T>
struct ShiftedSums {
  T shift = 0, s1 = 0, s2 = 0;
};
template <typename T, typename Also>
ShiftedSums<T> runs_shifted_sums(const T* x, const Block& b, Also also, Index next = -1) {
  ShiftedSums<T> sums;
  sums.shift = first_values_mean(x, b.S);
  with_runs_ahead<T>(b, next, [&](auto ahead) {
    for (Index q = 0; q < b.Q; ++q) {
      T a, c;
      const Index o = q * b.q_stride;
      // also(q) by value: held by reference (the caller's copy, whose address
      // this call hands on), its pointers and constants were loaded again
      // after every store it made, a store through a packet type being
      // allowed to alias anything (measured, AVX-512, channels-first
      // BatchNorm 32x64x56x56 forward, both builds linked into one process,
      // interleaved: 1.06-1.19x as fast, median 1.08x).
      sum2_rows_with<1>(
          b.S,
          [x, p = x + o, o, run = ahead.run(q), at = also(q)](auto, Index i, auto as) {
            if constexpr (!std::is_same_v<decltype(as), T>) run.fetch(x, i);
            at(o + i, as);
            return load_as<decltype(as)>(p + i);
          },
          [shift = sums.shift](const auto& v, auto& sa, auto& sb, auto) {
            shifted_terms(v, sa, sb, shift);
          },
          &a, &c);
      sums.s1 += a;
      sums.s2 += c;
    }
  });
  return sums;
}
// sum (x - mu)^2 over the block's runs.
template <typename T>
T runs_squares(const T* x, const Block& b, T mu) {
  T ss = 0;
  for (Index q = 0; q < b.Q; ++q)
    ss += sum_run(x + q * b.q_stride, b.S, [mu](auto acc, auto v) { return square_term(acc, v, mu); });
  return ss;
}
template <typename T>
void runs_moments(const T* x, const Block& b, const ShiftedSums<T>& sums, T* mean, T* m2) {
  if (!moments_from_shifted(sums.shift, sums.s1, sums.s2, b.reduced(), mean[0], m2[0]))
    m2[0] = runs_squares(x, b, mean[0]);
}
// The `also` of runs_shifted_sums that calls f(o, as) in every run.
template <typename F>
constexpr auto in_every_run(F f) {
  return [f](Index) { return f; };
}
// The `also` of a sweep that has nothing riding along.
inline constexpr auto nothing_else = in_every_run([](Index, auto) {});

// Rows whose mean K shifts a block's first chunk of lanes (see
// block_moments). Whatever the data, M2 >= m (K - mean)^2 over the chunk's
// first m rows, so s2 / M2 = 1 + n (mean - K)^2 / M2 <= 1 + n / m: at most
// log2(9) bits lost to cancellation in a chunk of 128 rows before the check.
inline constexpr Index shift_rows = 16;

// The `ride` of a lane sweep that has nothing riding along.
struct no_ride {
  template <typename K, typename V>
  auto operator()(Index, K, V) const {
    return [](Index) {};
  }
};

// Packets per strip of lanes in block_moments.
inline constexpr int moments_strip = vector_registers / 4;

// mean[t], m2[t] for t < b.lanes. Lanes across statistics (not contiguous
// runs) optionally carry a sweep over another block riding along the read:
// per chunk of rows and strip of lanes, ride(t0, k, as) (the strip's first
// lane, its width std::integral_constant<int, K> and value type, as in
// for_each_strip) returns a functor of the row offset, called once for every
// row of the chunk right after its values are summed.
template <bool Centered, typename T, typename Ride = no_ride>
void block_moments(const T* x, const Block& b, T* mean, T* m2, Ride ride = {}) {
  const Index m = b.reduced();
  if (m == 0) {
    for (Index t = 0; t < b.lanes; ++t) mean[t] = m2[t] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  if (b.contiguous_runs()) {
    if constexpr (Centered) {
      runs_moments(x, b, runs_shifted_sums(x, b, nothing_else), mean, m2);
    } else {
      mean[0] = T(0);
      m2[0] = runs_squares(x, b, T(0));
    }
    return;
  }
  // Lanes across statistics, per chunk of rows (in L1/L2 while it is read)
  // and strip of lanes, accumulators in registers: one pass of sums shifted
  // by K, each chunk's moments merged into the running ones in order. The
  // first chunk's K is the mean of its first shift_rows rows, and a strip in
  // which a lane loses more than 2 bits (s2 > 4 M2, as for contiguous values,
  // see first_values_mean) takes a centered pass over the chunk, still in
  // cache. Later chunks' K is the running mean, which cannot lose precision:
  // the chunk's M2 = s2 - s1^2/n errs by ~eps * s2 = eps * (M2_c + n_c
  // (mean_c - K)^2), and the merge adds n_a n_c / (n_a + n_c) (mean_c - K)^2
  // >= n_c (mean_c - K)^2 / 2 (n_a >= n_c) to the total, so the error stays
  // within ~2 eps of the total M2 however far the chunk's mean moved. (Two
  // passes over every first chunk, as before, cost the channels-last
  // BatchNorm forward 32x64x56x56, in chunks of 256 rows, 420-445 us of
  // moments against 352-369 us, AVX-512 micro-benchmark; the check costs
  // nothing measurable.)
  Index count = 0;
  for_each_row_chunk(b, [&](auto rows, Index n) {
    for_each_strip<T, moments_strip>(b.lanes, [&](Index t0, auto k, auto as) {
      using V = decltype(as);
      constexpr int K = decltype(k)::value;
      constexpr Index W = width_of<V, T>;
      const auto at = [x, t0](Index row, Index i) { return load_as<V>(x + row + t0 + i * W); };
      const auto along = ride(t0, k, as);
      const V inv_n = splat<V>(T(1) / static_cast<T>(n));
      V mu[K], ss[K], shift[K];
      unrolled<K>([&](auto i) { mu[i] = ss[i] = splat<V>(T(0)); });
      if constexpr (!Centered) {
        rows([&, at, along](Index row) {
          unrolled<K>([&](auto i) { ss[i] = square_term(ss[i], at(row, i), mu[i]); });
          along(row);
        });
      } else {
        if (count > 0) {
          unrolled<K>([&](auto i) { shift[i] = load_as<V>(mean + t0 + i * W); });
        } else {
          const Index first_rows = std::min(n, shift_rows);
          rows([&](Index row) { unrolled<K>([&](auto i) { mu[i] = padd(mu[i], at(row, i)); }); },
               first_rows);
          const V inv_m = splat<V>(T(1) / static_cast<T>(first_rows));
          unrolled<K>([&](auto i) { shift[i] = pmul(mu[i], inv_m), mu[i] = splat<V>(T(0)); });
        }
        rows([&, at, along](Index row) {
          unrolled<K>([&](auto i) { shifted_terms(at(row, i), mu[i], ss[i], shift[i]); });
          along(row);
        });
        bool cancels = false;  // somewhere s2 > 4 M2 (or NaN), checked in the first chunk
        unrolled<K>([&](auto i) {
          const V s1 = mu[i], s2 = ss[i], d = pmul(s1, inv_n);
          mu[i] = padd(shift[i], d);
          ss[i] = madd(pnegate(s1), d, s2);
          if (count == 0) cancels |= predux_any(pcmp_lt_or_nan(pmul(splat<V>(T(4)), ss[i]), s2));
        });
        if (cancels) {
          unrolled<K>([&](auto i) { ss[i] = splat<V>(T(0)); });
          rows([&](Index row) { unrolled<K>([&](auto i) { ss[i] = square_term(ss[i], at(row, i), mu[i]); }); });
        }
      }
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

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic pop
#endif
