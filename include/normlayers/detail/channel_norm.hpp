// SPDX-License-Identifier: MIT
#pragma once

// The shared driver of the norms whose affine map is constant over each
// statistic's values: BatchNorm (a statistic per channel), InstanceNorm (per
// sample and channel) and GroupNorm's apply step (per sample and channel, with
// the statistics of its group). Per-statistic arrays are indexed by the
// statistic's index in the canonical view (storage order of the statistic
// axes); callers expand per-channel parameters to them where the two differ.
// The fused forward/backward normalize each block right after reducing it,
// while it is still in cache (one channel of BatchNorm NCHW is one block).

#include <cmath>
#include <vector>

#include <normlayers/detail/kernels/backward.hpp>
#include <normlayers/detail/kernels/moments.hpp>
#include <normlayers/detail/kernels/normalize.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/detail/trailing_norm.hpp>
#include <normlayers/detail/view.hpp>
#include <normlayers/errors.hpp>

namespace normlayers::detail {

// The channel axis: dim 1, or the last dim with channels_last.
inline int channel_axis(int rank, bool channels_last) { return channels_last ? rank - 1 : 1; }

inline void check_channels(const char* layer, const std::vector<Index>& dims, int axis,
                           Index expected) {
  const Index got = dims[static_cast<std::size_t>(axis)];
  if (got != expected)
    throw_invalid(layer, "input has ", got, " channels at dim ", axis, ", expected ", expected);
}

inline void check_min_rank(const char* layer, const std::vector<Index>& dims, std::size_t min_rank,
                           const char* expected) {
  if (dims.size() < min_rank)
    throw_invalid(layer, "input has dims ", dims_text{dims}, ", expected at least ", min_rank,
                  " dims ", expected);
}

struct ChannelGeometry {
  View view;
  Index channels = 0;
  Index count = 0;  // values per statistic
  int axis = 1;
};

// BatchNorm: a statistic per channel. num_features < 0 accepts any count.
template <typename X>
ChannelGeometry channel_geometry(const char* layer, const X& x, Index num_features,
                                 bool channels_last) {
  const std::vector<Index> dims = dims_of(x);
  check_min_rank(layer, dims, 2, "(N, C, ...)");
  ChannelGeometry g;
  g.axis = channel_axis(static_cast<int>(dims.size()), channels_last);
  g.channels = dims[static_cast<std::size_t>(g.axis)];
  if (num_features >= 0) check_channels(layer, dims, g.axis, num_features);
  std::vector<bool> reduced(dims.size(), true);
  reduced[static_cast<std::size_t>(g.axis)] = false;
  g.view = make_view(dims, tensor_traits<X>::row_major, reduced);
  g.count = g.channels > 0 ? product(dims) / g.channels : 0;
  return g;
}

// Forward over every block. With batch_stats each statistic's own mean and
// biased variance normalize it (and are written to mean_out/var_out);
// otherwise the given stats_mean/stats_var do. rstd_out gets 1/sqrt(var + eps).
// All arrays have one entry per statistic; gamma/beta may be null.
template <typename T, typename P, typename Acc>
void channel_norm_forward(const View& v, const T* x, T* y, const P* gamma, const P* beta, Acc eps,
                          bool batch_stats, const P* stats_mean, const P* stats_var,
                          Acc* mean_out, Acc* var_out, Acc* rstd_out) {
  const auto lanes = static_cast<std::size_t>(v.T);
  std::vector<Acc> mean(lanes), var(lanes), scale(lanes), shift(lanes), scratch(lanes);
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    if (batch_stats) {
      kernels::block_moments<true>(x + offset, b, mean.data(), var.data(), scratch.data());
      for (Acc& m2 : var) m2 /= static_cast<Acc>(b.reduced());
    } else {
      for (std::size_t t = 0; t < lanes; ++t) {
        mean[t] = static_cast<Acc>(stats_mean[stat + Index(t)]);
        var[t] = static_cast<Acc>(stats_var[stat + Index(t)]);
      }
    }
    for (std::size_t t = 0; t < lanes; ++t) {
      const Index c = stat + Index(t);
      const Acc rstd = Acc(1) / std::sqrt(var[t] + eps);
      scale[t] = rstd * (gamma ? static_cast<Acc>(gamma[c]) : Acc(1));
      shift[t] = beta ? static_cast<Acc>(beta[c]) : Acc(0);
      mean_out[c] = mean[t];
      var_out[c] = var[t];
      rstd_out[c] = rstd;
    }
    kernels::normalize_block_per_stat(x + offset, y + offset, b, mean.data(), scale.data(),
                                      shift.data());
  });
}

