// SPDX-License-Identifier: MIT
#pragma once

// Packet math for the kernels: Eigen's packet of the scalar for the ISA the
// user compiles for (16 floats under AVX-512, 8 under AVX2, 4 under SSE; a
// scalar where Eigen has none). The functors the kernels take are written with
// Eigen's generic packet operations (padd, psub, pmul, pset1) and madd below
// (in place of Eigen's pmadd), which also accept plain scalars, so one functor
// serves the vector body and the scalar tail of a loop.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <unsupported/Eigen/CXX11/Tensor>

// GCC 12 before 12.3 warns falsely inside its own AVX-512 intrinsics wherever
// they are inlined ("'__Y' may be used uninitialized", GCC bug 105593; "is
// used uninitialized" from _mm512_shuffle_f32x4); users
// building with -Werror -march=native must not see it from these kernels.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace normlayers::detail::kernels {

using Index = Eigen::Index;
using Eigen::internal::padd;
using Eigen::internal::pcmp_lt_or_nan;
using Eigen::internal::pmul;
using Eigen::internal::pnegate;
using Eigen::internal::predux;
using Eigen::internal::predux_any;
using Eigen::internal::psub;

template <typename T>
using packet_t = typename Eigen::internal::packet_traits<T>::type;
template <typename T>
inline constexpr Index packet_size = Eigen::internal::unpacket_traits<packet_t<T>>::size;

// A packet of copies of v, or v itself when V is a scalar.
template <typename V, typename T>
inline V splat(T v) {
  return Eigen::internal::pset1<V>(v);
}
// *p as a V: a packet of the values from p on, or the scalar at p.
template <typename V, typename T>
inline V load_as(const T* p) {
  if constexpr (std::is_same_v<V, T>) {
    return *p;
  } else {
    return Eigen::internal::ploadu<V>(p);
  }
}
// Stores v (a packet or a scalar) at p.
template <typename T, typename V>
inline void store_as(T* p, const V& v) {
  if constexpr (std::is_same_v<V, T>) {
    *p = v;
  } else {
    Eigen::internal::pstoreu(p, v);
  }
}
template <typename T>
inline packet_t<T> load(const T* p) {
  return Eigen::internal::ploadu<packet_t<T>>(p);
}
template <typename T>
inline void store(T* p, const packet_t<T>& v) {
  Eigen::internal::pstoreu(p, v);
}

inline constexpr Index run_block = 1024;  // values per partial sum of a contiguous run

// a * b + c, rounded once where the ISA has fused multiply-adds: Eigen's
// pmadd for packets (an FMA instruction there), std::fma for scalars (one
// instruction there too). GCC contracts a * b + c on its own by default
// (-ffp-contract=fast), wherever it sees fit after inlining: in (g + v) * w
// + xc * z it may fuse either product, and not necessarily the same one in
// every inlined copy of the code. Written as madd, the fused product is the
// one named (see rounded for one that must not be fused). Without FMA there
// is nothing to contract: a multiply and an add, packets and scalars alike.
template <typename V>
inline V madd(const V& a, const V& b, const V& c) {
  if constexpr (std::is_arithmetic_v<V>) {
#if defined(EIGEN_VECTORIZE_FMA) || defined(__FMA__)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
  } else {
    return Eigen::internal::pmadd(a, b, c);
  }
}

// acc + d computed as fma(d, 1, acc): the same rounding as an add (d * 1 is
// exact), on the multiply-add units, which leaves the adders free for the
// subtractions next to it (CPUs with separate FADD and FMA pipes run both).
template <typename V>
inline V accumulate(const V& acc, const V& d) {
  return madd(d, splat<V>(typename Eigen::internal::unpacket_traits<V>::type(1)), acc);
}

// v itself, as a value the compiler must have computed, rounded, before
// using it: a product passed through it is not fused into a following add.
// For products a pass sums and another subtracts again (the backward's g =
// dy * gamma, summed in its reduce and added to -mean(g) in its apply): both
// must see the same rounded g, so that they cancel exactly where they
// should (one value per statistic); GCC contracted the reduce's add of g in
// some inlined copies of the same code and not in others (see madd). An
// empty asm statement for GCC (and compilers that take its syntax) on x86
// and AArch64; elsewhere v as it is (compilers that contract only within
// one expression, as Clang and MSVC do, have nothing to fuse here).
template <typename V>
inline V rounded(V v) {
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) && \
    defined(__SSE2_MATH__)
  __asm__("" : "+v"(v));
