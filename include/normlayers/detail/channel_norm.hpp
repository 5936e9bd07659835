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

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include <normlayers/detail/kernels/backward.hpp>
#include <normlayers/detail/kernels/moments.hpp>
#include <normlayers/detail/kernels/normalize.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/detail/checks.hpp>
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

// One tall block (channels-last BatchNorm: all N*H*W rows of C lanes) has no
// independent blocks to spread over threads, so its rows are cut in chunks of
// row_chunk rows: per-chunk moments or sums, merged in chunk order. The cut
// depends on the shape alone, so results do not depend on the thread count.
// Each chunk starts its moments afresh (a shift from its first rows, see
// block_moments): chunks of 512 rather than 256 rows measured faster
// (32x64x56x56 forward, AVX-512, medians of alternating runs: 0.66-0.67 ->
// 0.70-0.71 of a memcpy; 1024 rows the same as 512).
inline constexpr Index row_chunk = 512;
inline bool use_row_chunks(const View& v) {
  return v.P * v.R == 1 && v.Q == 1 && v.T <= lane_piece && v.S >= 2 * row_chunk;
}
inline Index row_chunks(const View& v) { return (v.S + row_chunk - 1) / row_chunk; }
// Rows [c * row_chunk, ...) of the tall block, as a block of their own, for
// a pass that reads `inputs` tensors (see View::streams_output).
inline kernels::Block chunk_block(const View& v, Index c, int inputs) {
  return kernels::Block{1, std::min(row_chunk, v.S - c * row_chunk), v.T, 0, v.T,
                        v.streams_output(inputs)};
}
inline Index chunk_offset(const View& v, Index c) { return c * row_chunk * v.T; }

// The end of one statistic's forward statistics: finish(c, mean, var)
// writes statistic c's mean, biased variance and rstd = 1/sqrt(var + eps)
// and returns its scale = rstd * gamma and shift = beta (gamma/beta may be
// null: 1 and 0).
template <typename P, typename Acc>
struct FinishStat {
  const P* gamma;
  const P* beta;
  Acc eps;
  Acc *mean_out, *var_out, *rstd_out;
  std::pair<Acc, Acc> operator()(Index c, Acc mean, Acc var) const {
    const Acc rstd = Acc(1) / std::sqrt(var + eps);
    mean_out[c] = mean;
    var_out[c] = var;
    rstd_out[c] = rstd;
    return {rstd * (gamma ? static_cast<Acc>(gamma[c]) : Acc(1)),
            beta ? static_cast<Acc>(beta[c]) : Acc(0)};
  }
};

// channel_norm_forward for one tall block, in row chunks (see use_row_chunks).
template <typename T, typename P, typename Acc>
void channel_norm_forward_chunked(const View& v, const Parallel& par, const T* x, T* y,
                                  const P* gamma, const P* beta, Acc eps, bool batch_stats,
                                  const P* stats_mean, const P* stats_var, Acc* mean, Acc* var,
                                  Acc* rstd) {
  const Index L = v.T, chunks = row_chunks(v);
  const auto lanes = static_cast<std::size_t>(L);
  const double chunk_bytes = pass_bytes(row_chunk * L, 1);
  const FinishStat<P, Acc> finish{gamma, beta, eps, mean, var, rstd};
  aligned_vector<Acc> means(batch_stats ? lanes * std::size_t(chunks) : 0), m2s(means.size());
  if (batch_stats)
    par.for_ranges(chunks, chunk_bytes, [&](Index first, Index last) {
      for (Index c = first; c < last; ++c)
        kernels::block_moments<true>(x + chunk_offset(v, c), chunk_block(v, c, 1),
                                     means.data() + c * L, m2s.data() + c * L);
    });
  if (batch_stats) {  // the chunks' moments merged into chunk 0's, in chunk order
    Acc count = static_cast<Acc>(chunk_block(v, 0, 1).S);
    for (Index c = 1; c < chunks; ++c) {
      const Acc n = static_cast<Acc>(chunk_block(v, c, 1).S);
      kernels::merge_moments_lanes(count, means.data(), m2s.data(), n, means.data() + c * L,
                                   m2s.data() + c * L, L);
      count += n;
    }
  }
  aligned_vector<Acc> scale(lanes), shift(lanes);
  for (Index t = 0; t < L; ++t) {
    const auto i = std::size_t(t);
    std::tie(scale[i], shift[i]) =
        batch_stats ? finish(t, means[i], m2s[i] / static_cast<Acc>(v.S))
                    : finish(t, static_cast<Acc>(stats_mean[t]), static_cast<Acc>(stats_var[t]));
  }
  par.for_ranges(chunks, chunk_bytes, [&](Index first, Index last) {
    for (Index c = first; c < last; ++c)
      kernels::normalize_block_per_stat(x + chunk_offset(v, c), y + chunk_offset(v, c),
                                        chunk_block(v, c, 1), mean, scale.data(), shift.data());
    kernels::streaming_fence();
  });
}

