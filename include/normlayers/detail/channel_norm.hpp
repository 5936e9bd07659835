// SPDX-License-Identifier: MIT
#pragma once

// The shared driver of the norms with one statistic per channel and affine
// parameters per channel (BatchNorm): validation of the channel axis, the
// canonical view, and the loops over statistic blocks that call the kernels.
// Each channel's block is normalized right after its moments, while it is
// still in cache (one channel of BatchNorm NCHW is one block).

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

struct ChannelGeometry {
  View view;
  Index channels = 0;
  Index count = 0;  // values per channel
  int axis = 1;
};

// The channel axis is dim 1, or the last dim with channels_last.
template <typename X>
ChannelGeometry channel_geometry(const char* layer, const X& x, Index num_features,
                                 bool channels_last) {
  const std::vector<Index> dims = dims_of(x);
  const int rank = static_cast<int>(dims.size());
  if (rank < 2)
    throw_invalid(layer, "input has dims ", dims_text{dims},
                  ", expected at least 2 dims (N, C, ...)");
  ChannelGeometry g;
  g.axis = channels_last ? rank - 1 : 1;
  g.channels = dims[static_cast<std::size_t>(g.axis)];
  if (num_features >= 0 && g.channels != num_features)
    throw_invalid(layer, "input has ", g.channels, " channels at dim ", g.axis, ", expected ",
                  num_features);
  std::vector<bool> reduced(dims.size(), true);
  reduced[static_cast<std::size_t>(g.axis)] = false;
  g.view = make_view(dims, tensor_traits<X>::row_major, reduced);
  g.count = g.channels > 0 ? product(dims) / g.channels : 0;
  return g;
}

// Forward over every channel block. With batch_stats the block's own mean and
// biased variance normalize it (and are written to mean_out/var_out);
// otherwise the given stats_mean/stats_var do. rstd_out gets 1/sqrt(var + eps).
// All per-channel arrays have g.channels entries; gamma/beta may be null.
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

// Backward over every channel block, given the mean and rstd the forward
// normalized with. batch_stats: gradient through the batch statistics
//   dx = gamma*rstd * (dy - sum(dy)/M - (x - mean)*rstd^2 * sum(dy*(x - mean))/M);
// otherwise (fixed statistics) dx = gamma*rstd*dy. dgamma += rstd*sum(dy*(x - mean)),
// dbeta += sum(dy), into Acc arrays (may be null).
template <typename T, typename P, typename Acc>
void channel_norm_backward(const View& v, const T* x, const T* dy, T* dx, const P* gamma,
                           const Acc* mean, const Acc* rstd, bool batch_stats, Acc* dgamma,
                           Acc* dbeta) {
  const auto lanes = static_cast<std::size_t>(v.T);
  std::vector<kernels::Sum2<Acc>> sums(lanes), scratch(lanes);
  std::vector<Acc> k_dy(lanes), k_xc(lanes, Acc(0)), k_0(lanes, Acc(0));
  const bool need_sums = batch_stats || dgamma || dbeta;
  for_each_stat_block(v, [&](Index offset, Index stat, const kernels::Block& b) {
    if (need_sums)
      kernels::backward_reduce_block(x + offset, dy + offset, b, mean + stat, sums.data(),
                                     scratch.data());
    const Acc inv_m = Acc(1) / static_cast<Acc>(b.reduced());
    for (std::size_t t = 0; t < lanes; ++t) {
      const Index c = stat + Index(t);
      const Acc r = rstd[c], gr = r * (gamma ? static_cast<Acc>(gamma[c]) : Acc(1));
      k_dy[t] = gr;
      if (batch_stats) {
        k_xc[t] = -gr * r * r * sums[t].b * inv_m;
        k_0[t] = -gr * sums[t].a * inv_m;
      }
      if (dgamma) dgamma[c] += sums[t].b * r;
      if (dbeta) dbeta[c] += sums[t].a;
    }
    kernels::backward_apply_block(x + offset, dy + offset, dx + offset, b, mean + stat,
                                  k_dy.data(), k_xc.data(), k_0.data());
  });
}

}  // namespace normlayers::detail