#elif defined(__GNUC__) && !defined(__clang__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
  return v;
}

// f(std::integral_constant<Index, k>) for k = 0 .. K-1, unrolled.
template <typename F, std::size_t... I>
inline void unrolled_impl(F& f, std::index_sequence<I...>) {
  (f(std::integral_constant<Index, Index(I)>()), ...);
}
template <int K, typename F>
inline void unrolled(F f) {
  unrolled_impl(f, std::make_index_sequence<std::size_t(K)>());
}

// Two sums per row for R rows over the values [first, last): per row k the
// packets pa[k], pb[k] and the scalars ta[k], tb[k] (the tail) that add up
// to them, where in(k, i, as) returns row k's inputs at i (as packets, or
// scalars in the tail: the type of `as`) and f(in, a, b, k) adds their terms
// into the accumulators a and b. Per row, 4 accumulator pairs (8 chains of
// additions, enough to hide their latency). R <= 2 fits 16 registers.
// (Always inlined: its accumulators then stay in registers, and a call per
// row group cost LayerNorm 64x768's forward 2-3 %.)
template <int R, typename T, typename In, typename F>
EIGEN_ALWAYS_INLINE void sum2_rows_packets(Index first, Index last, In in, F f, packet_t<T>* pa,
                                           packet_t<T>* pb, T* ta, T* tb) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  P a[R][4], b[R][4];
  unrolled<R>([&](auto k) { unrolled<4>([&](auto j) { a[k][j] = b[k][j] = splat<P>(T(0)); }); });
  Index i = first;
  for (; i + 4 * N <= last; i += 4 * N)
    unrolled<R>([&](auto k) {
      unrolled<4>([&](auto j) { f(in(k, i + j * N, P()), a[k][j], b[k][j], k); });
    });
  for (; i + N <= last; i += N) unrolled<R>([&](auto k) { f(in(k, i, P()), a[k][0], b[k][0], k); });
  unrolled<R>([&](auto k) {
    ta[k] = tb[k] = T(0);
    for (Index j = i; j < last; ++j) f(in(k, j, T()), ta[k], tb[k], k);
    pa[k] = padd(padd(a[k][0], a[k][1]), padd(a[k][2], a[k][3]));
    pb[k] = padd(padd(b[k][0], b[k][1]), padd(b[k][2], b[k][3]));
  });
}

// The correctly rounded square root of every lane of V, a packet of T or a
// T (Eigen's psqrt may be an approximation under EIGEN_FAST_MATH, its
// default).
template <typename T, typename V>
inline V sqrt_exact(const V& v) {
  // (V's width from its size: GCC warns that a vector type's attributes are
  // ignored when it is passed to a trait as a template argument.)
  constexpr std::size_t lanes = sizeof(V) / sizeof(T);
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<T, float> && lanes == 16) return _mm512_sqrt_ps(v);
  if constexpr (std::is_same_v<T, double> && lanes == 8) return _mm512_sqrt_pd(v);
#endif
#if defined(EIGEN_VECTORIZE_AVX)
  if constexpr (std::is_same_v<T, float> && lanes == 8) return _mm256_sqrt_ps(v);
  if constexpr (std::is_same_v<T, double> && lanes == 4) return _mm256_sqrt_pd(v);
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
  if constexpr (std::is_same_v<T, float> && lanes == 4) return _mm_sqrt_ps(v);
  if constexpr (std::is_same_v<T, double> && lanes == 2) return _mm_sqrt_pd(v);
#endif
  if constexpr (std::is_arithmetic_v<V>) {
    return std::sqrt(v);
  } else {
    alignas(sizeof(V)) T values[lanes];
    Eigen::internal::pstore(values, v);
    for (T& value : values) value = std::sqrt(value);
    return Eigen::internal::pload<V>(values);
  }
}

// Inside every 128 bits, a's lanes picked by the shuffle control I plus
// those picked by J, then b's likewise: two packets' sums merged side by
// side, in predux_each.
#if defined(EIGEN_VECTORIZE_AVX)
template <int I, int J>
inline __m256 add_shuffles(__m256 a, __m256 b) {
  return _mm256_add_ps(_mm256_shuffle_ps(a, b, I), _mm256_shuffle_ps(a, b, J));
}
#endif
#if defined(EIGEN_VECTORIZE_AVX512)
template <int I, int J>
inline __m512 add_shuffles(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, I), _mm512_shuffle_ps(a, b, J));
}
#endif