// Channels-first BatchNorm with short runs (H*W under short_run_limit
// values: 7x7 or 8x8 feature maps, say): a channel's N runs of a few packets
// each cost more in per-run setup and final reductions than in reading them.
// Instead a piece of K consecutive channels is read as N rows (one per
// sample) of K*H*W lanes, each lane a position (c, h, w), reduced down the
// rows by the lane kernels (accumulators in registers, no reduction across
// lanes); each channel's moments (or backward sums) are then merged from its
// H*W lanes (merge_equal_moments: exact), and the piece normalized (or
// backpropagated) right after, still in L2, with per-lane copies of its
// channels' statistics. Pieces depend on the shape alone: results do not
// depend on the thread count. Measured, AVX-512, benchmarks/ab, against a
// block per channel: forward 32x2048x7x7 3.4x as fast (0.11 -> 0.38 of a
// memcpy), 128x64x8x8 3.3-3.7x, 32x1024x14x14 1.30x, but 32x512x28x28 0.81x
// and 32x64x56x56 0.73x (hence the limit); backward 32x2048x7x7 2.8-2.9x,
// 128x64x8x8 1.9-2.0x, 14x14 1.10x. The eval forward stays one pass in
// storage order (stat_apply): in pieces it was 0.79-0.92x at 7x7 (1.8-2.0x
// at 8x8).
inline constexpr Index short_run_limit = 512;
inline bool use_short_runs(const View& v) {
  return v.P == 1 && v.T == 1 && v.Q > 1 && v.R > 1 && v.S < short_run_limit;
}
// Channels per piece: enough for short_runs_lanes lanes, within
// short_runs_bytes of each input while a piece holds more than one channel,
// and at most a quarter of the channels, so that small tensors still give
// threads work (measured, AVX-512, 32x2048x7x7, 21 channels a piece: 1024
// lanes and 4096 lanes within 1 MiB the same, 256 lanes 0.88x).
inline constexpr Index short_runs_lanes = 1024;
inline constexpr double short_runs_bytes = 256 << 10;
// Rounded to a multiple of `align` channels (the fewest whose K*S values
// fill whole packets), up where that fits, else down, so that every piece's
// rows start on a packet boundary when the first does: aligned loads, and
// streaming stores (see below) at all. The lanes are computed alike in any piece, so K
// changes no result. Measured, AVX-512, benchmarks/ab, 16x2048x7x7 forward
// (not streamed), 32 channels a piece against 21: 1.28-1.41x as fast.
template <typename T>
Index short_runs_piece(const View& v) {
  const Index by_lanes = (short_runs_lanes + v.S - 1) / v.S;
  const auto by_bytes = static_cast<Index>(short_runs_bytes / double(v.Q * v.S * Index(sizeof(T))));
  const Index K = std::max<Index>(1, std::min({by_lanes, by_bytes, (v.R + 3) / 4}));
  const Index align = kernels::packet_size<T> / std::gcd(v.S, kernels::packet_size<T>);
  const Index up = (K + align - 1) / align * align, down = K / align * align;
  return up <= std::min(by_bytes, v.R) ? up : down > 0 ? down : K;
}
// The pieces' apply writes N rows of a few KiB each, far apart: with plain
// stores every row's lines are read for ownership in a pattern the hardware
// prefetchers do not follow, which made that apply slower than the whole
// forward in storage order. So it streams its output from this size on
// (counted over the inputs, as streaming_read_values, which it lowers),
// where the stores reach memory anyway. Measured, AVX-512, BatchNorm forward
// on 7x7 maps, pieces of 32 channels, plain against streaming stores, alone
// and followed by a read of y: Nx2048x7x7 N=16 (1.6M values) 406 / 399 us,
// 460 / 594; N=24 810 / 595, 998 / 1000; N=32 1631-2008 / 952-1274,
// 1774-1860 / 1606-1658; 32x512x14x14 1844-1942 / 1081-1141, 2081-2109 /
// 1713-1829.
inline constexpr Index short_runs_streaming_values = Index(3) << 20;
inline bool short_runs_stream(const View& v, int inputs) {
  return v.size() * inputs >= short_runs_streaming_values;
}
// How far ahead a piece's apply prefetches its inputs: the next piece, the
// values right after the piece's in every row, if the pass reads from memory
// (streaming; a piece's moments or sums then read it from cache). Measured,
// AVX-512, benchmarks/ab, forward: 32x2048x7x7 1.10-1.36x as fast,
// 32x512x14x14 1.25-1.31x, 32x1024x14x14 1.0x (but in cache, 128x64x8x8,
// 0.91-0.94x); backward: 32x2048x7x7 1.06-1.19x, 16x2048x7x7 1.10-1.36x,
// 32x1024x14x14 0.98-1.06x.
inline Index pieces_ahead(const kernels::Block& b) { return b.stream ? b.lanes : 0; }
// Calls f(state, c0, K, block) for every piece of K channels from c0 (block:
// its N rows of K*S lanes, at offset c0*S), pieces spread over par's threads,
// a state = make_state(width) per range (width: the lanes of the widest piece).
template <typename T, typename MakeState, typename F>
void for_each_short_runs_piece(const View& v, const Parallel& par, int inputs,
                               MakeState make_state, F f) {
  const Index K = short_runs_piece<T>(v), pieces = (v.R + K - 1) / K;
  const bool stream = short_runs_stream(v, inputs);
  par.for_ranges(pieces, pass_bytes(v.Q * v.S * K, inputs), [&](Index first, Index last) {
    auto state = make_state(K * v.S);
    for (Index i = first; i < last; ++i) {
      const Index c0 = i * K, k = std::min(K, v.R - c0);
      f(state, c0, k, kernels::Block{1, v.Q, k * v.S, 0, v.R * v.S, stream});
    }
    if (stream) kernels::streaming_fence();
  });
}

