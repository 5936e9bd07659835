// SPDX-License-Identifier: MIT
#pragma once

// The shared driver of the norms over trailing dims with per-element affine
// parameters (LayerNorm, RMSNorm): validation, the canonical view, the
// parameter order for column-major inputs, and the loops over statistic
// blocks that call the kernels. `Centered` selects LayerNorm (mean and
// variance) or RMSNorm (mean square, no mean).

#include <algorithm>
#include <cmath>
#include <vector>

#include <normlayers/detail/checks.hpp>
#include <normlayers/detail/kernels/backward.hpp>
#include <normlayers/detail/kernels/moments.hpp>
#include <normlayers/detail/kernels/normalize.hpp>
#include <normlayers/detail/scalar.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/detail/view.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/span.hpp>

namespace normlayers::detail {

inline void check_normalized_shape(const char* layer, const std::vector<Index>& normalized_shape) {
  if (normalized_shape.empty())
    throw_invalid(layer, "normalized_shape is empty, expected at least one dim");
  for (Index d : normalized_shape)
    if (d <= 0)
      throw_invalid(layer, "normalized_shape is ", dims_text{normalized_shape},
                    ", expected positive extents");
}

// Geometry of an input normalized over its trailing `normalized_shape`.
struct TrailingGeometry {
  View view;
  Index rows = 0;  // number of statistics
  Index size = 0;  // elements per statistic (product of normalized_shape)
};

template <typename X>
TrailingGeometry trailing_geometry(const char* layer, const X& x,
                                   const std::vector<Index>& normalized_shape) {
  check_normalized_shape(layer, normalized_shape);
  const std::vector<Index> dims = dims_of(x);
  const std::size_t k = normalized_shape.size();
  bool ok = dims.size() >= k;
  for (std::size_t i = 0; ok && i < k; ++i) ok = dims[dims.size() - k + i] == normalized_shape[i];
  if (!ok)
    throw_invalid(layer, "input has dims ", dims_text{dims}, ", expected trailing dims ",
                  dims_text{normalized_shape}, " (normalized_shape)");
  std::vector<bool> reduced(dims.size(), false);
  for (std::size_t i = dims.size() - k; i < dims.size(); ++i) reduced[i] = true;
  TrailingGeometry g;
  g.view = make_view(dims, tensor_traits<X>::row_major, reduced);
  g.size = product(normalized_shape);
  g.rows = product(dims) / (g.size > 0 ? g.size : 1);
  return g;
}

// PyTorch orders per-element parameters row-major over normalized_shape. A
// column-major input visits the normalized elements in column-major order; this
// is the row-major index of each in that visiting order (empty when identical).
inline std::vector<Index> param_order(const std::vector<Index>& normalized_shape, bool row_major) {
  const std::size_t k = normalized_shape.size();
  if (row_major || k < 2) return {};
  const Index n = product(normalized_shape);
  std::vector<Index> order(static_cast<std::size_t>(n));
  std::vector<Index> idx(k, 0);  // logical multi-index, first dim fastest
  for (Index s = 0; s < n; ++s) {
    Index flat = 0;
    for (std::size_t i = 0; i < k; ++i) flat = flat * normalized_shape[i] + idx[i];
    order[static_cast<std::size_t>(s)] = flat;
    for (std::size_t i = 0; i < k && ++idx[i] == normalized_shape[i]; ++i) idx[i] = 0;
  }
  return order;
}

// The parameters in visiting order: a pointer into `p` itself, or into `buf`.
template <typename P>
const P* params_in_order(span<const P> p, const std::vector<Index>& order, aligned_vector<P>& buf) {
  if (!p || order.empty()) return p.data();
  buf.resize(order.size());
  for (std::size_t s = 0; s < order.size(); ++s) buf[s] = p[order[s]];
  return buf.data();
}

// The forward takes kernels::rows_at_once rows together on tensors up to this
// size (8 MiB of float); larger ones come from memory, where one row after
// the other reads faster (measured: 16 MiB tensors 10-25 % slower with 4
// rows at once: R rows are R interleaved read streams), except rows of a page
// or less once the normalize pass prefetches the next rows (streaming
// outputs, see normalize_rows_affine_s).
inline constexpr Index rows_at_once_max_values = Index(2) << 20;

// Forward on a validated geometry. mean may be null (RMSNorm, or not wanted);
// rstd may be null (not wanted).
template <bool Centered, typename T, typename P, typename Acc>
void trailing_norm_forward(const TrailingGeometry& g, const Parallel& par,
                           const std::vector<Index>& order, const T* x, T* y,
                           span<const P> weight, span<const P> bias, Acc eps, Acc* mean_out,
                           Acc* rstd_out) {
  const View& v = g.view;
  if (v.size() == 0) return;
  aligned_vector<P> weight_buf, bias_buf;
  const P* gamma = params_in_order(weight, order, weight_buf);
  const P* beta = params_in_order(bias, order, bias_buf);
  const Acc m = static_cast<Acc>(v.S);
  if (v.T == 1) {  // rows of one statistic each, several per visit
    // Streaming (inputs from memory): the normalize pass prefetches the next
    // rows, and rows of a page or less then go R at once too (measured,
    // AVX-512, fraction of a memcpy, two sets of alternating runs: LayerNorm
    // 8192x1024 0.99-1.00 -> 1.03-1.08, 8192x768 0.93 -> 1.06, 4096x4096
    // 0.80-0.81 -> 0.85-0.90; RMSNorm 4096x4096 0.79-0.84 -> 1.11-1.15,
    // 8192x1024 1.02 -> 1.10; cache-resident 64x768 and 1024x2048 unchanged).
    const bool stream = v.streams_output(1) && !kernels::streaming_stalls_loads(x, y);
    const bool at_once = v.size() <= rows_at_once_max_values ||
                         (stream && double(v.S) * sizeof(T) <= 4096.0);
    const auto rows = [&](auto prefetch_next) {
      par.for_ranges(v.P, pass_bytes(v.S, 1), [&](Index first, Index last) {
        kernels::for_each_row_moments<Centered>(
            x, v.S, v.S, first, last, at_once,
            [&](Index row, auto count, Acc* mu, Acc* rstd, int group) {
              kernels::rstd_from_m2(rstd, count, m, eps);
              kernels::for_each_row_group(0, count, at_once, [&](Index k, auto R) {
                constexpr bool ahead = decltype(prefetch_next)::value;
                const Index offset = v.block_offset(row + k, 0);
                kernels::normalize_rows_affine_s<decltype(R)::value, ahead>(
                    x + offset, y + offset, v.S, v.S, stream, mu + k, rstd + k, gamma, beta,
                    group);
              });
              if (mean_out && Centered) std::copy_n(mu, count, mean_out + row);
              if (rstd_out) std::copy_n(rstd, count, rstd_out + row);
            },
            stream ? nullptr : y);
        if (stream) kernels::streaming_fence();
      });
    };
    if (stream) {
      rows(std::true_type());
    } else {
      rows(std::false_type());
    }
    return;
  }
  const auto lanes = static_cast<std::size_t>(v.T);
  struct State {
    aligned_vector<Acc> mean, rstd;
  };
  auto make = [lanes] { return State{aligned_vector<Acc>(lanes), aligned_vector<Acc>(lanes)}; };
  for_each_stat_block(v, par, 1, make, [&](State& st, Index offset, Index stat, const kernels::Block& b) {
    kernels::block_moments<Centered>(x + offset, b, st.mean.data(), st.rstd.data());
    const auto lanes_here = static_cast<std::ptrdiff_t>(b.lanes);
    kernels::rstd_from_m2(st.rstd.data(), b.lanes, m, eps);
    kernels::normalize_block_affine_s(x + offset, y + offset, b.S, b.lanes, b.row_stride,
                                      st.mean.data(), st.rstd.data(), gamma, beta, b.stream);
    if (mean_out && Centered) std::copy_n(st.mean.begin(), lanes_here, mean_out + stat);
    if (rstd_out) std::copy_n(st.rstd.begin(), lanes_here, rstd_out + stat);
  });
}

// Backward on a validated geometry; dgamma/dbeta are added into
// weight_grad/bias_grad. The rows are cut into chunks of a fixed size; each
// chunk sums its parameter gradients on its own (possibly on another thread),
// and the chunk sums are added in chunk order, so the result does not depend
// on the thread count. The chunk sums live in `workspace` (grown as needed,
// never shrunk) when given, else in arrays of this call: a module passes its
// own, since memory freed and allocated again on every call came back as
// fresh pages (LayerNorm 8192x1024 backward, 1 MiB of chunk sums: 224 page
// faults per call with glibc's defaults, 6.6-7.0 ms against 3.4-3.7 ms).
template <bool Centered, typename T, typename P, typename Acc>
void trailing_norm_backward(const TrailingGeometry& g, const Parallel& par,
                            const std::vector<Index>& order, const T* x, const T* dy, T* dx,
                            span<const P> weight, const Acc* mean, const Acc* rstd,
                            span<P> weight_grad, span<P> bias_grad,
                            aligned_vector<Acc>* workspace = nullptr) {
  const View& v = g.view;
  if (v.size() == 0) return;
  aligned_vector<P> weight_buf;
  const P* gamma = params_in_order(weight, order, weight_buf);
  // Work items: chunks of rows (row-major inputs) times pieces of the lanes
  // (column-major inputs); each sums its own parameter gradients.
  constexpr Index chunk_rows = 64;
  const Index chunks = (v.P + chunk_rows - 1) / chunk_rows;
  const Index pieces = (v.T + lane_piece - 1) / lane_piece;
  const Index items = chunks * pieces;
  const auto n = static_cast<std::size_t>(v.S);
  // dgamma's chunk sums, then dbeta's from a packet-aligned offset.
  // (EIGEN_MAX_ALIGN_BYTES is 0 without vectorization.)
  constexpr std::size_t align = std::max<std::size_t>(1, EIGEN_MAX_ALIGN_BYTES / sizeof(Acc));
  const std::size_t per = (n * std::size_t(items) + align - 1) / align * align;
  const std::size_t need = (weight_grad ? per : 0) + (bias_grad ? per : 0);
  aligned_vector<Acc> own;
  aligned_vector<Acc>& sums = workspace ? *workspace : own;
  if (sums.size() < need) sums.resize(need);
  std::fill_n(sums.data(), need, Acc(0));
  Acc* const dgamma = weight_grad ? sums.data() : nullptr;
  Acc* const dbeta = bias_grad ? sums.data() + (weight_grad ? per : 0) : nullptr;
  const double bytes_per_item = pass_bytes(chunk_rows * v.S * std::min(v.T, lane_piece), 2);
  // The backward takes rows together at every size (measured, -march=native,
  // fraction of a memcpy: 4096x4096 0.37-0.39 -> 0.49-0.53, 2048x2048 0.28
  // -> 0.34). Rows of a page or less used to lose to one at a time (8192x1024
  // 0.44-0.48 -> 0.39-0.41: R short rows are R streams the hardware
  // prefetchers keep losing), until the apply prefetched the next R rows
  // (see backward_rows_affine_s): now 8192x1024 0.50 -> 0.60, 8192x768 0.56
  // -> 0.64, 32768x256 0.54 -> 0.63.
  par.for_ranges(items, bytes_per_item, [&](Index first, Index last) {
    aligned_vector<Acc> scratch(static_cast<std::size_t>(4 * std::min(v.T, lane_piece)));
    for (Index item = first; item < last; ++item) {
      const Index c = item / pieces, t0 = (item % pieces) * lane_piece;
      const Index width = std::min(lane_piece, v.T - t0);
      Acc* dg = weight_grad ? dgamma + std::size_t(item) * n : nullptr;
      Acc* db = bias_grad ? dbeta + std::size_t(item) * n : nullptr;
      const Index end = std::min(v.P, (c + 1) * chunk_rows);
      if (v.T == 1) {  // rows of one statistic each, several per sweep
        kernels::for_each_row_group(c * chunk_rows, end, true,
                                    [&](Index row, auto count) {
          const Index offset = v.block_offset(row, 0);
          kernels::backward_rows_affine_s<Centered, decltype(count)::value>(
              x + offset, dy + offset, dx + offset, v.S, v.S, v.streams_output(2),
              Centered ? mean + row : nullptr, rstd + row, gamma, dg, db);
        });
        continue;
      }
      for (Index p = c * chunk_rows; p < end; ++p) {
        const Index offset = v.block_offset(p, 0) + t0, stat = v.stat_offset(p, 0) + t0;
        kernels::backward_block_affine_s<Centered>(
            x + offset, dy + offset, dx + offset, v.S, width, v.T, v.streams_output(2),
            Centered ? mean + stat : nullptr, rstd + stat, gamma, dg, db, scratch.data());
      }
    }
    kernels::streaming_fence();
  });
  // The items' sums added into item 0's, then into out: loops over s that
  // vectorize (a scalar loop here cost 10 % of LayerNorm 64x768's backward).
  auto add_chunks = [&](span<P> out, Acc* partial) {
    add_partials_into_first(partial, items, n);
    if (order.empty()) {
      for (std::size_t s = 0; s < n; ++s) out[Index(s)] += static_cast<P>(partial[s]);
    } else {
      for (std::size_t s = 0; s < n; ++s) out[order[s]] += static_cast<P>(partial[s]);
    }
  };
  if (weight_grad) add_chunks(weight_grad, dgamma);
  if (bias_grad) add_chunks(bias_grad, dbeta);
}

}  // namespace normlayers::detail
