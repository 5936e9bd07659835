// SPDX-License-Identifier: MIT
#pragma once

// Reductions and element-wise passes over one statistic block of the canonical
// view: Q runs, q_stride apart, of S rows of `lanes` contiguous values (see
// view.hpp). With one lane and contiguous rows (contiguous_runs) a run is
// reduced along its length (sum_run); otherwise every row holds one value of each of
// `lanes` statistics and the sums run across rows, vector lanes across
// statistics. Every sum over a statistic's values goes through here, in an
// order fixed by the block's shape alone (so results do not depend on the
// thread count), with partial sums per block of rows so the rounding error
// grows with the block length plus the number of blocks, not with n.

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include <normlayers/detail/kernels/simd.hpp>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12  // see simd.hpp
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace normlayers::detail::kernels {

// lanes statistics side by side; consecutive rows are row_stride apart (the
// view's T, which exceeds `lanes` when the lanes are cut into pieces).
struct Block {
  Index Q = 1, S = 1, lanes = 1, q_stride = 0, row_stride = 1;
  bool stream = false;  // write outputs with streaming stores (see simd.hpp)
  Index reduced() const { return Q * S; }
  // One statistic in Q contiguous runs of S values (no lanes; a last piece
  // of one lane cut from wider lanes is not: its rows are row_stride apart).
  bool contiguous_runs() const { return lanes == 1 && row_stride == 1; }
};

// Reading a block of several runs from memory (`stream`, see simd.hpp),
// each run's reads ask for the values this many bytes on, past the run's end
// in the next run: a run of a few KiB, far from the one before, is otherwise
// a new stream that the hardware prefetchers find only after a miss or two,
// every run (measured, AVX-512, channels-first BatchNorm 32x64x56x56, runs
// of 12.25 KiB 784 KiB apart, benchmarks/ab: forward 1.17-1.46x as fast for
// 8 KiB ahead, about as much for 4 or 12 KiB, 1.07-1.15x for 0.5 KiB;
// backward 1.04-1.19x; outputs bitwise unchanged). One prefetch per packet
// read: one per cache line under AVX-512, two under AVX2 (a build with
// -mno-avx512f: forward 1.27-1.31x, backward 1.12-1.13x), four under SSE.
inline constexpr Index runs_ahead_bytes = 8 << 10;

// How far on from a value of R rows `stride` apart, read one group after the
// other from memory (LayerNorm/RMSNorm rows), the pass over them asks for
// values: the next group's (R * stride), or runs_ahead_bytes when that is
// further. Rows of a few hundred bytes are otherwise asked for too late to
// hide the memory's latency (measured, AVX-512, benchmarks/ab, forward:
// RMSNorm 65536x128 1.4-1.9x as fast, 131072x64 1.07-1.2x, LayerNorm
// 131072x64 1.04-1.07x; 16 KiB the same, 32 KiB 0.91-0.96x of 16 KiB).
template <typename T>
Index rows_ahead(int R, Index stride) {
  return std::max(R * stride, runs_ahead_bytes / Index(sizeof(T)));
}

// Where the reads of a block's runs prefetch (see runs_ahead_bytes):
// run(q).fetch(base, i), for value i of run q of the array at `base` (a
// block's start), asks for the value `ahead` on, past the run's end in the
// next run and, from the last run, in the block at offset `after_last` from
// this one (the block read next, or the last run itself). Every address
// stays within the tensor: ahead <= S, and the block at after_last has the
// same shape (a first run of S values).
struct RunsAhead {
  Index Q, S, q_stride, after_last, ahead;
  struct Run {
    Index o, after, S, ahead;
    template <typename T>
    void fetch(const T* base, Index i) const {
      prefetch(base + (i + ahead < S ? o + i + ahead : after + (i + ahead - S)));
    }
  };
  Run run(Index q) const {
    const Index o = q * q_stride;
    return {o, q + 1 < Q ? o + q_stride : after_last, S, ahead};
  }
};
struct NoRunsAhead {
  NoRunsAhead run(Index) const { return {}; }
  template <typename T>
  void fetch(const T*, Index) const {}
};
// f(RunsAhead) for a block of several runs read from memory (`stream`),
// else f(NoRunsAhead()), whose fetch does nothing: the loops of other blocks
// carry no test. next: the offset of the block read next, of the same
// shape, from this one, or -1 when the caller reads none.
template <typename T, typename F>
void with_runs_ahead(const Block& b, Index next, F&& f) {
  if (!b.stream || b.Q < 2) return f(NoRunsAhead());
  const Index last = (b.Q - 1) * b.q_stride;
  f(RunsAhead{b.Q, b.S, b.q_stride, next >= 0 ? next : last,
              std::min(b.S, runs_ahead_bytes / Index(sizeof(T)))});
}

inline constexpr Index row_block = 128;  // rows per partial sum (and per moments chunk)

// Calls f(rows, n) for every chunk of up to row_block consecutive rows of
// the block, in memory order: rows(g) calls g(row_offset) for each of its n
// rows, rows(g, m) for the first m <= n; either may be called again.
template <typename F>
void for_each_row_chunk(const Block& b, F f) {
  const Index total = b.reduced();
  Index q = 0, s = 0;
  for (Index done = 0; done < total; done += row_block) {
    const Index n = std::min(row_block, total - done);
    const Index q0 = q, s0 = s;
    // By value: the kernels' stores cannot alias what the loop reads. The
    // offset is stepped, not recomputed: with narrow rows (64 channels, 4
    // packets) the per-row multiplies cost (channels-last BatchNorm
    // 32x64x56x56 eval 0.90-0.96 -> 1.06-1.21 of a memcpy, forward 0.45-0.55
    // -> 0.56-0.60).
    const auto rows = [S = b.S, q_stride = b.q_stride, row_stride = b.row_stride, n, q0,
                       s0](auto g, Index m = -1) {
      Index o = q0 * q_stride + s0 * row_stride, ss = s0;
      const Index wrap = q_stride - S * row_stride, count = m < 0 ? n : m;
      for (Index i = 0; i < count; ++i) {
        g(o);
        o += row_stride;
        if (++ss == S) ss = 0, o += wrap;
      }
    };
    f(rows, n);
    s += n;
    q += s / b.S;
    s %= b.S;
  }
}

// Vector registers of the ISA compiled for (16 or 32 on x86-64).
inline constexpr int vector_registers = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS;

// Rows of one statistic each (row-major LayerNorm/RMSNorm) that one kernel
// call takes together, registers allowing: their independent sums overlap
// (short rows are otherwise latency-bound) and what the rows share
// (parameters, their gradients) is loaded once per call.
inline constexpr int rows_at_once = vector_registers >= 32 ? 4 : 2;

// Calls f(row, std::integral_constant<int, R>) for rows [first, last):
// R = rows_at_once rows per call while they last (if at_once), then one by
// one (R = 1). The kernels give a row the same result whatever its R.
template <typename F>
void for_each_row_group(Index first, Index last, bool at_once, F f) {
  Index row = first;
  if (at_once)
    for (; row + rows_at_once <= last; row += rows_at_once)
      f(row, std::integral_constant<int, rows_at_once>());
  for (; row < last; ++row) f(row, std::integral_constant<int, 1>());
}

// Values per V: a packet's width, or 1 for a scalar lane.
template <typename V, typename T>
inline constexpr Index width_of = std::is_same_v<V, T> ? 1 : packet_size<T>;

// Lanes are processed in strips of K packets whose per-lane constants and
// accumulators stay in registers while the strip runs down every row: K is
// the largest power of two <= MaxK that fits, then the scalar lanes left
// over run one at a time. strip(t0, k, as) gets the strip's first lane, k =
// std::integral_constant<int, K> and `as` = a V (packet_t<T>, or T for a
// scalar lane) to tell the value type.
template <typename T, int MaxK, typename F>
void for_each_strip(Index lanes, F strip) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  Index t = 0;
  if constexpr (N > 1) {
    for (; t + MaxK * N <= lanes; t += MaxK * N) strip(t, std::integral_constant<int, MaxK>(), P());
    if constexpr (MaxK >= 16) {
      if (t + 8 * N <= lanes) strip(t, std::integral_constant<int, 8>(), P()), t += 8 * N;
    }
    if constexpr (MaxK >= 8) {
      if (t + 4 * N <= lanes) strip(t, std::integral_constant<int, 4>(), P()), t += 4 * N;
    }
    if constexpr (MaxK >= 4) {
      if (t + 2 * N <= lanes) strip(t, std::integral_constant<int, 2>(), P()), t += 2 * N;
    }
    if constexpr (MaxK >= 2) {
      if (t + N <= lanes) strip(t, std::integral_constant<int, 1>(), P()), t += N;
    }
  }
  for (; t < lanes; ++t) strip(t, std::integral_constant<int, 1>(), T());
}