// One statistic per contiguous run of under short_run_limit values
// (InstanceNorm channels-first on small feature maps; also BatchNorm of one
// sample, and channels-last inputs of one channel or 1x1 maps): the runs
// are rows, taken kernels::rows_at_once at a time (the forward's moments a
// packet of rows at a time, see for_each_row_moments), so their sums
// overlap and the per-run setup is shared (see for_each_short_row_range),
// rather than a block per run. Measured, AVX-512, benchmarks/ab, InstanceNorm
// 32x2048x7x7: forward 3.5-4.0x as fast (0.10 -> 0.38-0.41 of a memcpy),
// backward 2.7x (0.18-0.20 -> 0.48-0.55), eval with running statistics 2.0x
// (0.36 -> 0.71); 128x1024x4x4: 5.6x (0.03 -> 0.18-0.21), 3.4x (0.08-0.10 ->
// 0.26-0.32), 3.7x (0.09 -> 0.33).
inline bool use_short_rows(const View& v) {
  return v.T == 1 && v.Q == 1 && v.R == 1 && v.S < short_run_limit;
}
// Whether short rows of S values (under short_run_limit) written to `out`
// by a pass over a view that streams its output (see View::streams_output)
// stream it too: if every row starts on a packet boundary (S a whole number
// of packets, out aligned), or if rows are at least 4 packets long. A row
// off a packet boundary goes alone, its head and tail scalar, its streamed
// lines partial, which costs short rows more than streaming saves
// (measured, AVX-512, benchmarks/ab, plain stores against streaming:
// InstanceNorm 32x2048x7x7 backward 1.32-1.38x as fast, GroupNorm
// 512x256x7x7 forward 1.22-1.25x, backward 1.33-1.40x; but 10x10 maps,
// GroupNorm 256x256x10x10 forward 0.89x, backward 0.93x, InstanceNorm
// backward 0.92x, and 14x14 0.81x).
template <typename T>
bool rows_stream(const View& v, Index S, int inputs, const T* out) {
  constexpr Index N = kernels::packet_size<T>;
  return v.streams_output(inputs) &&
         ((S % N == 0 && kernels::packet_aligned<T>(out)) || S >= 4 * N);
}
// Calls f(first, last, stream) for ranges of the rows of one statistic each
// of such a view (rows of v.S values, row r at r * v.S), on par's threads,
// for a pass that reads `inputs` tensors and writes `out` (stream: see
// rows_stream). f takes them several at a time (see for_each_row_group,
// for_each_row_moments): a row's result does not depend on how many, so
// neither on the thread count.
template <typename T, typename F>
void for_each_short_row_range(const View& v, const Parallel& par, int inputs, const T* out, F f) {
  const bool stream = rows_stream<T>(v, v.S, inputs, out);
  par.for_ranges(v.P, pass_bytes(v.S, inputs), [&](Index first, Index last) {
    f(first, last, stream);
    if (stream) kernels::streaming_fence();
  });
}

// How far ahead a block's apply prefetches its inputs (0: not at all): a
// block of one contiguous run read from memory (streaming) is followed there
// by the block read next (see channel_norm_forward).
inline Index prefetch_distance(const kernels::Block& b) {
  return b.stream && b.contiguous_runs() && b.Q == 1 ? b.S : 0;
}

// The state of blocks that need none.
inline int no_state() { return 0; }