// A packet whose lane k is the sum of v[k]'s lanes, for k < packet_size<T>:
// the horizontal sums of a packet of rows at once. With AVX-512 or AVX
// (float), a tree that adds halves of two packets side by side at every
// level: 2 shuffles and an add per packet merged (45 instructions for 16
// rows, against ~8 dependent ones per row for predux) and no chain of
// reductions a row's finish waits on. It adds in predux's order (halves,
// then quarters, then pairs of lanes, then lanes), so a lane gets the same
// bits as predux of its packet. Elsewhere predux per packet. Each lane's
// result depends only on its own packet.
template <typename T>
inline packet_t<T> predux_each(const packet_t<T>* v) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
#if defined(EIGEN_VECTORIZE_AVX)
  // The last two levels: q[c] holds rows c, c + 4, ... in its 128-bit
  // quarters 0, 1, ...: pairs of lanes, then lanes, give rows in order.
  [[maybe_unused]] const auto inside_quarters = [](auto q0, auto q1, auto q2, auto q3) {
    return add_shuffles<0x88, 0xDD>(add_shuffles<0x44, 0xEE>(q0, q1),
                                    add_shuffles<0x44, 0xEE>(q2, q3));
  };
#endif
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<T, float> && N == 16) {
    // Halves of 256 bits side by side (rows j and j + 4), then 128-bit
    // quarters (row j + 4c in quarter c).
    const auto halves = [](__m512 a, __m512 b) {
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    };
    const auto quarters = [](__m512 a, __m512 b) {
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
    };
    __m512 h[8], q[4];
    for (int j = 0; j < 4; ++j) {
      h[j] = halves(v[j], v[j + 4]);
      h[j + 4] = halves(v[j + 8], v[j + 12]);
    }
    for (int j = 0; j < 4; ++j) q[j] = quarters(h[j], h[j + 4]);
    return inside_quarters(q[0], q[1], q[2], q[3]);
  }
#endif
#if defined(EIGEN_VECTORIZE_AVX)
  if constexpr (std::is_same_v<T, float> && N == 8) {
    // Halves of 128 bits side by side (rows j and j + 4).
    const auto halves = [](__m256 a, __m256 b) {
      return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    };
    return inside_quarters(halves(v[0], v[4]), halves(v[1], v[5]), halves(v[2], v[6]),
                           halves(v[3], v[7]));
  }
#endif
  if constexpr (N == 1) {
    return v[0];
  } else {
    alignas(sizeof(P)) T sums[N];
    for (Index k = 0; k < N; ++k) sums[k] = predux(v[k]);
    return Eigen::internal::pload<P>(sums);
  }
}

// The two sums of sum2_rows_packets per row as scalars out_a[k], out_b[k],
// by blocks of run_block values added in order: a row's sums do not depend
// on R (see sum_rows).
template <int R, typename T, typename In, typename F>
void sum2_rows_with(Index n, In in, F f, T* out_a, T* out_b) {
  unrolled<R>([&](auto k) { out_a[k] = out_b[k] = T(0); });
  for (Index blk = 0; blk < n; blk += run_block) {
    packet_t<T> pa[R], pb[R];
    T ta[R], tb[R];
    sum2_rows_packets<R>(blk, std::min(n, blk + run_block), in, f, pa, pb, ta, tb);
    unrolled<R>([&](auto k) {
      out_a[k] += predux(pa[k]) + ta[k];
      out_b[k] += predux(pb[k]) + tb[k];
    });
  }
}

// sums[k] = the sum over i < n of the terms of x[k * stride + i], for R rows:
// f(acc, v, k) returns acc plus the terms of v (a packet, or a scalar in the
// tail) of row k: sum2_rows_with with one sum (the other's accumulators are
// dead code). R rows at once give the core R times the independent
// additions to overlap (short rows are otherwise latency-bound).
template <int R, typename T, typename F>
void sum_rows(const T* x, Index stride, Index n, F f, T* sums) {
  T unused[R];
  sum2_rows_with<R>(
      n, [x, stride](auto k, Index i, auto as) { return load_as<decltype(as)>(x + k * stride + i); },
      [&f](const auto& v, auto& a, auto&, auto k) { a = f(a, v, k); }, sums, unused);
}

