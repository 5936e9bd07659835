// SPDX-License-Identifier: MIT
#pragma once

// Forward apply kernels; y may alias x.

#include <normlayers/detail/kernels/affine.hpp>
#include <normlayers/detail/kernels/reduce.hpp>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12  // see simd.hpp
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace normlayers::detail::kernels {

// Norms whose affine parameters run along the reduced axis (LayerNorm,
// RMSNorm), R rows (stride apart) of S values, one statistic per row:
//   y[k, s] = (x[k, s] - mean[k]) * rstd[k] * gamma[s] + beta[s]
// gamma/beta are loaded once for the R rows. gamma/beta may be null (1 and 0).
// A row's result does not depend on R. PrefetchNext (for inputs from
// memory): the pass, which reads the rows back from L1, prefetches the rows
// read next, `group` rows on (the caller's group of rows, read before their
// pass: see rows_ahead, backward_rows_affine_s); a template argument so that the
// callers' other instantiation stays as it was (a runtime switch here cost
// 7 % on cache-resident 64x768).
template <int R, bool PrefetchNext = false, typename T, typename P>
void normalize_rows_affine_s(const T* x, T* y, Index S, Index stride, bool stream, const T* mean,
                             const T* rstd, const P* gamma, const P* beta, int group = R) {
  with_affine(gamma, beta, [&](auto has_gamma, auto has_beta) {
    constexpr bool G = decltype(has_gamma)::value;
    constexpr bool B = decltype(has_beta)::value;
    T mu[R], r[R];
    unrolled<R>([&](auto k) { mu[k] = mean[k], r[k] = rstd[k]; });
    const Index ahead = rows_ahead<T>(group, stride);
    map_rows_with<R>(
        y, stride, S, stream,
        [=](Index s, auto as) {  // by value: stores to y cannot alias them
          using V = decltype(as);
          const V none = splat<V>(T(0));
          return std::pair<V, V>(G ? load_as<V>(gamma + s) : none, B ? load_as<V>(beta + s) : none);
        },
        [=](const auto& gb, auto k, Index s, auto as) {
          using V = decltype(as);
          if constexpr (PrefetchNext && !std::is_same_v<V, T>) prefetch(x + k * stride + s + ahead);
          const V out = pmul(psub(load_as<V>(x + k * stride + s), splat<V>(mu[k])), splat<V>(r[k]));
          if constexpr (G && B) return madd(out, gb.first, gb.second);
          if constexpr (G) return pmul(out, gb.first);
          if constexpr (B) return padd(out, gb.second);
          return out;
        });
  });
}

// The same with lanes across statistics (column-major inputs): one block of
// S rows (stride apart) of `lanes` values,
//   y[s, t] = (x[s, t] - mean[t]) * rstd[t] * gamma[s] + beta[s]
template <typename T, typename P>
void normalize_block_affine_s(const T* x, T* y, Index S, Index lanes, Index stride, const T* mean,
                              const T* rstd, const P* gamma, const P* beta, bool stream) {
  if (lanes == 1 && stride == 1)
    return normalize_rows_affine_s<1>(x, y, S, 0, stream, mean, rstd, gamma, beta);
  with_affine(gamma, beta, [&](auto has_gamma, auto has_beta) {
    constexpr bool G = decltype(has_gamma)::value;
    constexpr bool B = decltype(has_beta)::value;
    for (Index s = 0; s < S; ++s) {
      const T g = G ? static_cast<T>(gamma[s]) : T(1), b = B ? static_cast<T>(beta[s]) : T(0);
      map_run(x + s * stride, y + s * stride, lanes, [=](auto v, Index t) {
        using V = decltype(v);
        return madd(pmul(psub(v, load_as<V>(mean + t)), load_as<V>(rstd + t)), splat<V>(g),
                    splat<V>(b));
      }, stream);
    }
  });
}

// normalize_block_per_stat's map for one statistic of contiguous runs, as a
// functor of an offset o in the block and the value type (a packet or a
// scalar, the type of `as`): what rides along runs_shifted_sums, which
// normalizes one block while it reads the next. Aligned packets are streamed
// when `stream`.
template <typename T>
auto per_stat_apply_at(const T* x, T* y, bool stream, T mean, T scale, T shift) {
  return [=](Index o, auto as) {
    using V = decltype(as);
    const V v = madd(psub(load_as<V>(x + o), splat<V>(mean)), splat<V>(scale), splat<V>(shift));
    if constexpr (!std::is_same_v<V, T>) {
      if (stream && reinterpret_cast<std::uintptr_t>(y + o) % sizeof(V) == 0)
        return store_streaming(y + o, v);
    }
    store_as(y + o, v);
  };
}

// normalize_block_per_stat's map of the lanes t.. (a V of them, V the type
// of `as`) of a block of lanes across statistics, for map_lanes.
template <typename T>
auto per_stat_lane_map(const T* mean, const T* scale, const T* shift) {
  return [=](Index t, auto as) {
    using V = decltype(as);
    const V mt = load_as<V>(mean + t), st = load_as<V>(scale + t), ht = load_as<V>(shift + t);
    return [=](V v) { return madd(psub(v, mt), st, ht); };
  };
}

// normalize_block_per_stat on a block of lanes as the ride of block_moments
// over another block of the same shape (see pipelined_lanes_forward): per
// strip, the functor of the row offset that normalizes the strip's values in
// that row. Aligned packets are streamed when `stream`.
template <typename T>
auto per_stat_apply_lanes(const T* x, T* y, bool stream, const T* mean, const T* scale,
                          const T* shift) {
  return [=, make = per_stat_lane_map(mean, scale, shift)](Index t0, auto k, auto as) {
    using V = decltype(as);
    constexpr int K = decltype(k)::value;
    const auto g = strip_functors<K, T>(make, t0, as);
    // By value: stores to y cannot alias the pointers and constants.
    return [=](Index row) { map_strip_row<K, V>(g, y + row + t0, stream, x + row + t0); };
  };
}

// Rows of one statistic each whose affine map is constant over the row
// (InstanceNorm channels-first, the channels of a GroupNorm group): R rows
// (stride apart) of S values,
//   y[k, s] = (x[k, s] - mean[k]) * scale[k] + shift[k],
// the operations of normalize_block_per_stat on a run: a row's result
// depends on neither R nor which of the two computed it.
template <int R, typename T>
void normalize_rows_per_stat(const T* x, T* y, Index S, Index stride, bool stream, const T* mean,
                             const T* scale, const T* shift) {
  T m[R], sc[R], sh[R];
  unrolled<R>([&](auto k) { m[k] = mean[k], sc[k] = scale[k], sh[k] = shift[k]; });
  map_rows_with<R>(
      y, stride, S, stream, [](Index, auto) { return 0; },
      [=](int, auto k, Index s, auto as) {  // by value: stores to y cannot alias them
        using V = decltype(as);
        return madd(psub(load_as<V>(x + k * stride + s), splat<V>(m[k])), splat<V>(sc[k]),
                    splat<V>(sh[k]));
      });
}

// One run of n values of one statistic, each value its own channel (a
// GroupNorm group of one value per channel):
//   y[i] = (x[i] - mean) * scale[i] + shift[i],
// the operations of normalize_block_per_stat over a row of lanes whose means
// are all `mean`, without its strips of lanes (a group is a few packets).
template <typename T>
void normalize_run_per_lane(const T* x, T* y, Index n, T mean, const T* scale, const T* shift,
                            bool stream) {
  map_run(x, y, n, [=](auto v, Index i) {
    using V = decltype(v);
    return madd(psub(v, splat<V>(mean)), load_as<V>(scale + i), load_as<V>(shift + i));
  }, stream);
}

// Norms whose affine map is constant over each statistic (BatchNorm,
// InstanceNorm, GroupNorm's apply): over one block,
//   y = (x - mean[t]) * scale[t] + shift[t]
// with scale = rstd * gamma and shift = beta precomputed per statistic.
// With ahead > 0 (a block of one contiguous run only, else ignored) the
// apply prefetches the input `ahead` values past each one it reads: the
// block the caller reads next (see channel_norm_forward).
template <typename T>
void normalize_block_per_stat(const T* x, T* y, const Block& b, const T* mean, const T* scale,
                              const T* shift, Index ahead = 0) {
  // Constants by value: stores to y cannot alias them.
  const T m = mean[0], sc = scale[0], sh = shift[0];
  const auto f = [=](auto v) {
    using V = decltype(v);
    return madd(psub(v, splat<V>(m)), splat<V>(sc), splat<V>(sh));
  };
  if (ahead > 0 && b.contiguous_runs() && b.Q == 1) {
    map_run(x, y, b.S, [=](auto v, Index i) {
      if constexpr (!std::is_same_v<decltype(v), T>) prefetch(x + ahead + i);
      return f(v);
    }, b.stream);
    return;
  }
  map_block(x, y, b, f, per_stat_lane_map(mean, scale, shift),
            packet_aligned<T>(mean, scale, shift), ahead);
}

}  // namespace normlayers::detail::kernels

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic pop
#endif