// y = (x - mean) * scale + shift with per-statistic arrays, in storage
// order: one run of S*T values per (p, q, r), so reads and writes stream
// through memory once. A block per (p, r) would jump between its Q runs,
// restarting the prefetchers every run (BatchNorm NCHW eval 32x64x56x56,
// runs of 12.25 KiB 784 KiB apart: 0.87-1.04 -> 1.24-1.29 of a memcpy).
// Elementwise, so any order gives the same values.
template <typename T, typename Acc>
void stat_apply(const View& v, const Parallel& par, const T* x, T* y, const Acc* mean,
                const Acc* scale, const Acc* shift) {
  if (v.Q == 1) {  // the blocks are the runs
    for_each_stat_block(v, par, 1, no_state,
                        [&](int, Index offset, Index stat, const kernels::Block& b) {
                          kernels::normalize_block_per_stat(x + offset, y + offset, b, mean + stat,
                                                            scale + stat, shift + stat);
                        });
    return;
  }
  const kernels::Block run{1, v.S, v.T, 0, v.T, v.streams_output(1)};
  par.for_ranges(v.P * v.Q * v.R, pass_bytes(v.S * v.T, 1), [&](Index first, Index last) {
    for (Index i = first; i < last; ++i) {  // i = (p*Q + q)*R + r
      const Index p = i / (v.Q * v.R), r = i % v.R, stat = v.stat_offset(p, r), o = i * v.S * v.T;
      kernels::normalize_block_per_stat(x + o, y + o, run, mean + stat, scale + stat, shift + stat);
    }
    if (run.stream) kernels::streaming_fence();
  });
}

// Whether a batch-statistics forward pipelines its blocks (see
// pipelined_lanes_forward): lanes across statistics in several blocks, such
// as channels-last InstanceNorm and GroupNorm (a block per sample), read
// from memory (streaming, see View::streams_output), with rows the moments
// sweep in one strip of lanes. Measured, channels-last InstanceNorm forward,
// AVX-512, fraction of a memcpy: 16x128x128x32 0.53 -> 0.72, 8x128x128x64
// 0.62-0.64 -> 0.72, 4x128x128x128 0.63 either way; not for rows swept in
// several strips (GroupNorm 32x32x32x320: 0.52 -> 0.37) nor for inputs in
// cache (8x32x32x64: 0.62 -> 0.61).
template <typename T>
bool pipelines_lanes(const View& v) {
  return v.T > 1 && v.T <= kernels::moments_strip * kernels::packet_size<T> && v.P * v.R > 1 &&
         v.streams_output(1);
}

// The batch-statistics forward of blocks for which pipelines_lanes holds:
// each block's moments are read while the previous block, read just before
// and now in cache, is normalized in the same sweep (row by row, riding
// along block_moments), so the memory reads of one block overlap the writes
// of the other instead of leaving them idle and then waiting for them. Per
// block (p, r), once it is summed, finish(block) turns mean[s], m2[s] of its
// statistics s into the mean each is normalized by (which it may rewrite)
// and scale[s], shift[s].
template <typename T, typename Acc, typename Finish>
void pipelined_lanes_forward(const View& v, const Parallel& par, const T* x, T* y, Acc* mean,
                             Acc* m2, Acc* scale, Acc* shift, Finish finish) {
  const kernels::Block b = whole_block(v, 1);
  const auto offset = [&](Index block) { return v.block_offset(block / v.R, block % v.R); };
  const auto stat = [&](Index block) { return v.stat_offset(block / v.R, block % v.R); };
  // One range of consecutive blocks per thread, so that all but its first
  // block ride (a range of a block each would pipeline nothing); where the
  // ranges start changes no result.
  const double bytes = pass_bytes(v.size(), 1);
  const Index blocks = v.P * v.R, parts = std::min<Index>(blocks, par.threads_for(bytes));
  par.for_ranges(parts, bytes / double(parts),
                 [&](Index first_part, Index last_part) {
    const Index first = first_part * blocks / parts, last = last_part * blocks / parts;
    for (Index block = first; block < last; ++block) {
      const Index o = offset(block), s = stat(block);
      if (block == first) {
        kernels::block_moments<true>(x + o, b, mean + s, m2 + s);
      } else {
        const Index po = offset(block - 1), ps = stat(block - 1);
        const auto ride = kernels::per_stat_apply_lanes(x + po, y + po, b.stream, mean + ps,
                                                        scale + ps, shift + ps);
        kernels::block_moments<true>(x + o, b, mean + s, m2 + s, ride);
      }
      finish(block);
    }
    const Index o = offset(last - 1), s = stat(last - 1);
    kernels::normalize_block_per_stat(x + o, y + o, b, mean + s, scale + s, shift + s);
    if (b.stream) kernels::streaming_fence();
  });
}