// The strip's per-lane functors: make(t, as) for its K vectors of lanes,
// returned by value so what they hold lives in registers.
template <typename Make, typename V, std::size_t... I>
auto strip_functors_impl(const Make& make, Index t0, Index w, V as, std::index_sequence<I...>) {
  return std::array<decltype(make(t0, as)), sizeof...(I)>{make(t0 + Index(I) * w, as)...};
}
template <int K, typename T, typename Make, typename V>
auto strip_functors(const Make& make, Index t0, V as) {
  return strip_functors_impl(make, t0, width_of<V, T>, as, std::make_index_sequence<std::size_t(K)>());
}

// Two lane sums over two arrays: out_a[t], out_b[t] for every lane, where
// make(t, as) returns g(x, y, a, b), which adds the terms of lanes t.. (a V
// of them) into the accumulators a and b. Partial sums per chunk of rows,
// added in chunk order.
template <typename T, typename Make>
void sum2_lanes(const T* x, const T* y, const Block& b, Make make, T* out_a, T* out_b) {
  std::fill(out_a, out_a + b.lanes, T(0));
  std::fill(out_b, out_b + b.lanes, T(0));
  for_each_strip<T, vector_registers / 4>(b.lanes, [&](Index t0, auto k, auto as) {
    using V = decltype(as);
    constexpr int K = decltype(k)::value;
    constexpr Index W = width_of<V, T>;
    auto g = strip_functors<K, T>(make, t0, as);
    for_each_row_chunk(b, [&](auto rows, Index) {
      V a[K], c[K];
      unrolled<K>([&](auto i) { a[i] = c[i] = splat<V>(T(0)); });
      rows([&](Index row) {
        const T* xr = x + row + t0;
        const T* yr = y + row + t0;
        unrolled<K>([&](auto i) { g[i](load_as<V>(xr + i * W), load_as<V>(yr + i * W), a[i], c[i]); });
      });
      unrolled<K>([&](auto i) {
        store_as(out_a + t0 + i * W, padd(load_as<V>(out_a + t0 + i * W), a[i]));
        store_as(out_b + t0 + i * W, padd(load_as<V>(out_b + t0 + i * W), c[i]));
      });
    });
  });
}

