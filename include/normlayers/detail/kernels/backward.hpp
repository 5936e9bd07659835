// SPDX-License-Identifier: MIT
#pragma once

// Backward kernels. dx may alias dy: every reduce pass over a block finishes
// before the apply pass writes it.

#include <algorithm>

#include <normlayers/detail/kernels/affine.hpp>
#include <normlayers/detail/kernels/reduce.hpp>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12  // see simd.hpp
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace normlayers::detail::kernels {

// Rows of one statistic each (row-major LayerNorm/RMSNorm), R rows `stride`
// apart, S values per row; per row g = gamma * dy, xc = x - mean (x itself
// for RMSNorm):
//   reduce:  A = sum g,  B = sum g * xc,  in blocks of run_block values;
//            dgamma += sum over the R rows of dy * xc * rstd, dbeta += sum dy,
//            so dgamma/dbeta are loaded and stored once per R rows
//   apply:   dx = (g - A/M) * rstd + xc * (-rstd^3 * B/M)   (A = 0 for RMSNorm)
// g - A/M first, so the terms that cancel (exactly, for M = 1) do so before
// the scaling by rstd. gamma, dgamma, dbeta may be null.
template <bool Centered, int R, typename T, typename P>
void backward_rows_affine_s(const T* x, const T* dy, T* dx, Index S, Index stride, bool stream,
                            const T* mean, const T* rstd, const P* gamma, T* dgamma, T* dbeta) {
  using Pk = packet_t<T>;
  constexpr Index N = packet_size<T>;
  with_affine(gamma, static_cast<const P*>(nullptr), [&](auto has_gamma, auto) {
    constexpr bool G = decltype(has_gamma)::value;
    T mu[R], r[R], A[R], B[R];
    unrolled<R>([&](auto k) {
      mu[k] = Centered ? mean[k] : T(0);
      r[k] = rstd[k];
      A[k] = B[k] = T(0);
    });
    // Values i.. of the R rows (a V of each) into the row sums acc_a/acc_b
    // and the parameter gradients.
    const auto step = [&](auto as, Index i, auto& acc_a, auto& acc_b) {
      using V = decltype(as);
      const V gm = G ? load_as<V>(gamma + i) : splat<V>(T(1));
      V dg = splat<V>(T(0)), db = dg;
      unrolled<R>([&](auto k) {
        const V dv = load_as<V>(dy + k * stride + i);
        const V xc = psub(load_as<V>(x + k * stride + i), splat<V>(mu[k]));
        const V g = G ? rounded(pmul(dv, gm)) : dv;
        acc_a[k] = padd(acc_a[k], g);
        acc_b[k] = madd(g, xc, acc_b[k]);
        dg = madd(pmul(dv, xc), splat<V>(r[k]), dg);
        db = padd(db, dv);
      });
      if (dgamma) store_as(dgamma + i, padd(load_as<V>(dgamma + i), dg));
      if (dbeta) store_as(dbeta + i, padd(load_as<V>(dbeta + i), db));
    };
    for (Index blk = 0; blk < S; blk += run_block) {
      const Index e = std::min(S, blk + run_block);
      Pk a0[R], b0[R], a1[R], b1[R];
      T sa[R], sb[R];
      unrolled<R>([&](auto k) {
        a0[k] = b0[k] = a1[k] = b1[k] = splat<Pk>(T(0));
        sa[k] = sb[k] = T(0);
      });
      Index i = blk;
      for (; i + 2 * N <= e; i += 2 * N) {
        step(Pk(), i, a0, b0);
        step(Pk(), i + N, a1, b1);
      }
      for (; i + N <= e; i += N) step(Pk(), i, a0, b0);
      for (; i < e; ++i) step(T(), i, sa, sb);
      unrolled<R>([&](auto k) {
        A[k] += predux(padd(a0[k], a1[k])) + sa[k];
        B[k] += predux(padd(b0[k], b1[k])) + sb[k];
      });
    }
    // With inputs from memory (`stream`: too large for the caches), the
    // apply, which reads the rows back from L1, asks for the next rows of x
    // and dy meanwhile (see rows_ahead), so their reads overlap it rather than wait for the
    // next reduce: a row of up to a page is otherwise a new stream for the
    // prefetchers each time (measured, AVX-512, fraction of a memcpy:
    // LayerNorm 8192x1024 0.44 -> 0.50, 4096x4096 0.53 -> 0.61; in cache,
    // 64x768 and 256x4096, it costs 12-14 %, hence only when streaming).
    const auto apply = [&](auto prefetch_next) {
      const T inv_m = T(1) / static_cast<T>(S);
      const Index ahead = rows_ahead<T>(R, stride);
      unrolled<R>([&](auto k) {
        const T m = mu[k], rk = r[k];
        const T v = Centered ? -A[k] * inv_m : T(0), k1 = -rk * rk * rk * B[k] * inv_m;
        const Index o = k * stride;
        map2_run(x + o, dy + o, dx + o, S, [=](auto xv, auto dv, Index s) {
          using V = decltype(xv);
          if constexpr (decltype(prefetch_next)::value && !std::is_same_v<V, T>) {
            prefetch(x + o + ahead + s);
            prefetch(dy + o + ahead + s);
          }
          const V g = G ? rounded(pmul(dv, load_as<V>(gamma + s))) : dv;
          return madd(padd(g, splat<V>(v)), splat<V>(rk),
                      pmul(psub(xv, splat<V>(m)), splat<V>(k1)));
        }, stream);
      });
    };
    if (stream) {
      apply(std::true_type());
    } else {
      apply(std::false_type());
    }
  });
}

// Norms whose affine parameters run along the reduced axis (LayerNorm,
// RMSNorm) with lanes across statistics (column-major inputs): one block of
// S rows of `lanes` values, M = S values per statistic,
// g = gamma[s] * dy, xc = x - mean[t] (x itself for RMSNorm: mean is null):
//   reduce:  A[t] = sum_s g,  B[t] = sum_s g * xc,
//            dgamma[s] += sum_t dy * xc * rstd[t],  dbeta[s] += sum_t dy
//   apply:   dx = rstd*g - rstd*A/M - xc*rstd^3*B/M     (Centered: LayerNorm)
//            dx = rstd*g - xc*rstd^3*B/M                 (RMSNorm)
// gamma, dgamma, dbeta may be null. `scratch` holds 4 * lanes values.
template <bool Centered, typename T, typename P>
void backward_block_affine_s(const T* x, const T* dy, T* dx, Index S, Index lanes, Index stride,
                             bool stream, const T* mean,
                             const T* rstd, const P* gamma, T* dgamma, T* dbeta, T* scratch) {
  using Pk = packet_t<T>;
  constexpr Index N = packet_size<T>;
  T* a = scratch;
  T* b = scratch + lanes;
  T* c1 = scratch + 2 * lanes;
  T* c2 = scratch + 3 * lanes;
  with_affine(gamma, static_cast<const P*>(nullptr), [&](auto has_gamma, auto) {
    constexpr bool G = decltype(has_gamma)::value;
    // Lanes across statistics (column-major inputs): gamma[s] is one value
    // per row, every lane its own statistic; c1/c2 hold the row-block partials.
    std::fill(scratch, scratch + 4 * lanes, T(0));
    Index rows = 0;
    for (Index s = 0; s < S; ++s) {
      const T gs = G ? static_cast<T>(gamma[s]) : T(1);
      const T* xr = x + s * stride;
      const T* dr = dy + s * stride;
      Pk dg = splat<Pk>(T(0)), db = dg;
      T dg_tail = 0, db_tail = 0;
      auto lane_step = [&](auto xv, auto dv, Index t, auto& acc_g, auto& acc_b) {
        using V = std::decay_t<decltype(xv)>;
        const V xc = Centered ? psub(xv, load_as<V>(mean + t)) : xv;
        const V g = rounded(pmul(splat<V>(gs), dv));
        store_as(c1 + t, padd(load_as<V>(c1 + t), g));
        store_as(c2 + t, madd(g, xc, load_as<V>(c2 + t)));
        acc_g = madd(pmul(dv, xc), load_as<V>(rstd + t), acc_g);
        acc_b = padd(acc_b, dv);
      };
      Index t = 0;
      for (; t + N <= lanes; t += N) lane_step(load(xr + t), load(dr + t), t, dg, db);
      for (; t < lanes; ++t) lane_step(xr[t], dr[t], t, dg_tail, db_tail);
      if (dgamma) dgamma[s] += predux(dg) + dg_tail;
      if (dbeta) dbeta[s] += predux(db) + db_tail;
      if (++rows == row_block || s + 1 == S) {
        for (Index l = 0; l < lanes; ++l) a[l] += c1[l], b[l] += c2[l], c1[l] = c2[l] = 0;
        rows = 0;
      }
    }
    // dx = (g - A/M) * r + xc * k1 per lane; c1 = -A/M, c2 = k1.
    const T inv_m = T(1) / static_cast<T>(S);
    for (Index t = 0; t < lanes; ++t) {
      const T r = rstd[t];
      c1[t] = Centered ? -a[t] * inv_m : T(0);
      c2[t] = -r * r * r * b[t] * inv_m;
    }
    for (Index s = 0; s < S; ++s) {
      const T gs = G ? static_cast<T>(gamma[s]) : T(1);
      const Index o = s * stride;
      map2_run(x + o, dy + o, dx + o, lanes, [=](auto xv, auto dv, Index t) {
        using V = decltype(xv);
        const V xc = Centered ? psub(xv, load_as<V>(mean + t)) : xv;
        return madd(padd(rounded(pmul(splat<V>(gs), dv)), load_as<V>(c1 + t)), load_as<V>(rstd + t),
                    pmul(xc, load_as<V>(c2 + t)));
      }, stream);
    }
  });
}

}  // namespace normlayers::detail::kernels

