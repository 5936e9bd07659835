// SPDX-License-Identifier: MIT
#pragma once

// The canonical view. Every normalization here computes statistics over some
// axes of a tensor and is indexed by the others. Read in memory order (slowest
// axis first), after dropping unit axes and merging neighbours of the same kind,
// the axes alternate between "statistic" and "reduced" and fit the 5-level block
//
//     [P, Q, R, S, T]   statistics indexed by (p, r, t), reduced over (q, s)
//     offset(p, q, r, s, t) = (((p*Q + q)*R + r)*S + s)*T + t
//
// DESIGN.md's [P, Q, R, S] is the case T = 1; T > 1 arises when the innermost
// memory axis indexes statistics (channels-last BatchNorm, column-major
// LayerNorm), and then kernels run vector lanes across t. Statistics are stored
// in the order (p*R + r)*T + t, i.e. the memory order of the statistic axes in
// the input.
//
// Canonical form: when R == 1 the reduced levels merge (Q*S -> S), and when
// S == 1 the statistic levels merge (R*T -> T), so there are two families:
//   rows     Q == 1, R == 1, T == 1: contiguous runs of S reduced values
//   general  anything else: per (p, r) a block of Q runs of S*T values, lanes
//            across t (T may be 1 with Q, R > 1, e.g. BatchNorm NCHW).

#include <algorithm>
#include <array>
#include <vector>

#include <normlayers/detail/kernels/moments.hpp>
#include <normlayers/detail/kernels/reduce.hpp>
#include <normlayers/parallel.hpp>

namespace normlayers::detail {

using Index = Eigen::Index;

// Bytes a pass over `values` values that reads `inputs` tensors and writes
// one moves, as Parallel's cost and threshold count them: 4 per value read or
// written, whatever the scalar type (a forward 8, a backward 12: the
// accounting the threshold was measured in).
inline double pass_bytes(Index values, int inputs) {
  return double(values) * 4.0 * double(inputs + 1);
}

struct View {
  Index P = 1, Q = 1, R = 1, S = 1, T = 1;

  Index num_stats() const { return P * R * T; }
  Index reduced_size() const { return Q * S; }
  Index size() const { return P * Q * R * S * T; }
  // Whether a pass that reads `inputs` tensors of this size writes its
  // output with streaming stores (see kernels::streaming_read_values).
  bool streams_output(int inputs) const { return size() * inputs > kernels::streaming_read_values; }