// Per statistic mean and biased variance (GroupNorm's statistics step).
template <typename T, typename Acc>
void stat_moments(const View& v, const T* x, Acc* mean, Acc* var) {
  std::vector<Acc> scratch(static_cast<std::size_t>(v.T));
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    kernels::block_moments<true>(x + offset, b, mean + stat, var + stat, scratch.data());
    for (Index t = 0; t < v.T; ++t) var[stat + t] /= static_cast<Acc>(b.reduced());
  });
}

// y = (x - mean) * scale + shift with per-statistic arrays.
template <typename T, typename Acc>
void stat_apply(const View& v, const T* x, T* y, const Acc* mean, const Acc* scale,
                const Acc* shift) {
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    kernels::normalize_block_per_stat(x + offset, y + offset, b, mean + stat, scale + stat,
                                      shift + stat);
  });
}

// sum_dy[stat] = sum dy, sum_dyxc[stat] = sum dy * (x - mean[stat]) for every statistic.
template <typename T, typename Acc>
void stat_backward_reduce(const View& v, const T* x, const T* dy, const Acc* mean, Acc* sum_dy,
                          Acc* sum_dyxc) {
  std::vector<Acc> scratch(static_cast<std::size_t>(2 * v.T));
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    kernels::backward_reduce_block(x + offset, dy + offset, b, mean + stat, sum_dy + stat,
                                   sum_dyxc + stat, scratch.data());
  });
}

// dx = (dy * u + v) * w + (x - mean) * z with per-statistic arrays.
template <typename T, typename Acc>
void stat_backward_apply(const View& v, const T* x, const T* dy, T* dx, const Acc* mean,
                         const Acc* u, const Acc* shift, const Acc* w, const Acc* z) {
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    kernels::backward_apply_block(x + offset, dy + offset, dx + offset, b, mean + stat, u + stat,
                                  shift + stat, w + stat, z + stat);
  });
}

// Backward over every block, given the mean and rstd the forward normalized
// with. batch_stats: gradient through the statistics
//   dx = gamma*rstd * (dy - sum(dy)/M - (x - mean)*rstd^2 * sum(dy*(x - mean))/M);
// otherwise (fixed statistics) dx = gamma*rstd*dy. Per statistic,
// dgamma += rstd*sum(dy*(x - mean)) and dbeta += sum(dy) (may be null).
template <typename T, typename P, typename Acc>
void channel_norm_backward(const View& v, const T* x, const T* dy, T* dx, const P* gamma,
                           const Acc* mean, const Acc* rstd, bool batch_stats, Acc* dgamma,
                           Acc* dbeta) {
  const auto lanes = static_cast<std::size_t>(v.T);
  std::vector<Acc> sum_dy(lanes), sum_dyxc(lanes), scratch(2 * lanes);
  const std::vector<Acc> u(lanes, Acc(1));
  std::vector<Acc> shift(lanes, Acc(0)), w(lanes), z(lanes, Acc(0));
  const bool need_sums = batch_stats || dgamma || dbeta;
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    if (need_sums)
      kernels::backward_reduce_block(x + offset, dy + offset, b, mean + stat, sum_dy.data(),
                                     sum_dyxc.data(), scratch.data());
    const Acc inv_m = Acc(1) / static_cast<Acc>(b.reduced());
    for (std::size_t t = 0; t < lanes; ++t) {
      const Index c = stat + Index(t);
      const Acc r = rstd[c], gr = r * (gamma ? static_cast<Acc>(gamma[c]) : Acc(1));
      w[t] = gr;
      if (batch_stats) {
        shift[t] = -sum_dy[t] * inv_m;
        z[t] = -gr * r * r * sum_dyxc[t] * inv_m;
      }
      if (dgamma) dgamma[c] += sum_dyxc[t] * r;
      if (dbeta) dbeta[c] += sum_dy[t];
    }
    kernels::backward_apply_block(x + offset, dy + offset, dx + offset, b, mean + stat, u.data(),
                                  shift.data(), w.data(), z.data());
  });
}

}  // namespace normlayers::detail