// sum over i < n of the terms of x[i] (sum_rows of one row; f(acc, v)).
template <typename T, typename F>
T sum_run(const T* x, Index n, F f) {
  T sum;
  sum_rows<1>(x, 0, n, [&f](auto acc, auto v, auto) { return f(acc, v); }, &sum);
  return sum;
}
// sum over i < n of x[i].
template <typename T>
T sum_values(const T* x, Index n) {
  return sum_run(x, n, [](auto acc, auto v) { return padd(acc, v); });
}

// A pass that reads more values than this (16 MiB of float, over all its
// inputs) writes its output with non-temporal (streaming) stores: its reads
// would push the output out of a typical last-level cache before a consumer
// could use it, and streaming skips the read-for-ownership of every output
// line (a third of a forward's memory traffic). Counted over the inputs, so
// a backward (x and dy) streams from half the size of a forward. Measured
// on a 32 MiB L3, GroupNorm Nx320x32x32 followed by a read of its output
// (the consumer), plain against streaming stores: backward + read with 15
// MiB of x and dy 477 vs 499 us, 17.5 MiB 617 vs 613, 20 MiB 800 vs 745
// (the backward alone 750 vs 450); forward + read with 10 MiB of x 393 vs
// 575, 15 MiB 911 vs 992.
inline constexpr Index streaming_read_values = Index(4) << 20;

// A streaming store of a whole packet to a packet-aligned address, where the
// ISA has one; a plain store otherwise.
template <typename T>
inline void store_streaming(T* p, const packet_t<T>& v) {
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_stream_ps(p, v);
  if constexpr (std::is_same_v<T, double>) return _mm512_stream_pd(p, v);
#elif defined(EIGEN_VECTORIZE_AVX)
  if constexpr (std::is_same_v<T, float>) return _mm256_stream_ps(p, v);
  if constexpr (std::is_same_v<T, double>) return _mm256_stream_pd(p, v);
#elif defined(EIGEN_VECTORIZE_SSE2)
  if constexpr (std::is_same_v<T, float>) return _mm_stream_ps(p, v);
  if constexpr (std::is_same_v<T, double>) return _mm_stream_pd(p, v);
#endif
  store(p, v);
}
// Asks for the cache line at p ahead of its use (nothing where the compiler
// has no prefetch builtin). Never faults, so p may lie past the data.
inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}
// Asks for the cache lines of out[0 .. n) ahead of writing them (plain
// stores, not streaming ones), so that a burst of stores to lines not in
// cache does not fill the store buffer and stall on their reads for
// ownership. Never faults.
template <typename T>
inline void prefetch_for_write(const T* out, Index n) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr Index line = 64 / Index(sizeof(T));
  for (Index i = 0; i < n; i += line) __builtin_prefetch(out + i, 1, 3);
#else
  (void)out, (void)n;
#endif
}

// Whether out lies just before or after in modulo 4 KiB (within 256 bytes,
// not at the same offset), where stores to out share their low 12 address
// bits with loads of in a few packets away.
template <typename T>
inline bool near_4k_alias(const T* in, const T* out) {
  const auto d = (reinterpret_cast<std::uintptr_t>(out) - reinterpret_cast<std::uintptr_t>(in)) %
                 std::uintptr_t(4096);
  return d != 0 && (d <= 256 || d >= 4096 - 256);
}

// Whether this CPU holds up loads behind streaming stores to addresses with
// the same low 12 bits: AMD's do (Zen 3, AVX2 build, LayerNorm 8192x1024
// forward from one buffer, y placed from x: +32 bytes 64 ms, +64 39, +128
// 23, +224 11, +256 5.8; -32 18, -64 26, -256 61, -320 6.3; at 0 7-12 ms;
// 5.1 ms from 512 bytes to 3.5 KiB off; plain stores 6.5-8.0 ms at every
// offset). Intel's do not (Xeon, Sapphire Rapids class, the same case:
// streaming 2.4-3.5 ms at every one of those offsets, plain stores 4.9-7.8
// ms; an AVX2 build of it alike, 2.8-4.5 against 6.2-9.1 ms), so there
// plain stores would only lose. Unknown x86 vendors and compilers without
// __builtin_cpu_is count as AMD (the cautious side); other ISAs have no
// such stores (store_streaming is a plain store there).
inline bool streaming_stalls_aliased_loads() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  // (__builtin_cpu_init first: a call from a static initializer may run
  // before the runtime's own.)
  static const bool stalls = [] {
    __builtin_cpu_init();
    return !__builtin_cpu_is("intel");
  }();
  return stalls;