// Forward over every block. With batch_stats each statistic's own mean and
// biased variance normalize it (and are written to mean_out/var_out);
// otherwise the given stats_mean/stats_var do. rstd_out gets 1/sqrt(var + eps).
// All arrays have one entry per statistic; gamma/beta may be null.
template <typename T, typename P, typename Acc>
void channel_norm_forward(const View& v, const Parallel& par, const T* x, T* y, const P* gamma,
                          const P* beta, Acc eps, bool batch_stats, const P* stats_mean,
                          const P* stats_var, Acc* mean_out, Acc* var_out, Acc* rstd_out) {
  const auto lanes = static_cast<std::size_t>(v.T);
  if (use_row_chunks(v)) {
    channel_norm_forward_chunked(v, par, x, y, gamma, beta, eps, batch_stats, stats_mean,
                                 stats_var, mean_out, var_out, rstd_out);
    return;
  }
  const FinishStat<P, Acc> finish{gamma, beta, eps, mean_out, var_out, rstd_out};
  if (batch_stats && use_short_runs(v)) {  // given statistics: stat_apply, below
    struct State {
      aligned_vector<Acc> mean, m2, scale, shift;
    };
    const auto make = [](Index width) {
      const auto n = static_cast<std::size_t>(width);
      return State{aligned_vector<Acc>(n), aligned_vector<Acc>(n), aligned_vector<Acc>(n),
                   aligned_vector<Acc>(n)};
    };
    const Index S = v.S;
    for_each_short_runs_piece<T>(v, par, 1, make, [&](State& st, Index c0, Index K,
                                                      const kernels::Block& b) {
      kernels::block_moments<true>(x + c0 * S, b, st.mean.data(), st.m2.data());
      for (Index k = 0; k < K; ++k) {
        const Index c = c0 + k;
        const auto l = static_cast<std::size_t>(k * S);
        Acc mean, m2;
        kernels::merge_equal_moments(S, static_cast<Acc>(v.Q), st.mean.data() + l,
                                     st.m2.data() + l, 1, mean, m2);
        const auto [scale, shift] = finish(c, mean, m2 / static_cast<Acc>(v.Q * S));
        std::fill_n(st.mean.begin() + l, S, mean);
        std::fill_n(st.scale.begin() + l, S, scale);
        std::fill_n(st.shift.begin() + l, S, shift);
      }
      kernels::normalize_block_per_stat(x + c0 * S, y + c0 * S, b, st.mean.data(),
                                        st.scale.data(), st.shift.data(), pieces_ahead(b));
    });
    return;
  }
  if (use_short_rows(v)) {
    const Index S = v.S;
    // Rows [row, row + count) (count: an Index, or a std::integral_constant
    // when known), with batch statistics in mean and m2 or given ones.
    const auto apply = [&](Index row, auto count, bool stream, Acc* mean, const Acc* m2) {
      constexpr int most = std::max(int(kernels::packet_size<Acc>), kernels::rows_at_once);
      Acc scale[most], shift[most];
      for (Index k = 0; k < count; ++k) {
        if (!batch_stats) mean[k] = static_cast<Acc>(stats_mean[row + k]);
        std::tie(scale[k], shift[k]) =
            finish(row + k, mean[k],
                   batch_stats ? m2[k] / static_cast<Acc>(S)
                               : static_cast<Acc>(stats_var[row + k]));
      }
      kernels::for_each_row_group(0, count, true, [&](Index k, auto R) {
        const Index o = (row + k) * S;
        kernels::normalize_rows_per_stat<decltype(R)::value>(x + o, y + o, S, S, stream,
                                                             mean + k, scale + k, shift + k);
      });
    };
    for_each_short_row_range<T>(v, par, 1, y, [&](Index first, Index last, bool stream) {
      if (batch_stats) {
        kernels::for_each_row_moments<true>(
            x, S, S, first, last, true,
            [&](Index row, auto count, Acc* mean, Acc* m2, int) {
              apply(row, count, stream, mean, m2);
            },
            stream ? nullptr : y);
        return;
      }
      kernels::for_each_row_group(first, last, true, [&](Index row, auto count) {
        Acc mean[decltype(count)::value];
        apply(row, count, stream, mean, nullptr);
      });
    });
    return;
  }
  if (!batch_stats) {  // given statistics: one elementwise pass, in storage order
    const auto n = static_cast<std::size_t>(v.num_stats());
    aligned_vector<Acc> mean(n), scale(n), shift(n);
    for (std::size_t c = 0; c < n; ++c) {
      mean[c] = static_cast<Acc>(stats_mean[c]);
      std::tie(scale[c], shift[c]) = finish(Index(c), mean[c], static_cast<Acc>(stats_var[c]));
    }
    stat_apply(v, par, x, y, mean.data(), scale.data(), shift.data());
    return;
  }
  if (v.T == 1 && v.Q > 1) {
    // Statistics of several contiguous runs (BatchNorm channels-first: N
    // runs of H*W per channel): each block's one-pass sums read it while the
    // previous block, now in cache, is normalized in the same sweep, so the
    // memory reads of one block overlap the writes of the other (one after
    // the other, the read sweep leaves the writes idle and then waits for
    // them). Measured 32x64x56x56: 0.64-0.73 -> 0.74-0.84 of a memcpy. Not
    // for one run per statistic (InstanceNorm): 0.80-0.83 -> 0.73-0.79.
    const kernels::Block b{v.Q, v.S, 1, v.q_stride(), 1, v.streams_output(1)};
    par.for_ranges(v.P * v.R, pass_bytes(v.Q * v.S, 1), [&](Index first, Index last) {
      Acc mean = 0, m2 = 0;
      std::pair<Acc, Acc> affine;
      const auto offset = [&](Index block) { return v.block_offset(block / v.R, block % v.R); };
      for (Index block = first; block < last; ++block) {
        const Index o = offset(block);
        const Index next = block + 1 < last ? offset(block + 1) - o : -1;
        const auto sums =
            block == first
                ? kernels::runs_shifted_sums(x + o, b, kernels::nothing_else, next)
                : kernels::runs_shifted_sums(
                      x + o, b,
                      kernels::in_every_run(kernels::per_stat_apply_at(
                          x + offset(block - 1), y + offset(block - 1), b.stream, mean,
                          affine.first, affine.second)),
                      next);
        kernels::runs_moments(x + o, b, sums, &mean, &m2);
        affine = finish(block, mean, m2 / static_cast<Acc>(b.reduced()));
      }
      kernels::normalize_block_per_stat(x + offset(last - 1), y + offset(last - 1), b, &mean,
                                        &affine.first, &affine.second);
      if (b.stream) kernels::streaming_fence();
    });
    return;
  }
  if (pipelines_lanes<T>(v)) {
    const auto n = static_cast<std::size_t>(v.num_stats());
    aligned_vector<Acc> scale(n), shift(n);
    const Acc count = static_cast<Acc>(v.reduced_size());
    pipelined_lanes_forward(v, par, x, y, mean_out, var_out, scale.data(), shift.data(),
                            [&](Index block) {
                              const Index s0 = v.stat_offset(block / v.R, block % v.R);
                              for (Index s = s0; s < s0 + v.T; ++s)
                                std::tie(scale[std::size_t(s)], shift[std::size_t(s)]) =
                                    finish(s, mean_out[s], var_out[s] / count);
                            });
    return;
  }
  struct State {
    aligned_vector<Acc> mean, var, scale, shift;
  };
  auto make = [lanes] { return State{aligned_vector<Acc>(lanes), aligned_vector<Acc>(lanes),
                                     aligned_vector<Acc>(lanes), aligned_vector<Acc>(lanes)}; };
  for_each_stat_block(v, par, 1, make, [&](State& st, Index offset, Index stat, const kernels::Block& b) {
    kernels::block_moments<true>(x + offset, b, st.mean.data(), st.var.data());
    for (Index t = 0; t < b.lanes; ++t) st.var[std::size_t(t)] /= static_cast<Acc>(b.reduced());
    for (std::size_t t = 0; t < std::size_t(b.lanes); ++t)
      std::tie(st.scale[t], st.shift[t]) = finish(stat + Index(t), st.mean[t], st.var[t]);
    // A block of one contiguous run (InstanceNorm channels-first) read from
    // memory is followed there by the next block: the apply, which reads its
    // block back from cache, prefetches that one meanwhile, so the memory
    // reads go on (measured, InstanceNorm NCHW forward, AVX-512, fraction of
    // a memcpy: 32x64x64x64 0.76 -> 1.08, 8x64x128x128 0.82 -> 1.00,
    // 2x64x256x256 0.84 -> 0.89, 1x64x512x512 0.66 -> 0.73; for lanes
    // (channels-last, 4 MiB blocks) it did not help, nor in the backward:
    // 8x64x128x128 1.07 -> 0.94, 32x64x64x64 0.96 -> 1.11).
    kernels::normalize_block_per_stat(x + offset, y + offset, b, st.mean.data(), st.scale.data(),
                                      st.shift.data(), prefetch_distance(b));
  });
}