  // The block of one (p, r): Q runs of S*T values, consecutive runs q_stride apart.
  Index block_offset(Index p, Index r) const { return (p * Q * R + r) * S * T; }
  Index q_stride() const { return R * S * T; }
  Index stat_offset(Index p, Index r) const { return (p * R + r) * T; }
};

// Builds the view of a tensor with extents `dims` (logical order) and storage
// order `row_major`, whose axes with reduced[i] == true are reduced.
inline View make_view(const std::vector<Index>& dims, bool row_major,
                      const std::vector<bool>& reduced) {
  // Memory order, slowest first; unit axes dropped; same-kind neighbours merged.
  std::vector<Index> sizes;
  std::vector<bool> kinds;
  const auto rank = dims.size();
  for (std::size_t k = 0; k < rank; ++k) {
    const std::size_t i = row_major ? k : rank - 1 - k;
    if (dims[i] == 1) continue;
    if (!kinds.empty() && kinds.back() == reduced[i]) {
      sizes.back() *= dims[i];
    } else {
      sizes.push_back(dims[i]);
      kinds.push_back(reduced[i]);
    }
  }
  // Place the alternating sequence into [P, Q, R, S, T], starting at P (a
  // statistic level) or at Q (a reduced level).
  std::array<Index, 5> level{1, 1, 1, 1, 1};
  std::size_t at = (!kinds.empty() && kinds.front()) ? 1 : 0;
  for (std::size_t k = 0; k < sizes.size(); ++k, ++at) {
    // Five alternating levels hold every layer here (at most three statistic
    // runs and two reduced runs); anything else is a bug in the caller.
    eigen_assert(at < level.size() && "normalization axes do not fit the canonical view");
    level[at] = sizes[k];
  }
  View v{level[0], level[1], level[2], level[3], level[4]};
  if (v.S == 1) {  // (p, q, r, t): fold r into the lanes
    v.T *= v.R;
    v.R = 1;
  }
  if (v.R == 1) {  // reduced levels are adjacent: merge them
    v.S *= v.Q;
    v.Q = 1;
  }
  return v;
}

// Statistics per work item when lanes run across statistics. Cutting lanes
// into pieces must not change how any lane is computed, since whether they
// are cut depends on the thread count: a piece starts where a strip of the
// whole block would (block_moments decides the centered fallback per strip
// of lanes, so the lanes that share a strip must be the same either way).
inline constexpr Index lane_piece = 256;
static_assert(lane_piece % (kernels::moments_strip * kernels::packet_size<float>) == 0 &&
                  lane_piece % (kernels::moments_strip * kernels::packet_size<double>) == 0,
              "lane pieces must start at moments-strip boundaries");

// A statistic block (p, r) of the view, all its lanes, for a pass that reads
// `inputs` tensors of the view's size.
inline kernels::Block whole_block(const View& v, int inputs) {
  return kernels::Block{v.Q, v.S, v.T, v.q_stride(), v.T, v.streams_output(inputs)};
}

// Calls f(state, offset, stat, block) for every statistic block (p, r) of the
// view: `offset` is the block's first element, `stat` the index of its first
// statistic (lane t is statistic stat + t). Blocks run on par's threads in
// ranges; each range gets its own state = make_state() (scratch buffers), and
// a block's result never depends on which range or thread ran it. `inputs`:
// the tensors of the view's size the pass reads (for block.stream).
// With may_cut false, blocks are never cut (a caller that finishes a whole
// block at a time, such as GroupNorm's groups across a sample's lanes).
template <typename MakeState, typename F>
void for_each_stat_block(const View& v, const Parallel& par, int inputs, MakeState make_state,
                         F f, bool may_cut = true) {
  // Wide lanes are cut into pieces of lane_piece statistics, each its own
  // work item, where that pays: with fewer blocks than the threads the pass
  // runs on (work for every thread), and in backward passes (two inputs), whose reduce and
  // apply of a piece then share L2 (BatchNorm 256x1024 backward 62 -> 53 us
  // with pieces). Forward passes otherwise go along whole rows (see
  // map_whole_rows; measured when channels-last GroupNorm 8x320x32x32 still
  // came this way, before sample_per_visit: 469 -> 366 us in the bench; of
  // the benchmark's cases only BatchNorm 256x1024 forward does now). Pieces
  // never change how a lane is computed (see lane_piece).
  const bool cut =
      may_cut && (v.P * v.R < par.threads_for(pass_bytes(v.size(), inputs)) || inputs >= 2);
  const Index pieces = cut ? (v.T + lane_piece - 1) / lane_piece : 1;
  const Index width = pieces > 1 ? lane_piece : v.T;
  const double bytes_per_item = pass_bytes(v.Q * v.S * width, inputs);
  const bool stream = v.streams_output(inputs);
  par.for_ranges(v.P * v.R * pieces, bytes_per_item, [&](Index first, Index last) {
    auto state = make_state();
    for (Index i = first; i < last; ++i) {
      const Index block = i / pieces, t0 = (i % pieces) * width;
      const Index p = block / v.R, r = block % v.R;
      const kernels::Block b{v.Q, v.S, std::min(width, v.T - t0), v.q_stride(), v.T, stream};
      f(state, v.block_offset(p, r) + t0, v.stat_offset(p, r) + t0, b);
    }
    if (stream) kernels::streaming_fence();
  });
}

}  // namespace normlayers::detail