#else
  return true;
#endif
}

// Whether a pass that reads in and writes out should store plainly even
// where its size asks for streaming stores (see the two above).
template <typename T>
inline bool streaming_stalls_loads(const T* in, const T* out) {
  return near_4k_alias(in, out) && streaming_stalls_aliased_loads();
}

// Orders streaming stores before whatever follows (another thread's reads);
// every loop that may stream calls it once at its end.
inline void streaming_fence() {
#if defined(EIGEN_VECTORIZE_SSE2)
  _mm_sfence();
#endif
}

// out[k * stride + i] = f(c, k, i) for R rows k (integral_constants) and
// i < n, where c = shared(i, as) holds what the rows share at i (parameters
// loaded once for all R rows) and f reads row k's inputs itself; `as` (a
// packet, or a scalar in the head and tail) tells the value type. With
// `stream`, aligned packets are written with streaming stores (rows not
// equally aligned then go one at a time).
template <int R, typename T, typename Shared, typename F>
void map_rows_with(T* out, Index stride, Index n, bool stream, Shared shared, F f) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  const auto at = [&](Index i, auto as, auto store_v) {
    const auto c = shared(i, as);
    decltype(as) v[R];
    unrolled<R>([&](auto k) { v[k] = f(c, k, i, as); });  // all loads before the stores
    unrolled<R>([&](auto k) { store_v(out + k * stride + i, v[k]); });
  };
  const auto plain = [](T* p, const auto& v) { store_as(p, v); };
  Index i = 0;
  if (stream && N > 1) {
    if constexpr (R > 1) {
      if (stride % N != 0) {
        unrolled<R>([&](auto k) {
          map_rows_with<1>(out + k * stride, 0, n, stream, shared,
                           [&f, k](const auto& c, auto, Index j, auto as) { return f(c, k, j, as); });
        });
        return;
      }
    }
    const auto misaligned = reinterpret_cast<std::uintptr_t>(out) % (N * sizeof(T));
    Index head = misaligned % sizeof(T) ? n : Index((N * sizeof(T) - misaligned) / sizeof(T)) % N;
    for (head = std::min(head, n); i < head; ++i) at(i, T(), plain);
    for (; i + N <= n; i += N) at(i, P(), [](T* p, const P& v) { store_streaming(p, v); });
    for (; i < n; ++i) at(i, T(), plain);
    return;  // the caller fences once after all its runs (streaming_fence)
  }
  for (; i + N <= n; i += N) at(i, P(), plain);
  for (; i < n; ++i) at(i, T(), plain);
}

// out[i] = f(in(i), i) over n values, in(i) the inputs at i as packets (or
// scalars in the head and tail): map_rows_with of one row.
template <typename T, typename In, typename F>
void map_run_with(T* out, Index n, bool stream, In in, F f) {
  map_rows_with<1>(out, 0, n, stream, in,
                   [&f](const auto& v, auto, Index i, auto) { return f(v, i); });
}

// out[i] = f(x[i], i) over n values; f gets packets (and scalars in the tail)
// and the index of the first value.
template <typename T, typename F>
void map_run(const T* x, T* out, Index n, F f, bool stream = false) {
  map_run_with(out, n, stream,
               [x](Index i, auto as) { return load_as<decltype(as)>(x + i); }, f);
}

// out[i] = f(x[i], y[i], i) over n values (packets, then scalars).
template <typename T, typename F>
void map2_run(const T* x, const T* y, T* out, Index n, F f, bool stream = false) {
  map_run_with(out, n, stream,
               [x, y](Index i, auto as) {
                 using V = decltype(as);
                 return std::pair<V, V>(load_as<V>(x + i), load_as<V>(y + i));
               },
               [&f](const auto& xy, Index i) { return f(xy.first, xy.second, i); });
}

}  // namespace normlayers::detail::kernels

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic pop
#endif