// Per statistic mean and M2 = sum (x - mean)^2 (GroupNorm's statistics step,
// which merges them per group).
template <typename T, typename Acc>
void stat_moments(const View& v, const Parallel& par, const T* x, Acc* mean, Acc* m2) {
  for_each_stat_block(v, par, 1, no_state,
                      [&](int, Index offset, Index stat, const kernels::Block& b) {
                        kernels::block_moments<true>(x + offset, b, mean + stat, m2 + stat);
                      });
}

// sum_dy[stat] = sum dy, sum_dyxc[stat] = sum dy * (x - mean[stat]) for every statistic.
template <typename T, typename Acc>
void stat_backward_reduce(const View& v, const Parallel& par, const T* x, const T* dy,
                          const Acc* mean, Acc* sum_dy, Acc* sum_dyxc) {
  for_each_stat_block(v, par, 2, no_state,
                      [&](int, Index offset, Index stat, const kernels::Block& b) {
                        kernels::backward_reduce_block(x + offset, dy + offset, b, mean + stat,
                                                       sum_dy + stat, sum_dyxc + stat);
                      });
}

// dx = (dy * u + v) * w + (x - mean) * z with per-statistic arrays.
template <typename T, typename Acc>
void stat_backward_apply(const View& v, const Parallel& par, const T* x, const T* dy, T* dx,
                         const Acc* mean, const Acc* u, const Acc* shift, const Acc* w,
                         const Acc* z) {
  for_each_stat_block(v, par, 2, no_state,
                      [&](int, Index offset, Index stat, const kernels::Block& b) {
                        kernels::backward_apply_block(x + offset, dy + offset, dx + offset, b,
                                                      mean + stat, u + stat, shift + stat,
                                                      w + stat, z + stat);
                      });
}

