// SPDX-License-Identifier: MIT
#pragma once

// Forward apply kernels; y may alias x.

#include <normlayers/detail/kernels/affine.hpp>
#include <normlayers/detail/kernels/reduce.hpp>

namespace normlayers::detail::kernels {

// Norms whose affine parameters run along the reduced axis (LayerNorm,
// RMSNorm): one block of S rows (stride apart) of `lanes` values,
//   y[s, t] = (x[s, t] - mean[t]) * rstd[t] * gamma[s] + beta[s]
// gamma/beta may be null (1 and 0).
template <typename T, typename P>
void normalize_block_affine_s(const T* x, T* y, Index S, Index lanes, Index stride, const T* mean,
                              const T* rstd, const P* gamma, const P* beta, bool stream) {
  with_affine(gamma, beta, [&](auto has_gamma, auto has_beta) {
    constexpr bool G = decltype(has_gamma)::value;
    constexpr bool B = decltype(has_beta)::value;
    if (lanes == 1 && stride == 1) {
      const T mu = mean[0], r = rstd[0];
      map_run(x, y, S, [=](auto v, Index s) {  // by value: stores to y cannot alias them
        using V = decltype(v);
        V out = pmul(psub(v, splat<V>(mu)), splat<V>(r));
        if constexpr (G) out = pmul(out, load_as<V>(gamma + s));
        if constexpr (B) out = padd(out, load_as<V>(beta + s));
        return out;
      }, stream);
      return;
    }
    for (Index s = 0; s < S; ++s) {
      const T g = G ? static_cast<T>(gamma[s]) : T(1), b = B ? static_cast<T>(beta[s]) : T(0);
      map_run(x + s * stride, y + s * stride, lanes, [=](auto v, Index t) {
        using V = decltype(v);
        return pmadd(pmul(psub(v, load_as<V>(mean + t)), load_as<V>(rstd + t)), splat<V>(g),
                     splat<V>(b));
      }, stream);
    }
  });
}

// Norms whose affine map is constant over each statistic (BatchNorm,
// InstanceNorm, GroupNorm's apply): over one block,
//   y = (x - mean[t]) * scale[t] + shift[t]
// with scale = rstd * gamma and shift = beta precomputed per statistic.
template <typename T>
void normalize_block_per_stat(const T* x, T* y, const Block& b, const T* mean, const T* scale,
                              const T* shift) {
  // Constants by value: stores to y cannot alias them.
  const T m = mean[0], sc = scale[0], sh = shift[0];
  map_block(
      x, y, b,
      [=](auto v) {
        using V = decltype(v);
        return pmadd(psub(v, splat<V>(m)), splat<V>(sc), splat<V>(sh));
      },
      [=](Index t, auto as) {
        using V = decltype(as);
        const V mt = load_as<V>(mean + t), st = load_as<V>(scale + t), ht = load_as<V>(shift + t);
        return [=](V v) { return pmadd(psub(v, mt), st, ht); };
      });
}

}  // namespace normlayers::detail::kernels