// One row of a strip of K vectors (V) of lanes: dst[i W ..] = g[i](src[i W
// ..]...) for i < K, one pointer per input at the strip's first lane. Aligned
// packets are streamed when `stream`.
template <int K, typename V, typename G, typename T, typename... In>
inline void map_strip_row(const G& g, T* dst, bool stream, const In*... src) {
  constexpr Index W = width_of<V, T>;
  if constexpr (W > 1) {
    if (stream && reinterpret_cast<std::uintptr_t>(dst) % (W * sizeof(T)) == 0) {
      unrolled<K>([&](auto i) { store_streaming(dst + i * W, g[i](load_as<V>(src + i * W)...)); });
      return;
    }
  }
  unrolled<K>([&](auto i) { store_as(dst + i * W, g[i](load_as<V>(src + i * W)...)); });
}

// out[i] = g(in[i]...) over the block, lanes across statistics: make(t, as)
// returns the functor g of lanes t.. (a V of them), which takes a V of each
// input. Aligned packets are streamed when b.stream.
template <typename T, int MaxK, typename Make, typename... In>
void map_lanes(T* out, const Block& b, Index ahead, Make make, const In*... in) {
  for_each_row_chunk(b, [&](auto rows, Index) {
    for_each_strip<T, MaxK>(b.lanes, [&](Index t0, auto k, auto as) {
      using V = decltype(as);
      constexpr int K = decltype(k)::value;
      constexpr Index W = width_of<V, T>;
      const auto g = strip_functors<K, T>(make, t0, as);
      // By value: stores to out cannot alias the pointers and constants.
      rows([=, stream = b.stream](Index row) {
        const Index o = row + t0;
        if (W > 1 && ahead > 0) unrolled<K>([&](auto i) { (prefetch(in + o + i * W + ahead), ...); });
        map_strip_row<K, V>(g, out + o, stream, in + o...);
      });
    });
  });
}

// map_lanes row by row, each row whole: the functor of every packet of lanes
// (then of every scalar lane left over) is made afresh in every row, its
// constants loaded from L1, so the rows are read and written in order, as a
// memcpy runs, rather than in strips down the block (measured, AVX-512,
// GroupNorm channels-last 8x320x32x32 forward: 374 -> 332 us). Only for
// constants in packet-aligned arrays: loads straddling cache lines made the
// same apply twice as slow as the strips.
template <typename T, typename Make, typename... In>
void map_whole_rows(T* out, const Block& b, Index ahead, Make make, const In*... in) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  for_each_row_chunk(b, [&](auto rows, Index) {
    rows([=, lanes = b.lanes, stream = b.stream](Index row) {
      Index t = 0;
      for (; t + N <= lanes; t += N) {
        if (ahead > 0) (prefetch(in + row + t + ahead), ...);
        map_strip_row<1, P>(std::array{make(t, P())}, out + row + t, stream, in + row + t...);
      }
      for (; t < lanes; ++t)
        map_strip_row<1, T>(std::array{make(t, T())}, out + row + t, stream, in + row + t...);
    });
  });
}