namespace normlayers::detail::kernels {

// Norms whose affine map is constant over each statistic (BatchNorm,
// InstanceNorm, GroupNorm), over one block.
// Reduce: sum_dy[t] = sum dy, sum_dyxc[t] = sum dy * (x - mean[t]).
template <typename T>
void backward_reduce_block(const T* x, const T* dy, const Block& b, const T* mean, T* sum_dy,
                           T* sum_dyxc) {
  if (b.contiguous_runs()) {
    const T m = mean[0];
    T sa = 0, sb = 0;
    with_runs_ahead<T>(b, -1, [&](auto ahead) {
      for (Index q = 0; q < b.Q; ++q) {
        T ra = 0, rb = 0;
        const Index o = q * b.q_stride;
        sum2_rows_with<1>(
            b.S,
            [x, dy, xo = x + o, dyo = dy + o, run = ahead.run(q)](auto, Index i, auto as) {
              using V = decltype(as);
              if constexpr (!std::is_same_v<V, T>) run.fetch(x, i), run.fetch(dy, i);
              return std::pair<V, V>(load_as<V>(xo + i), load_as<V>(dyo + i));
            },
            [m](const auto& xd, auto& acc_a, auto& acc_b, auto) {
              using V = std::decay_t<decltype(xd.first)>;
              acc_a = padd(acc_a, xd.second);
              acc_b = madd(xd.second, psub(xd.first, splat<V>(m)), acc_b);
            },
            &ra, &rb);
        sa += ra;
        sb += rb;
      }
    });
    sum_dy[0] = sa;
    sum_dyxc[0] = sb;
    return;
  }
  sum2_lanes(
      x, dy, b,
      [mean](Index t, auto as) {
        using V = decltype(as);
        const V mt = load_as<V>(mean + t);
        return [mt](V xv, V dv, V& acc_a, V& acc_b) {
          acc_a = padd(acc_a, dv);
          acc_b = madd(dv, psub(xv, mt), acc_b);
        };
      },
      sum_dy, sum_dyxc);
}

// Rows of one statistic each whose affine map is constant over the row
// (InstanceNorm channels-first, the channels of a GroupNorm group): R rows
// (stride apart) of S values, sum_dy[k] = sum dy, sum_dyxc[k] = sum dy * (x
// - mean[k]): the sums backward_reduce_block takes over a run, the same for
// a row whatever R.
template <int R, typename T>
void backward_reduce_rows(const T* x, const T* dy, Index S, Index stride, const T* mean,
                          T* sum_dy, T* sum_dyxc) {
  constexpr int R2 = R < 2 ? R : 2;  // rows per sweep: 16 accumulators (see row_moments)
  static_assert(R % R2 == 0, "rows go in pairs");
  unrolled<R / R2>([&](auto pair) {
    constexpr Index k0 = decltype(pair)::value * R2;
    T m[R2];
    unrolled<R2>([&](auto k) { m[k] = mean[k0 + k]; });
    sum2_rows_with<R2>(
        S,
        [xp = x + k0 * stride, dp = dy + k0 * stride, stride](auto k, Index i, auto as) {
          using V = decltype(as);
          return std::pair<V, V>(load_as<V>(xp + k * stride + i), load_as<V>(dp + k * stride + i));
        },
        [&m](const auto& xd, auto& acc_a, auto& acc_b, auto k) {
          using V = std::decay_t<decltype(xd.first)>;
          acc_a = padd(acc_a, xd.second);
          acc_b = madd(xd.second, psub(xd.first, splat<V>(m[k])), acc_b);
        },
        sum_dy + k0, sum_dyxc + k0);
  });
}

// The apply of backward_apply_block over such rows, per row k:
//   dx = (dy * u[k] + v[k]) * w[k] + (x - mean[k]) * z[k]   (u null: 1).
template <int R, typename T>
void backward_apply_rows(const T* x, const T* dy, T* dx, Index S, Index stride, bool stream,
                         const T* mean, const T* u, const T* v, const T* w, const T* z) {
  with_affine(u, static_cast<const T*>(nullptr), [&](auto has_u, auto) {
    constexpr bool U = decltype(has_u)::value;
    T m[R], uk[R], vk[R], wk[R], zk[R];
    unrolled<R>([&](auto k) {
      m[k] = mean[k], uk[k] = U ? u[k] : T(1), vk[k] = v[k], wk[k] = w[k], zk[k] = z[k];
    });
    map_rows_with<R>(
        dx, stride, S, stream, [](Index, auto) { return 0; },
        [=](int, auto k, Index s, auto as) {  // by value: stores to dx cannot alias them
          using V = decltype(as);
          const V dv = load_as<V>(dy + k * stride + s), xv = load_as<V>(x + k * stride + s);
          const V g = U ? rounded(pmul(dv, splat<V>(uk[k]))) : dv;
          return madd(padd(g, splat<V>(vk[k])), splat<V>(wk[k]),
                      pmul(psub(xv, splat<V>(m[k])), splat<V>(zk[k])));
        });
  });
}

// One run of n values of one statistic, each value its own channel (a
// GroupNorm group of one value per channel): the per-channel sums of one
// value each, sum_dy[i] = dy[i] and sum_dyxc[i] = dy[i] * (x[i] - mean) (as
// backward_reduce_block computes them over a row of lanes), and the apply
//   dx[i] = (dy[i] * u[i] + v) * w + (x[i] - mean) * z   (u null: 1).
template <typename T>
void backward_terms_per_lane(const T* x, const T* dy, Index n, T mean, T* sum_dy, T* sum_dyxc) {
  map_run(dy, sum_dy, n, [](auto dv, Index) { return dv; });
  map2_run(x, dy, sum_dyxc, n, [=](auto xv, auto dv, Index) {
    using V = decltype(xv);
    return pmul(dv, psub(xv, splat<V>(mean)));
  });
}
template <typename T>
void backward_run_per_lane(const T* x, const T* dy, T* dx, Index n, T mean, const T* u, T v,
                           T w, T z, bool stream) {
  with_affine(u, static_cast<const T*>(nullptr), [&](auto has_u, auto) {
    constexpr bool U = decltype(has_u)::value;
    map2_run(x, dy, dx, n, [=](auto xv, auto dv, Index i) {
      using V = decltype(xv);
      const V g = U ? rounded(pmul(dv, load_as<V>(u + i))) : dv;
      return madd(padd(g, splat<V>(v)), splat<V>(w), pmul(psub(xv, splat<V>(mean)), splat<V>(z)));
    }, stream);
  });
}

// Apply: dx = (dy * u[t] + v[t]) * w[t] + (x - mean[t]) * z[t], with dy * u
// rounded before v is added, as the reduce pass summed it, so terms that
// cancel (dy - mean(dy) for one value per statistic) cancel exactly. u null:
// 1 (BatchNorm, InstanceNorm: gamma is in w), one load and multiply less.
// ahead > 0 (lanes only): x and dy are prefetched that many values past
// each one read (see pieces_ahead).
template <typename T>
void backward_apply_block(const T* x, const T* dy, T* dx, const Block& b, const T* mean,
                          const T* u, const T* v, const T* w, const T* z, Index ahead = 0) {
  with_affine(u, static_cast<const T*>(nullptr), [&](auto has_u, auto) {
    constexpr bool U = decltype(has_u)::value;
    // By value: see normalize.hpp.
    const T m = mean[0], u0 = U ? u[0] : T(1), v0 = v[0], w0 = w[0], z0 = z[0];
    map2_block(
        x, dy, dx, b,
        [=](auto xv, auto dv) {
          using V = decltype(xv);
          const V g = U ? rounded(pmul(dv, splat<V>(u0))) : dv;
          return madd(padd(g, splat<V>(v0)), splat<V>(w0),
                      pmul(psub(xv, splat<V>(m)), splat<V>(z0)));
        },
        [=](Index t, auto as) {
          using V = decltype(as);
          const V mt = load_as<V>(mean + t), vt = load_as<V>(v + t), wt = load_as<V>(w + t),
                  zt = load_as<V>(z + t);
          if constexpr (U) {
            const V ut = load_as<V>(u + t);
            return [=](V xv, V dv) {
              return madd(padd(rounded(pmul(dv, ut)), vt), wt, pmul(psub(xv, mt), zt));
            };
          } else {
            return [=](V xv, V dv) { return madd(padd(dv, vt), wt, pmul(psub(xv, mt), zt)); };
          }
        },
        packet_aligned<T>(mean, v, w, z) && (!U || packet_aligned<T>(u)), ahead);
  });
}

}  // namespace normlayers::detail::kernels

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic pop
#endif