// A channel's backward coefficients from its sums (sum dy, sum dy * (x -
// mean) over its M values): dx = (dy + shift) * w + (x - mean) * z with
//   w = gamma * rstd,  shift = -sum_dy / M,  z = -w * rstd^2 * sum_dyxc / M
// (batch statistics; fixed statistics: shift = z = 0); dgamma[c] +=
// rstd * sum_dyxc and dbeta[c] += sum_dy on the way (either may be null).
template <typename P, typename Acc>
struct BackwardCoefficients {
  const P* gamma;
  const Acc* rstd;
  Acc inv_m;
  bool batch_stats;
  Acc *dgamma, *dbeta;
  std::tuple<Acc, Acc, Acc> operator()(Index c, Acc sum_dy, Acc sum_dyxc) const {
    const Acc r = rstd[c], gr = r * (gamma ? static_cast<Acc>(gamma[c]) : Acc(1));
    if (dgamma) dgamma[c] += sum_dyxc * r;
    if (dbeta) dbeta[c] += sum_dy;
    if (!batch_stats) return {Acc(0), gr, Acc(0)};
    return {-sum_dy * inv_m, gr, -gr * r * r * sum_dyxc * inv_m};
  }
};

// channel_norm_backward for one tall block, in row chunks (see use_row_chunks).
template <typename T, typename P, typename Acc>
void channel_norm_backward_chunked(const View& v, const Parallel& par, const T* x, const T* dy,
                                   T* dx, const P* gamma, const Acc* mean, const Acc* rstd,
                                   bool batch_stats, Acc* dgamma, Acc* dbeta) {
  const Index L = v.T, chunks = row_chunks(v);
  const auto lanes = static_cast<std::size_t>(L);
  const double chunk_bytes = pass_bytes(row_chunk * L, 2);
  aligned_vector<Acc> a(lanes * std::size_t(chunks)), b(a.size());
  par.for_ranges(chunks, chunk_bytes, [&](Index first, Index last) {
    for (Index c = first; c < last; ++c)
      kernels::backward_reduce_block(x + chunk_offset(v, c), dy + chunk_offset(v, c),
                                     chunk_block(v, c, 2), mean, a.data() + c * L, b.data() + c * L);
  });
  aligned_vector<Acc> shift(lanes), w(lanes), z(lanes);
  const BackwardCoefficients<P, Acc> coefficients{
      gamma, rstd, Acc(1) / static_cast<Acc>(v.S), batch_stats, dgamma, dbeta};
  add_partials_into_first(a.data(), chunks, lanes);
  add_partials_into_first(b.data(), chunks, lanes);
  for (std::size_t t = 0; t < lanes; ++t)
    std::tie(shift[t], w[t], z[t]) = coefficients(Index(t), a[t], b[t]);
  par.for_ranges(chunks, chunk_bytes, [&](Index first, Index last) {
    for (Index c = first; c < last; ++c)
      kernels::backward_apply_block(x + chunk_offset(v, c), dy + chunk_offset(v, c),
                                    dx + chunk_offset(v, c), chunk_block(v, c, 2), mean,
                                    static_cast<const Acc*>(nullptr), shift.data(), w.data(),
                                    z.data());
    kernels::streaming_fence();
  });
}

