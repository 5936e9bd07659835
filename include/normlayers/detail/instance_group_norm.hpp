// SPDX-License-Identifier: MIT
#pragma once

// InstanceNorm and GroupNorm: statistics per sample, over the spatial axes of
// one channel (InstanceNorm) or of a group of consecutive channels
// (GroupNorm), with per-channel affine parameters. Both apply and back-
// propagate on the per-(sample, channel) view, whose statistic index is
// n*C + c for row-major inputs and c*N + n for column-major ones (the storage
// order of the N and C axes); GroupNorm reduces on a second view where C is
// split into (G, D).

#include <algorithm>
#include <cmath>
#include <vector>

#include <normlayers/detail/channel_norm.hpp>

namespace normlayers::detail {

// Statistics per (n, c); reduced over every other axis.
struct InstanceGeometry {
  View view;
  Index batch = 0, channels = 0, count = 0;  // count: values per (n, c)
  int axis = 1;
  bool row_major = true;

  Index num_stats() const { return batch * channels; }
  Index channel_of(Index stat) const { return row_major ? stat % channels : stat / batch; }
  Index sample_of(Index stat) const { return row_major ? stat / channels : stat % batch; }
};

template <typename X>
InstanceGeometry instance_geometry(const char* layer, const X& x, Index num_channels,
                                   bool channels_last, std::size_t min_rank,
                                   const char* expected_dims) {
  const std::vector<Index> dims = dims_of(x);
  check_min_rank(layer, dims, min_rank, expected_dims);
  InstanceGeometry g;
  g.axis = channel_axis(static_cast<int>(dims.size()), channels_last);
  if (num_channels >= 0) check_channels(layer, dims, g.axis, num_channels);
  g.batch = dims[0];
  g.channels = dims[static_cast<std::size_t>(g.axis)];
  g.row_major = tensor_traits<X>::row_major;
  std::vector<bool> reduced(dims.size(), true);
  reduced[0] = reduced[static_cast<std::size_t>(g.axis)] = false;
  g.view = make_view(dims, g.row_major, reduced);
  g.count = g.num_stats() > 0 ? product(dims) / g.num_stats() : 0;
  return g;
}

// values[channel_of(stat)] for every statistic.
template <typename P>
aligned_vector<P> per_stat(const InstanceGeometry& g, const P* per_channel) {
  aligned_vector<P> out(per_channel ? static_cast<std::size_t>(g.num_stats()) : 0);
  if (out.empty()) return out;
  // Copies and fills rather than channel_of per statistic: with many small
  // instances (ResNet's 7x7 maps) a division per statistic cost a quarter of
  // the forward.
  for (Index outer = 0; outer < (g.row_major ? g.batch : g.channels); ++outer) {
    P* o = out.data() + outer * (g.row_major ? g.channels : g.batch);
    if (g.row_major)
      std::copy_n(per_channel, g.channels, o);
    else
      std::fill_n(o, g.batch, per_channel[outer]);
  }
  return out;
}

// out[channel] += sum over samples of per_stat[stat]: partial sums per
// block of kernels::row_block samples, added in order, so the rounding error
// grows with the block length plus the number of blocks (as in the kernels'
// sums), not with the batch (measured, float, InstanceNorm and GroupNorm
// 1040x256x4x4: dgamma's worst error against a double reference 9.5e-5 ->
// 4.7e-5; the rest is the per-sample sums' own rounding).
template <typename Acc, typename P>
void add_per_channel(const InstanceGeometry& g, const aligned_vector<Acc>& stat_values, P* out) {
  const auto channels = static_cast<std::size_t>(g.channels);
  aligned_vector<Acc> sums(channels, Acc(0)), part(channels);
  for (Index n0 = 0; n0 < g.batch; n0 += kernels::row_block) {
    std::fill(part.begin(), part.end(), Acc(0));
    for (Index n = n0; n < std::min(g.batch, n0 + kernels::row_block); ++n)
      for (Index c = 0; c < g.channels; ++c) {
        const Index stat = g.row_major ? n * g.channels + c : c * g.batch + n;
        part[static_cast<std::size_t>(c)] += stat_values[static_cast<std::size_t>(stat)];
      }
    for (std::size_t c = 0; c < channels; ++c) sums[c] += part[c];
  }
  for (Index c = 0; c < g.channels; ++c) out[c] += static_cast<P>(sums[static_cast<std::size_t>(c)]);
}

// InstanceNorm forward on the per-(n, c) view: each instance's own statistics
// (use_input_stats) or the running ones of its channel; per-channel parameters
// expanded to the instances. mean, var (biased) and rstd per (n, c).
template <typename T, typename P, typename Acc>
void instance_norm_forward_run(const InstanceGeometry& g, const Parallel& par, const T* x, T* y, const P* gamma,
                               const P* beta, Acc eps, bool use_input_stats,
                               const P* running_mean, const P* running_var, Acc* mean, Acc* var,
                               Acc* rstd) {
  const auto gs = per_stat(g, gamma), bs = per_stat(g, beta);
  const auto rm = per_stat(g, use_input_stats ? nullptr : running_mean);
  const auto rv = per_stat(g, use_input_stats ? nullptr : running_var);
  channel_norm_forward(g.view, par, x, y, gamma ? gs.data() : nullptr, beta ? bs.data() : nullptr, eps,
                       use_input_stats, rm.data(), rv.data(), mean, var, rstd);
}

// The batch-mean of the instances' statistics per channel (variance unbiased
// per instance): what PyTorch's instance_norm blends into the running ones.
template <typename Acc>
void instance_batch_stats(const InstanceGeometry& g, const Acc* mean, const Acc* var,
                          std::vector<Acc>& batch_mean, std::vector<Acc>& batch_var) {
  const auto c = static_cast<std::size_t>(g.channels);
  const Acc unbias = static_cast<Acc>(g.count) / static_cast<Acc>(g.count - 1);
  batch_mean.assign(c, Acc(0));
  batch_var.assign(c, Acc(0));
  for (Index s = 0; s < g.num_stats(); ++s) {
    const auto ch = static_cast<std::size_t>(g.channel_of(s));
    batch_mean[ch] += mean[s];
    batch_var[ch] += var[s] * unbias;
  }
  for (std::size_t i = 0; i < c; ++i) {
    batch_mean[i] /= static_cast<Acc>(g.batch);
    batch_var[i] /= static_cast<Acc>(g.batch);
  }
}

// InstanceNorm backward on the per-(n, c) view; parameter gradients summed
// over the samples of each channel and added into dgamma/dbeta (may be null).
template <typename T, typename P, typename Acc>
void instance_norm_backward_run(const InstanceGeometry& g, const Parallel& par, const T* x, const T* dy, T* dx,
                                const P* gamma, const Acc* mean, const Acc* rstd,
                                bool use_input_stats, P* dgamma, P* dbeta) {
  const auto gs = per_stat(g, gamma);
  const auto n = static_cast<std::size_t>(g.num_stats());
  aligned_vector<Acc> dg(dgamma ? n : 0, Acc(0)), db(dbeta ? n : 0, Acc(0));
  channel_norm_backward(g.view, par, x, dy, dx, gamma ? gs.data() : nullptr, mean, rstd,
                        use_input_stats, dgamma ? dg.data() : nullptr,
                        dbeta ? db.data() : nullptr);
  if (dgamma) add_per_channel(g, dg, dgamma);
  if (dbeta) add_per_channel(g, db, dbeta);
}

// GroupNorm: the per-(n, c) geometry and the groups of D = C/G consecutive
// channels. Statistics per (n, g) are stored in the input's storage order of
// (N, G): n*G + g row-major, g*N + n column-major.
struct GroupGeometry {
  InstanceGeometry inst;
  Index groups = 0, group_size = 0, count = 0;  // count: values per (n, g)

