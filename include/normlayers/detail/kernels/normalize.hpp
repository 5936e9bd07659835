// SPDX-License-Identifier: MIT
#pragma once

// Forward apply for norms whose affine parameters run along the reduced axis
// (LayerNorm, RMSNorm): one block of S rows of `lanes` values,
//   y[s, t] = (x[s, t] - mean[t]) * rstd[t] * gamma[s] + beta[s]
// gamma/beta may be null (1 and 0). y may alias x.

#include <normlayers/detail/kernels/affine.hpp>
#include <normlayers/detail/kernels/reduce.hpp>

namespace normlayers::detail::kernels {

template <typename T, typename Acc, typename P>
void normalize_block_affine_s(const T* x, T* y, Index S, Index lanes, const Acc* mean,
                              const Acc* rstd, const P* gamma, const P* beta) {
  with_affine(gamma, beta, [&](auto has_gamma, auto has_beta) {
    constexpr bool G = decltype(has_gamma)::value;
    constexpr bool B = decltype(has_beta)::value;
    if (lanes == 1) {
      const Acc mu = mean[0], r = rstd[0];
      for (Index s = 0; s < S; ++s) {
        y[s] = static_cast<T>((static_cast<Acc>(x[s]) - mu) * r * scale_at<G, Acc>(gamma, s) +
                              shift_at<B, Acc>(beta, s));
      }
      return;
    }
    for (Index s = 0; s < S; ++s) {
      const Acc g = scale_at<G, Acc>(gamma, s), b = shift_at<B, Acc>(beta, s);
      const T* xr = x + s * lanes;
      T* yr = y + s * lanes;
      for (Index t = 0; t < lanes; ++t)
        yr[t] = static_cast<T>((static_cast<Acc>(xr[t]) - mean[t]) * rstd[t] * g + b);
    }
  });
}

}  // namespace normlayers::detail::kernels

namespace normlayers::detail::kernels {

// Forward apply for norms whose affine parameters are constant over a
// statistic's values (BatchNorm, InstanceNorm): over one block (see reduce.hpp),
//   y = (x - mean[t]) * scale[t] + shift[t],
// with scale = rstd * gamma and shift = beta precomputed per statistic. y may alias x.
template <typename T, typename Acc>
void normalize_block_per_stat(const T* x, T* y, const Block& b, const Acc* mean, const Acc* scale,
                              const Acc* shift) {
  for_each_in_block(b, [&](Index i, Index t) {
    y[i] = static_cast<T>((static_cast<Acc>(x[i]) - mean[t]) * scale[t] + shift[t]);
  });
}

}  // namespace normlayers::detail::kernels