// Backward over every block, given the mean and rstd the forward normalized
// with. batch_stats: gradient through the statistics
//   dx = gamma*rstd * (dy - sum(dy)/M - (x - mean)*rstd^2 * sum(dy*(x - mean))/M);
// otherwise (fixed statistics) dx = gamma*rstd*dy. Per statistic (each
// written by its own block), dgamma += rstd*sum(dy*(x - mean)) and
// dbeta += sum(dy) (may be null).
template <typename T, typename P, typename Acc>
void channel_norm_backward(const View& v, const Parallel& par, const T* x, const T* dy, T* dx,
                           const P* gamma, const Acc* mean, const Acc* rstd, bool batch_stats,
                           Acc* dgamma, Acc* dbeta) {
  if (use_row_chunks(v)) {
    channel_norm_backward_chunked(v, par, x, dy, dx, gamma, mean, rstd, batch_stats, dgamma, dbeta);
    return;
  }
  const bool need_sums = batch_stats || dgamma || dbeta;
  const BackwardCoefficients<P, Acc> coefficients{
      gamma, rstd, Acc(1) / static_cast<Acc>(v.reduced_size()), batch_stats, dgamma, dbeta};
  if (use_short_runs(v)) {
    struct State {
      aligned_vector<Acc> mean, a, b, w, z;
    };
    const auto make = [](Index width) {
      const auto n = static_cast<std::size_t>(width);
      return State{aligned_vector<Acc>(n), aligned_vector<Acc>(n), aligned_vector<Acc>(n),
                   aligned_vector<Acc>(n), aligned_vector<Acc>(n)};
    };
    const Index S = v.S;
    for_each_short_runs_piece<T>(v, par, 2, make, [&](State& st, Index c0, Index K,
                                                      const kernels::Block& b) {
      for (Index k = 0; k < K; ++k) std::fill_n(st.mean.begin() + k * S, S, mean[c0 + k]);
      if (need_sums)
        kernels::backward_reduce_block(x + c0 * S, dy + c0 * S, b, st.mean.data(), st.a.data(),
                                       st.b.data());
      for (Index k = 0; k < K; ++k) {
        const auto l = static_cast<std::size_t>(k * S);
        const Acc sum_dy = need_sums ? kernels::sum_values(st.a.data() + l, S) : Acc(0);
        const Acc sum_dyxc = need_sums ? kernels::sum_values(st.b.data() + l, S) : Acc(0);
        const auto [shift, w, z] = coefficients(c0 + k, sum_dy, sum_dyxc);
        std::fill_n(st.a.begin() + l, S, shift);  // a: the shifts now
        std::fill_n(st.w.begin() + l, S, w);
        std::fill_n(st.z.begin() + l, S, z);
      }
      kernels::backward_apply_block(x + c0 * S, dy + c0 * S, dx + c0 * S, b, st.mean.data(),
                                    static_cast<const Acc*>(nullptr), st.a.data(), st.w.data(),
                                    st.z.data(), pieces_ahead(b));
    });
    return;
  }
  if (use_short_rows(v)) {
    const Index S = v.S;
    for_each_short_row_range<T>(v, par, 2, dx, [&](Index first, Index last, bool stream) {
      kernels::for_each_row_group(first, last, true, [&](Index row, auto count) {
        constexpr int R = decltype(count)::value;
        Acc sum_dy[R] = {}, sum_dyxc[R] = {}, shift[R], w[R], z[R];
        const Index o = row * S;
        if (need_sums)
          kernels::backward_reduce_rows<R>(x + o, dy + o, S, S, mean + row, sum_dy, sum_dyxc);
        for (int k = 0; k < R; ++k)
          std::tie(shift[k], w[k], z[k]) = coefficients(row + k, sum_dy[k], sum_dyxc[k]);
        kernels::backward_apply_rows<R>(x + o, dy + o, dx + o, S, S, stream, mean + row,
                                        static_cast<const Acc*>(nullptr), shift, w, z);
      });
    });
    return;
  }
  const auto lanes = static_cast<std::size_t>(v.T);
  struct State {
    aligned_vector<Acc> sum_dy, sum_dyxc, shift, w, z;
  };
  auto make = [lanes] {
    return State{aligned_vector<Acc>(lanes), aligned_vector<Acc>(lanes), aligned_vector<Acc>(lanes),
                 aligned_vector<Acc>(lanes), aligned_vector<Acc>(lanes)};
  };
  for_each_stat_block(v, par, 2, make, [&](State& st, Index offset, Index stat, const kernels::Block& b) {
    if (need_sums)
      kernels::backward_reduce_block(x + offset, dy + offset, b, mean + stat, st.sum_dy.data(),
                                     st.sum_dyxc.data());
    for (std::size_t t = 0; t < std::size_t(b.lanes); ++t)
      std::tie(st.shift[t], st.w[t], st.z[t]) =
          coefficients(stat + Index(t), st.sum_dy[t], st.sum_dyxc[t]);
    kernels::backward_apply_block(x + offset, dy + offset, dx + offset, b, mean + stat,
                                  static_cast<const Acc*>(nullptr), st.shift.data(), st.w.data(),
                                  st.z.data());
  });
}

}  // namespace normlayers::detail