  Index num_group_stats() const { return inst.batch * groups; }
  // The (n, g) statistic of an (n, c) one, in the group view's order.
  Index group_stat_of(Index stat) const {
    const Index n = inst.sample_of(stat), grp = inst.channel_of(stat) / group_size;
    return inst.row_major ? n * groups + grp : grp * inst.batch + n;
  }
};

inline void check_groups(const char* layer, Index num_groups, Index num_channels) {
  if (num_groups <= 0) throw_invalid(layer, "num_groups is ", num_groups, ", expected > 0");
  if (num_channels <= 0) throw_invalid(layer, "num_channels is ", num_channels, ", expected > 0");
  if (num_channels % num_groups != 0)
    throw_invalid(layer, "num_channels ", num_channels, " is not divisible by num_groups ",
                  num_groups);
}

// num_channels < 0: the input's channel count.
template <typename X>
GroupGeometry group_geometry(const char* layer, const X& x, Index num_groups, Index num_channels,
                             bool channels_last) {
  GroupGeometry g;
  g.inst = instance_geometry(layer, x, num_channels, channels_last, 2, "(N, C, ...)");
  num_channels = g.inst.channels;
  check_groups(layer, num_groups, num_channels);
  g.groups = num_groups;
  g.group_size = num_channels / num_groups;
  g.count = g.group_size * g.inst.count;
  return g;
}

// Channels-first row-major GroupNorm: the D channels of a group are D
// consecutive rows of the per-(n, c) view, D*HW contiguous values that stay in
// cache, so each group is reduced and normalized (or backpropagated) in one
// visit, groups spread over threads. (The group's moments then come from its
// values directly, not merged from its channels' as in the general path: the
// two agree to rounding.)
inline bool groups_are_contiguous(const GroupGeometry& g) {
  const View& v = g.inst.view;
  return g.inst.row_major && g.inst.axis == 1 && v.Q == 1 && v.R == 1 && v.T == 1;
}

inline constexpr Index small_group_values = 1024;
// Channels of at least this many values ride each group's output along the
// next group's sums (see group_norm_forward_riding). Measured, AVX-512,
// Intel host, benchmarks/ab, both orders: 8x320x32x32 1.08-1.16x, 2x320x64x64
// 1.10-1.18x (AVX2 build 1.16-1.22x), 8x320x128x128 1.17-1.21x; channels of
// 784 values (32x256x28x28) level (0.90-1.10x), of 256 (16x640x16x16)
// 0.97-0.99x, hence the limit.
inline constexpr Index ride_channel_values = 1024;
inline constexpr Index group_rows_limit = 128;  // see group_norm_backward_fused

// The end of group gs's forward statistics from its moments (gm, gm2):
// writes mean[gs] and rstd[gs], and scale[d] = rstd * gamma_c, shift[d] =
// beta_c for its channels c = c0 + d (gamma/beta may be null: 1 and 0).
template <typename P, typename Acc>
struct FinishGroup {
  const GroupGeometry& g;
  const P *gamma, *beta;
  Acc eps;
  Acc *mean, *rstd;
  void operator()(Index gs, Acc gm, Acc gm2, Acc* scale, Acc* shift) const {
    const Acc r = Acc(1) / std::sqrt(gm2 / static_cast<Acc>(g.count) + eps);
    mean[gs] = gm;
    rstd[gs] = r;
    const Index c0 = (gs % g.groups) * g.group_size;
    for (Index d = 0; d < g.group_size; ++d) {
      scale[d] = r * (gamma ? static_cast<Acc>(gamma[c0 + d]) : Acc(1));
      shift[d] = beta ? static_cast<Acc>(beta[c0 + d]) : Acc(0);
    }
  }
};

// Channels-first GroupNorm with channels of at least ride_channel_values
// values: each group's moments are summed (its D channels as the runs of
// one block) while the previous group, now in cache, is normalized in the
// same sweep, as channels-first BatchNorm does, so the reads of one group
// from memory overlap the writes of the other; the last group of a range is
// normalized on its own. A group's moments do not depend on what rides
// along, nor its output on which of the two normalized it.
template <typename T, typename P, typename Acc>
void group_norm_forward_riding(const GroupGeometry& g, const Parallel& par, const T* x, T* y,
                               const FinishGroup<P, Acc>& finish, bool stream) {
  const Index hw = g.inst.count, D = g.group_size, size = D * hw;
  const kernels::Block channels{D, hw, 1, hw, 1, stream}, run{1, hw, 1, 0, 1, stream};
  par.for_ranges(g.num_group_stats(), pass_bytes(size, 1), [&](Index first, Index last) {
    // scale and shift of the group being summed, then of the one riding along.
    aligned_vector<Acc> scale(std::size_t(2 * D)), shift(scale.size());
    Acc* scales[2] = {scale.data(), scale.data() + D};
    Acc* shifts[2] = {shift.data(), shift.data() + D};
    Acc mean = 0, m2 = 0;
    for (Index gs = first; gs < last; ++gs) {
      const T* xg = x + gs * size;
      const Index next = gs + 1 < last ? size : -1;
      const auto sums =
          gs == first
              ? kernels::runs_shifted_sums(xg, channels, kernels::nothing_else, next)
              : kernels::runs_shifted_sums(
                    xg, channels,
                    [xp = xg - size, yp = y + (gs - 1) * size, stream, mean, sc = scales[1],
                     sh = shifts[1]](Index d) {
                      return kernels::per_stat_apply_at(xp, yp, stream, mean, sc[d], sh[d]);
                    },
                    next);
      kernels::runs_moments(xg, channels, sums, &mean, &m2);
      finish(gs, mean, m2, scales[0], shifts[0]);
      std::swap(scales[0], scales[1]);
      std::swap(shifts[0], shifts[1]);
    }
    for (Index d = 0; d < D; ++d) {
      const Index o = (last - 1) * size + d * hw;
      kernels::normalize_block_per_stat(x + o, y + o, run, &mean, scales[1] + d, shifts[1] + d);
    }
    if (stream) kernels::streaming_fence();
  });
}

template <typename T, typename P, typename Acc>
void group_norm_forward_fused(const GroupGeometry& g, const Parallel& par, const T* x, T* y,
                              const P* gamma, const P* beta, Acc eps, Acc* mean, Acc* rstd) {
  const Index hw = g.inst.count, D = g.group_size;
  const FinishGroup<P, Acc> finish{g, gamma, beta, eps, mean, rstd};
  const View& view = g.inst.view;
  // Short runs stream only from packet boundaries (see rows_stream).
  const bool stream = hw < short_run_limit ? rows_stream<T>(view, hw, 1, y)
                                           : view.streams_output(1);
  const kernels::Block run{1, hw, 1, 0, 1, stream};
  // The group's moments as those of one run of D*hw values (one pass of
  // shifted sums, see first_values_mean): per channel, the setup and final
  // reductions of D short runs cost more than the sums themselves (measured,
  // AVX-512, 8x320x32x32 forward: 0.49-0.51 -> 0.61-0.64 of a memcpy,
  // 8x128x16x16 0.29 -> 0.53).
  // Groups of under small_group_values values take their moments
  // kernels::rows_at_once groups (4 with AVX-512) at a time, or of at most
  // kernels::short_row_values a packet of groups (see for_each_row_moments;
  // a group's result does not depend on it), so the sums of short groups
  // overlap. One value per channel ([N, C] inputs, 1x1 maps): the group is
  // one run of D values, each its own channel, applied in one call with
  // per-channel arrays rather than channel by channel. Measured, AVX-512, benchmarks/ab,
  // forward: 2048x1024x1x1 9x as fast (0.02 -> 0.19 of a memcpy; 0.08-0.10
  // with the apply as a block of lanes), 64x512x7x7 (784 values a group)
  // 1.12x; groups of 3136 values (32x2048x7x7) at once 0.85x, hence the
  // limit.
  const bool small_groups = D * hw < small_group_values;
  const bool lanes = hw == 1;
  if (!small_groups && hw >= ride_channel_values) {
    group_norm_forward_riding(g, par, x, y, finish, stream);
    return;
  }
  par.for_ranges(g.num_group_stats(), pass_bytes(D * hw, 1), [&](Index first, Index last) {
    aligned_vector<Acc> scale(static_cast<std::size_t>(D)), shift(scale.size());
    kernels::for_each_row_moments<true>(x, D * hw, D * hw, first, last, small_groups,
                                        [&](Index gs0, auto count, Acc* gms, Acc* gm2s, int) {
      for (Index gs = gs0; gs < gs0 + count; ++gs) {  // gs = n*G + grp, rows gs*D .. gs*D + D - 1
        const Acc gm = gms[gs - gs0];
        finish(gs, gm, gm2s[gs - gs0], scale.data(), shift.data());
        if (lanes) {
          kernels::normalize_run_per_lane(x + gs * D, y + gs * D, D, gm, scale.data(),
                                          shift.data(), run.stream);
          continue;
        }
        for (Index d = 0; d < D; ++d) {
          const Index o = (gs * D + d) * hw;
          // The apply, which reads the group back from L2, prefetches the
          // next group meanwhile: its moments then read it from cache, not
          // from L3 (measured, bench, 5 alternating runs, 1 thread:
          // 8x320x32x32 415 -> 372 us, 2x320x64x64 405 -> 348 us, on an
          // AMD host, where riding the apply along the next group's moments
          // was 0.80-1.0x at 8x320x32x32; on an Intel host that ride is
          // faster for long channels: see ride_channel_values).
          kernels::normalize_block_per_stat(x + o, y + o, run, &gm, scale.data() + d,
                                            shift.data() + d, gs + 1 < last ? D * hw : 0);
        }
      }
    }, run.stream ? nullptr : y);
    if (run.stream) kernels::streaming_fence();
  });
}

// Backward of group_norm_forward_fused, one group per visit; the per-(n, c)
// parameter-gradient terms go to a[], b[] (summed over samples afterwards).
template <typename T, typename P, typename Acc>
void group_norm_backward_fused(const GroupGeometry& g, const Parallel& par, const T* x,
                               const T* dy, T* dx, const P* gamma, const Acc* mean,
                               const Acc* rstd, Acc* a, Acc* b) {
  const Index hw = g.inst.count, D = g.group_size;
  const kernels::Block run{1, hw, 1, 0, 1, g.inst.view.streams_output(2)};
  const Acc inv_m = Acc(1) / static_cast<Acc>(g.count);
  // Maps of under group_rows_limit values: the group's channels as rows
  // (see use_short_rows) with per-channel arrays of the mean, gamma, v, rstd
  // and z, or for one value per channel the group as one run of D values,
  // each its own channel (see group_norm_forward_fused), rather than a reduce
  // and an apply call per channel.
  // Measured, AVX-512, benchmarks/ab, backward: 32x2048x7x7 1.5-1.6x as fast
  // (0.24-0.27 -> 0.39-0.42 of a memcpy), 64x512x7x7 1.7-1.75x, 512x256x7x7
  // 1.6-1.8x, 256x256x10x10 1.14x, 2048x1024x1x1 12x (0.009 -> 0.11; 0.05
  // as a block of lanes); but 128x256x14x14 0.78x, hence the limit.
  const bool lanes = hw == 1, short_rows = !lanes && hw < group_rows_limit;
  const bool rows_streamed = rows_stream<T>(g.inst.view, hw, 2, dx);
  par.for_ranges(g.num_group_stats(), pass_bytes(D * hw, 2), [&](Index first, Index last) {
    const auto per_row = static_cast<std::size_t>(short_rows ? D : 0);
    aligned_vector<Acc> gms(per_row), us(short_rows || lanes ? std::size_t(D) : 0), vs(per_row),
        ws(per_row), zs(per_row);
    for (Index gs = first; gs < last; ++gs) {
      const Acc gm = mean[gs], r = rstd[gs];
      const Index s0 = gs * D, c0 = (gs % g.groups) * D;
      std::fill(gms.begin(), gms.end(), gm);
      if (lanes) kernels::backward_terms_per_lane(x + s0, dy + s0, D, gm, a + s0, b + s0);
      if (short_rows)
        kernels::for_each_row_group(0, D, true, [&](Index d, auto count) {
          const Index o = (s0 + d) * hw;
          kernels::backward_reduce_rows<decltype(count)::value>(x + o, dy + o, hw, hw,
                                                                gms.data() + d, a + s0 + d,
                                                                b + s0 + d);
        });
      Acc A = 0, B = 0;
      for (Index d = 0; d < D; ++d) {
        const Index s = s0 + d, c = c0 + d;
        if (!short_rows && !lanes)
          kernels::backward_reduce_block(x + s * hw, dy + s * hw, run, &gm, a + s, b + s);
        const Acc gc = gamma ? static_cast<Acc>(gamma[c]) : Acc(1);
        A += gc * a[s];
        B += gc * b[s];
        b[s] *= r;
      }
      const Acc v = -A * inv_m, z = -r * r * r * B * inv_m;
      if (short_rows || lanes) {
        for (Index d = 0; d < D; ++d)
          us[std::size_t(d)] = gamma ? static_cast<Acc>(gamma[c0 + d]) : Acc(1);
        if (lanes) {
          kernels::backward_run_per_lane(x + s0, dy + s0, dx + s0, D, gm, us.data(), v, r, z,
                                         run.stream);
          continue;
        }
        std::fill(vs.begin(), vs.end(), v);
        std::fill(ws.begin(), ws.end(), r);
        std::fill(zs.begin(), zs.end(), z);
        kernels::for_each_row_group(0, D, true, [&](Index d, auto count) {
          const Index o = (s0 + d) * hw;
          kernels::backward_apply_rows<decltype(count)::value>(
              x + o, dy + o, dx + o, hw, hw, rows_streamed, gms.data() + d, us.data() + d,
              vs.data() + d, ws.data() + d, zs.data() + d);
        });
        continue;
      }
      for (Index d = 0; d < D; ++d) {
        const Index s = gs * D + d, c = (gs % g.groups) * D + d;
        const Acc u = gamma ? static_cast<Acc>(gamma[c]) : Acc(1);
        kernels::backward_apply_block(x + s * hw, dy + s * hw, dx + s * hw, run, &gm, &u, &v, &r,
                                      &z);
      }
    }
    if (run.stream || rows_streamed) kernels::streaming_fence();
  });
}

// Channels-last row-major GroupNorm with a sample per thread at least (the
// threads a pass reading `inputs` tensors runs on): block p of the
// per-(n, c) view is sample p, all its channels as lanes, so each sample is
// reduced, its groups finished and the sample normalized (or
// backpropagated) in one visit, all in one parallel loop, rather than in a
// pass over every sample, a serial step and another pass. Measured, AVX-512,
// 2-thread pool, interleaved calls, medians, per visit against passes:
// 1x320x64x64 (5 MiB: under min_bytes, one thread) forward 268 vs 468 us,
// backward 584 vs 666 us (hence the threads actually used, not the pool's);
// odd batches on 2 threads, 3 and 5 x320x64x64, forward 1241 vs 1323 and
// 1393 vs 1869 us, backward 2152 vs 2006 and 3577 vs 3930 us.
inline bool sample_per_visit(const GroupGeometry& g, const Parallel& par, int inputs) {
  const View& v = g.inst.view;
  return g.inst.row_major && v.T == g.inst.channels &&
         v.P >= par.threads_for(pass_bytes(v.size(), inputs));
}

// The channels of a sample that the backward takes at a time when it goes a
// sample per visit: as many whole groups as make a whole number of packets,
// at least four packets, so that such a piece of x and dy (every row of the
// sample, a few cache lines of each for common group sizes) is reduced and
// then, still in L2, backpropagated, rather than the whole sample reduced
// and then read back from beyond L2 (1.25 MiB per tensor at 8x320x32x32);
// all C channels where a piece would not fit in piece_cache_bytes either.
// A piece holds whole groups and every lane is computed as in the whole
// sample: the same results. Measured, AVX-512, both builds linked into one
// process and interleaved (benchmarks/ab): 8x320x32x32, pieces of 80
// channels (640 KiB), 1.04-1.49x as fast, median 1.17x; 2x320x64x64, pieces
// of 2.5 MiB, 0.89-0.93x (hence the limit). The forward in pieces of 80 or
// 160 channels was slower (0.76-0.87x).
inline constexpr double piece_cache_bytes = 768 << 10;
template <typename T>
Index group_backward_piece(const GroupGeometry& g) {
  constexpr Index N = kernels::packet_size<T>;
  Index piece = g.group_size;
  while (piece % N != 0) piece += g.group_size;  // lcm(D, N)
  while (piece < 4 * N) piece *= 2;
  const double bytes = double(g.inst.count) * double(piece) * double(2 * sizeof(T));
  return piece < g.inst.channels && bytes <= piece_cache_bytes ? piece : g.inst.channels;
}

// GroupNorm forward: moments per (n, c) on the per-(n, c) view (the fast
// kernels for either layout), merged exactly per (n, g) over the group's
// channels in channel order (Chan's formula); then y = (x - mean_g) *
// (rstd_g * gamma_c) + beta_c per (n, c). mean/rstd per (n, g).
template <typename T, typename P, typename Acc>
void group_norm_forward_run(const GroupGeometry& g, const Parallel& par, const T* x, T* y,
                            const P* gamma, const P* beta, Acc eps, Acc* mean, Acc* rstd) {
  if (groups_are_contiguous(g)) {
    group_norm_forward_fused(g, par, x, y, gamma, beta, eps, mean, rstd);
    return;
  }
  const auto n = static_cast<std::size_t>(g.inst.num_stats());
  aligned_vector<Acc> m(n), m2(n), scale(n), shift(n);
  const Acc count = static_cast<Acc>(g.inst.count);
  // Group (ns, grp) from its channels' moments m, m2: its mean and rstd, and
  // per (n, c) of its channels the group mean in m, scale and shift.
  const auto finish_group = [&](Index ns, Index grp) {
    // The group's first (n, c) statistic and the distance between its channels.
    const Index c0 = grp * g.group_size;
    const Index s0 = g.inst.row_major ? ns * g.inst.channels + c0 : c0 * g.inst.batch + ns;
    const Index stride = g.inst.row_major ? 1 : g.inst.batch;
    Acc gm = 0, gm2 = 0;
    kernels::merge_equal_moments(g.group_size, count, m.data() + s0, m2.data() + s0, stride, gm,
                                 gm2);
    const Index gs = g.inst.row_major ? ns * g.groups + grp : grp * g.inst.batch + ns;
    const Acc r = Acc(1) / std::sqrt(gm2 / static_cast<Acc>(g.count) + eps);
    mean[gs] = gm;
    rstd[gs] = r;
    for (Index d = 0; d < g.group_size; ++d) {
      const auto s = static_cast<std::size_t>(s0 + d * stride);
      m[s] = gm;
      scale[s] = r * (gamma ? static_cast<Acc>(gamma[c0 + d]) : Acc(1));
      shift[s] = beta ? static_cast<Acc>(beta[c0 + d]) : Acc(0);
    }
  };
  const View& v = g.inst.view;
  if (pipelines_lanes<T>(v) && g.inst.row_major && v.T == g.inst.channels) {
    // Channels-last row-major: block p is sample p (R == 1), lanes across
    // all its channels, so its groups are finished once the block is summed.
    pipelined_lanes_forward(v, par, x, y, m.data(), m2.data(), scale.data(), shift.data(),
                            [&](Index ns) {
                              for (Index grp = 0; grp < g.groups; ++grp) finish_group(ns, grp);
                            });
    return;
  }
  if (sample_per_visit(g, par, 1)) {
    // Measured, AVX-512, calls of either alternating, medians: 2 threads
    // 8x320x32x32 315 -> 260 us, 2x320x64x64 260 -> 212; 1 thread the same.
    for_each_stat_block(v, par, 1, no_state, [&](int, Index o, Index s, const kernels::Block& b) {
      kernels::block_moments<true>(x + o, b, m.data() + s, m2.data() + s);
      for (Index grp = 0; grp < g.groups; ++grp) finish_group(s / v.T, grp);  // sample s / C
      kernels::normalize_block_per_stat(x + o, y + o, b, m.data() + s, scale.data() + s,
                                        shift.data() + s);
    }, /*may_cut=*/false);
    return;
  }
  stat_moments(v, par, x, m.data(), m2.data());
  for (Index ns = 0; ns < g.inst.batch; ++ns)
    for (Index grp = 0; grp < g.groups; ++grp) finish_group(ns, grp);
  stat_apply(v, par, x, y, m.data(), scale.data(), shift.data());
}

// GroupNorm backward. Per (n, c): a = sum dy, b = sum dy*(x - mean_g); per
// (n, g): A = sum_c gamma_c*a, B = sum_c gamma_c*b; then
// dx = rstd*(gamma_c*dy - A/M) - (x - mean)*rstd^3*B/M, M = D * spatial.
// dgamma_c += sum_n b*rstd, dbeta_c += sum_n a.
template <typename T, typename P, typename Acc>
void group_norm_backward_run(const GroupGeometry& g, const Parallel& par, const T* x, const T* dy, T* dx,
                             const P* gamma, const Acc* mean, const Acc* rstd, P* dgamma,
                             P* dbeta) {
  const auto n = static_cast<std::size_t>(g.inst.num_stats());
  aligned_vector<Acc> a(n), b(n);  // per (n, c): sum dy, sum dy * (x - mean)
  if (groups_are_contiguous(g)) {
    group_norm_backward_fused(g, par, x, dy, dx, gamma, mean, rstd, a.data(), b.data());
    if (dgamma) add_per_channel(g.inst, b, dgamma);
    if (dbeta) add_per_channel(g.inst, a, dbeta);
    return;
  }
  aligned_vector<Acc> m(n);
  for (std::size_t s = 0; s < n; ++s) m[s] = mean[g.group_stat_of(Index(s))];
  const auto groups = static_cast<std::size_t>(g.num_group_stats());
  aligned_vector<Acc> group_a(groups, Acc(0)), group_b(groups, Acc(0)), u(n), v(n), w(n), z(n);
  const Acc inv_m = Acc(1) / static_cast<Acc>(g.count);
  // Statistics [first, last), with every channel of their groups: the group
  // sums, dgamma's per-(n, c) term in b, and u, v, w, z for
  // dx = (gamma_c*dy - A/M) * rstd + (x - mean) * (-rstd^3 * B/M).
  const auto finish = [&](std::size_t first, std::size_t last) {
    for (std::size_t s = first; s < last; ++s) {
      const Index c = g.inst.channel_of(Index(s));
      const Acc gc = gamma ? static_cast<Acc>(gamma[c]) : Acc(1);
      const auto gs = static_cast<std::size_t>(g.group_stat_of(Index(s)));
      group_a[gs] += gc * a[s];
      group_b[gs] += gc * b[s];
      b[s] *= rstd[gs];  // now dgamma's per-(n, c) term
    }
    for (std::size_t s = first; s < last; ++s) {
      const auto gs = static_cast<std::size_t>(g.group_stat_of(Index(s)));
      const Index c = g.inst.channel_of(Index(s));
      const Acc r = rstd[gs];
      u[s] = gamma ? static_cast<Acc>(gamma[c]) : Acc(1);
      v[s] = -group_a[gs] * inv_m;
      w[s] = r;
      z[s] = -r * r * r * group_b[gs] * inv_m;
    }
  };
  const View& view = g.inst.view;
  if (sample_per_visit(g, par, 2)) {
    // Measured, AVX-512, calls of either alternating, medians: 8x320x32x32
    // 1 thread 904 -> 825 us, 2 threads 624 -> 507 us; 2x320x64x64 849 ->
    // 784, 649 -> 514.
    const Index piece = group_backward_piece<T>(g);
    for_each_stat_block(view, par, 2, no_state,
                        [&](int, Index o, Index s, const kernels::Block& sample) {
      for (Index c0 = 0; c0 < view.T; c0 += piece) {
        kernels::Block blk = sample;
        blk.lanes = std::min(piece, view.T - c0);
        const Index po = o + c0, ps = s + c0;
        kernels::backward_reduce_block(x + po, dy + po, blk, m.data() + ps, a.data() + ps,
                                       b.data() + ps);
        finish(std::size_t(ps), std::size_t(ps + blk.lanes));
        kernels::backward_apply_block(x + po, dy + po, dx + po, blk, m.data() + ps,
                                      u.data() + ps, v.data() + ps, w.data() + ps, z.data() + ps);
      }
    }, /*may_cut=*/false);
  } else {
    stat_backward_reduce(view, par, x, dy, m.data(), a.data(), b.data());
    finish(0, n);
    stat_backward_apply(view, par, x, dy, dx, m.data(), u.data(), v.data(), w.data(), z.data());
  }
  if (dgamma) add_per_channel(g.inst, b, dgamma);
  if (dbeta) add_per_channel(g.inst, a, dbeta);
}

}  // namespace normlayers::detail
