// SPDX-License-Identifier: MIT
#pragma once

// Packet math for the kernels: Eigen's packet of the scalar for the ISA the
// user compiles for (16 floats under AVX-512, 8 under AVX2, 4 under SSE; a
// scalar where Eigen has none). The functors the kernels take are written with
// Eigen's generic packet operations (padd, psub, pmul, pmadd, pset1), which
// also accept plain scalars, so one functor serves the vector body and the
// scalar tail of a loop.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers::detail::kernels {

using Index = Eigen::Index;
using Eigen::internal::padd;
using Eigen::internal::pmadd;
using Eigen::internal::pmul;
using Eigen::internal::predux;
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

// acc + d computed as fma(d, 1, acc): the same rounding as an add (d * 1 is
// exact), on the multiply-add units, which leaves the adders free for the
// subtractions next to it (CPUs with separate FADD and FMA pipes run both).
template <typename V>
inline V accumulate(const V& acc, const V& d) {
  return pmadd(d, splat<V>(typename Eigen::internal::unpacket_traits<V>::type(1)), acc);
}

// sum over i < n of the terms of x[i]: f(acc, v) returns acc plus the terms
// of v (a packet, or a scalar in the tail). 4 packet accumulators per block
// of run_block values, block sums added in order. The order depends only on
// n, never on threads.
template <typename T, typename F>
T sum_run(const T* x, Index n, F f) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  T total = 0;
  for (Index b = 0; b < n; b += run_block) {
    const Index e = std::min(n, b + run_block);
    P a0 = splat<P>(T(0)), a1 = a0, a2 = a0, a3 = a0;
    Index i = b;
    for (; i + 4 * N <= e; i += 4 * N) {
      a0 = f(a0, load(x + i));
      a1 = f(a1, load(x + i + N));
      a2 = f(a2, load(x + i + 2 * N));
      a3 = f(a3, load(x + i + 3 * N));
    }
    for (; i + N <= e; i += N) a0 = f(a0, load(x + i));
    T tail = 0;
    for (; i < e; ++i) tail = f(tail, x[i]);
    total += predux(padd(padd(a0, a1), padd(a2, a3))) + tail;
  }
  return total;
}

// Two sums over two arrays: f(x, y, a, b, i) adds the terms of the values at
// i (packets or scalars) into the accumulators a and b.
template <typename T, typename F>
void sum2_run(const T* x, const T* y, Index n, F f, T& out_a, T& out_b) {
  using P = packet_t<T>;
  constexpr Index N = packet_size<T>;
  T ta = 0, tb = 0;
  for (Index blk = 0; blk < n; blk += run_block) {
    const Index e = std::min(n, blk + run_block);
    P a0 = splat<P>(T(0)), a1 = a0, b0 = a0, b1 = a0;
    Index i = blk;
    for (; i + 2 * N <= e; i += 2 * N) {
      f(load(x + i), load(y + i), a0, b0, i);
      f(load(x + i + N), load(y + i + N), a1, b1, i + N);
    }
    for (; i + N <= e; i += N) f(load(x + i), load(y + i), a0, b0, i);
    T sa = 0, sb = 0;
    for (; i < e; ++i) f(x[i], y[i], sa, sb, i);
    ta += predux(padd(a0, a1)) + sa;
    tb += predux(padd(b0, b1)) + sb;
  }
  out_a = ta;
  out_b = tb;
}

// Outputs of more values than this (16 MiB of float) are written with
// non-temporal (streaming) stores: they would not stay in a typical last-level
// cache anyway, and streaming skips the read-for-ownership of every output
// line (a third of a forward's memory traffic).
inline constexpr Index streaming_store_values = Index(4) << 20;

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
// Orders streaming stores before whatever follows (another thread's reads);
// every loop that may stream calls it once at its end.
inline void streaming_fence() {
#if defined(EIGEN_VECTORIZE_SSE2)
  _mm_sfence();
#endif
}

// out[i] = f(in(i), i) over n values, in(i) the inputs at i as packets (or
// scalars in the head and tail); with `stream`, aligned packets are written
// with streaming stores.
template <typename T, typename In, typename F>
void map_run_with(T* out, Index n, bool stream, In in, F f) {
  constexpr Index N = packet_size<T>;
  Index i = 0;
  if (stream && N > 1) {
    const auto misaligned = reinterpret_cast<std::uintptr_t>(out) % (N * sizeof(T));
    Index head = misaligned % sizeof(T) ? n : Index((N * sizeof(T) - misaligned) / sizeof(T)) % N;
    for (head = std::min(head, n); i < head; ++i) out[i] = f(in(i, T()), i);
    for (; i + N <= n; i += N) store_streaming(out + i, f(in(i, packet_t<T>()), i));
    for (; i < n; ++i) out[i] = f(in(i, T()), i);
    return;  // the caller fences once after all its runs (streaming_fence)
  }
  for (; i + N <= n; i += N) store(out + i, f(in(i, packet_t<T>()), i));
  for (; i < n; ++i) out[i] = f(in(i, T()), i);
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