// Whether every pointer is aligned to a packet of T.
template <typename T, typename... Ptr>
bool packet_aligned(const Ptr*... p) {
  return ((reinterpret_cast<std::uintptr_t>(p) % (packet_size<T> * sizeof(T)) == 0) && ...);
}

// The lane maps (apply passes) run in strips of up to 16 packets on ISAs
// with 32 vector registers, though their functors' constants (3 or 5 per
// packet) then partly live in L1 rather than in registers: a strip's run of
// 1 KiB per row visit pays more (measured, AVX-512, fraction of a memcpy,
// against 8 and 4 packets: BatchNorm 256x1024 forward 0.40-0.43 -> 0.50-0.55,
// backward 0.41-0.46 -> 0.53-0.57; channels-last GroupNorm 8x320x32x32, then
// in strips, the same within noise). With 16 registers, the strips whose
// constants fit.
//
// out[i] = f(x[i]) for every value of the block. With contiguous runs of one
// statistic f is used as is; otherwise make(t, as)
// returns the f of lanes t.. (see map_lanes), and rows wider than a strip
// go whole (map_whole_rows) if `aligned_constants` (make's arrays are). On
// every ISA: whole rows against strips, interleaved calls in one process,
// medians, us: AVX2 build, channels-last BatchNorm 32x64x56x56 forward 3005
// vs 3387, eval 1075 vs 1749, GroupNorm 8x320x32x32 forward 905 vs 1227,
// InstanceNorm 8x128x128x64 forward 4914 vs 5244; SSE2 build, BatchNorm 4723
// vs 5840, eval 2350 vs 3607, GroupNorm 2200 vs 2700.
template <typename T, typename F, typename Make>
void map_block(const T* x, T* out, const Block& b, F f, Make make, bool aligned_constants,
               Index ahead = 0) {
  if (b.contiguous_runs()) {
    for (Index q = 0; q < b.Q; ++q) {
      const Index o = q * b.q_stride;
      map_run(x + o, out + o, b.S, [f](auto v, Index) { return f(v); }, b.stream);
    }
    return;
  }
  constexpr int K = vector_registers >= 32 ? 16 : vector_registers / 4;
  if (aligned_constants && packet_size<T> > 1 && b.lanes > K * packet_size<T>)
    return map_whole_rows(out, b, ahead, make, x);
  map_lanes<T, K>(out, b, ahead, make, x);
}

// out[i] = f(x[i], y[i]): map_block over two inputs, except that rows wider
// than a strip go whole only in blocks read from memory (b.stream). There
// the strips, a cache line or two per row at a time down the block, read
// and wrote far below a memcpy (measured, AVX2 build on a Zen 3 host,
// benchmarks/ab, channels-last backward, strips -> whole rows: BatchNorm
// 32x64x56x56 1.30-1.36x, InstanceNorm 8x128x128x64 1.27-1.30x, GroupNorm
// 2x320x64x64 1.46x; SSE2 build, BatchNorm 1.55-1.63x), while in cache the
// strips, their constants in registers, stay faster (BatchNorm [256, 1024]
// backward 0.81-0.86x along whole rows). With AVX-512 only rows of over 16
// packets go whole; there (Xeon, Sapphire Rapids class) the change was
// level or a little ahead: GroupNorm 2x320x64x64 1.03-1.07x, BatchNorm
// 32x7x7x2048 1.01-1.04x.
template <typename T, typename F, typename Make>
void map2_block(const T* x, const T* y, T* out, const Block& b, F f, Make make,
                bool aligned_constants, Index ahead = 0) {
  if (b.contiguous_runs()) {
    for (Index q = 0; q < b.Q; ++q) {
      const Index o = q * b.q_stride;
      map2_run(x + o, y + o, out + o, b.S, [f](auto xv, auto yv, Index) { return f(xv, yv); },
               b.stream);
    }
    return;
  }
  constexpr int K = vector_registers >= 32 ? 16 : vector_registers / 8;
  if (b.stream && aligned_constants && packet_size<T> > 1 && b.lanes > K * packet_size<T>)
    return map_whole_rows(out, b, ahead, make, x, y);
  map_lanes<T, K>(out, b, ahead, make, x, y);
}

}  // namespace normlayers::detail::kernels

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic pop
#endif
