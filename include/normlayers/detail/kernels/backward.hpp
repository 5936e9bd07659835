// SPDX-License-Identifier: MIT
#pragma once

// Backward for norms whose affine parameters run along the reduced axis
// (LayerNorm, RMSNorm), one block of S rows of `lanes` values, M = S values per
// statistic, g = gamma[s] * dy:
//   reduce:  A[t] = sum_s g,  B[t] = sum_s g * (x - mean[t]),
//            dgamma[s] += sum_t dy * (x - mean[t]) * rstd[t],  dbeta[s] += sum_t dy
//   apply:   dx = rstd*g - rstd*A/M - (x - mean)*rstd^3*B/M     (Centered: LayerNorm)
//            dx = rstd*g - x*rstd^3*B/M                          (RMSNorm; mean is null)
// gamma, dgamma, dbeta may be null. dx may alias dy (the reduce pass finishes
// before the apply pass writes).

#include <algorithm>

#include <normlayers/detail/kernels/affine.hpp>
#include <normlayers/detail/kernels/reduce.hpp>

namespace normlayers::detail::kernels {

template <bool Centered, typename Acc>
inline Acc mean_at(const Acc* mean, Index t) {
  if constexpr (Centered) {
    return mean[t];
  } else {
    (void)mean;
    (void)t;
    return Acc(0);
  }
}

// `scratch` holds 4 * lanes values.
template <bool Centered, typename T, typename Acc, typename P>
void backward_block_affine_s(const T* x, const T* dy, T* dx, Index S, Index lanes,
                             const Acc* mean, const Acc* rstd, const P* gamma, Acc* dgamma,
                             Acc* dbeta, Acc* scratch) {
  Acc* a = scratch;
  Acc* b = scratch + lanes;
  Acc* a_part = scratch + 2 * lanes;
  Acc* b_part = scratch + 3 * lanes;
  std::fill(scratch, scratch + 4 * lanes, Acc(0));
  with_affine(gamma, static_cast<const P*>(nullptr), [&](auto has_gamma, auto) {
    constexpr bool G = decltype(has_gamma)::value;
    // Reduce, in blocks of rows so the error grows with the block count.
    const Index rows_per_block = lanes == 1 ? run_block : row_block;
    for (Index s0 = 0; s0 < S; s0 += rows_per_block) {
      const Index s1 = std::min(S, s0 + rows_per_block);
      for (Index s = s0; s < s1; ++s) {
        const Acc gs = scale_at<G, Acc>(gamma, s);
        const T* xr = x + s * lanes;
        const T* dyr = dy + s * lanes;
        Acc dg = 0, db = 0;
        for (Index t = 0; t < lanes; ++t) {
          const Acc d = static_cast<Acc>(dyr[t]);
          const Acc xc = static_cast<Acc>(xr[t]) - mean_at<Centered>(mean, t);
          a_part[t] += gs * d;
          b_part[t] += gs * d * xc;
          dg += d * xc * rstd[t];
          db += d;
        }
        if (dgamma) dgamma[s] += dg;
        if (dbeta) dbeta[s] += db;
      }
      for (Index t = 0; t < lanes; ++t) {
        a[t] += a_part[t];
        b[t] += b_part[t];
        a_part[t] = b_part[t] = 0;
      }
    }
    // Apply: per lane, dx = r*g + c1 + xc*c2.
    const Acc inv_m = Acc(1) / static_cast<Acc>(S);
    Acc* c1 = a_part;  // reuse the partial buffers for the per-lane coefficients
    Acc* c2 = b_part;
    for (Index t = 0; t < lanes; ++t) {
      const Acc r = rstd[t];
      c1[t] = Centered ? -r * a[t] * inv_m : Acc(0);
      c2[t] = -r * r * r * b[t] * inv_m;
    }
    for (Index s = 0; s < S; ++s) {
      const Acc gs = scale_at<G, Acc>(gamma, s);
      const T* xr = x + s * lanes;
      const T* dyr = dy + s * lanes;
      T* dxr = dx + s * lanes;
      for (Index t = 0; t < lanes; ++t) {
        const Acc xc = static_cast<Acc>(xr[t]) - mean_at<Centered>(mean, t);
        dxr[t] = static_cast<T>(rstd[t] * gs * static_cast<Acc>(dyr[t]) + c1[t] + xc * c2[t]);
      }
    }
  });
}

}  // namespace normlayers::detail::kernels

namespace normlayers::detail::kernels {

// Backward for norms whose affine parameters are constant over a statistic's
// values (BatchNorm, InstanceNorm), over one block (see reduce.hpp).
// Reduce: sums[t] = {sum dy, sum dy * (x - mean[t])}.
template <typename T, typename Acc>
void backward_reduce_block(const T* x, const T* dy, const Block& b, const Acc* mean,
                           Sum2<Acc>* sums, Sum2<Acc>* scratch) {
  reduce_block<Sum2<Acc>>(
      b,
      [&](Index i, Index t) {
        const Acc d = static_cast<Acc>(dy[i]);
        return Sum2<Acc>{d, d * (static_cast<Acc>(x[i]) - mean[t])};
      },
      sums, scratch);
}

// Apply: dx = k_dy[t] * dy + k_xc[t] * (x - mean[t]) + k_0[t]. dx may alias dy.
template <typename T, typename Acc>
void backward_apply_block(const T* x, const T* dy, T* dx, const Block& b, const Acc* mean,
                          const Acc* k_dy, const Acc* k_xc, const Acc* k_0) {
  for_each_in_block(b, [&](Index i, Index t) {
    dx[i] = static_cast<T>(k_dy[t] * static_cast<Acc>(dy[i]) +
                           k_xc[t] * (static_cast<Acc>(x[i]) - mean[t]) + k_0[t]);
  });
}

}  // namespace normlayers::detail::kernels
