// SPDX-License-Identifier: MIT
#pragma once

// Packet math for the kernels: Eigen's packet of the scalar for the ISA the
// user compiles for (16 floats under AVX-512, 8 under AVX2, 4 under SSE; a
// scalar where Eigen has none). The functors the kernels take are written with
// Eigen's generic packet operations (padd, psub, pmul, pmadd, pset1), which
// also accept plain scalars, so one functor serves the vector body and the
// scalar tail of a loop.

#include <algorithm>
#include <type_traits>

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
template <typename T>
inline packet_t<T> load(const T* p) {
  return Eigen::internal::ploadu<packet_t<T>>(p);
}
template <typename T>
inline void store(T* p, const packet_t<T>& v) {
  Eigen::internal::pstoreu(p, v);
}

inline constexpr Index run_block = 1024;  // values per partial sum of a contiguous run

// sum over i < n of f(x[i]), with f applied to packets (and to scalars in the
// tail): 4 packet accumulators per block of run_block values, block sums
// added in order. The order depends only on n, never on threads.
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
      a0 = padd(a0, f(load(x + i)));
      a1 = padd(a1, f(load(x + i + N)));
      a2 = padd(a2, f(load(x + i + 2 * N)));
      a3 = padd(a3, f(load(x + i + 3 * N)));
    }
    for (; i + N <= e; i += N) a0 = padd(a0, f(load(x + i)));
    T tail = 0;
    for (; i < e; ++i) tail += f(x[i]);
    total += predux(padd(padd(a0, a1), padd(a2, a3))) + tail;
  }
  return total;
}

// Two sums over two arrays: {sum f(x, y).first, ...} where f(x, y, a, b)
// adds into a and b (packets or scalars).
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
      f(load(x + i), load(y + i), a0, b0);
      f(load(x + i + N), load(y + i + N), a1, b1);
    }
    for (; i + N <= e; i += N) f(load(x + i), load(y + i), a0, b0);
    T sa = 0, sb = 0;
    for (; i < e; ++i) f(x[i], y[i], sa, sb);
    ta += predux(padd(a0, a1)) + sa;
    tb += predux(padd(b0, b1)) + sb;
  }
  out_a = ta;
  out_b = tb;
}

// out[i] = f(x[i], i) over n values; f gets packets (and scalars in the tail)
// and the index of the first value.
template <typename T, typename F>
void map_run(const T* x, T* out, Index n, F f) {
  constexpr Index N = packet_size<T>;
  Index i = 0;
  for (; i + N <= n; i += N) store(out + i, f(load(x + i), i));
  for (; i < n; ++i) out[i] = f(x[i], i);
}

// out[i] = f(x[i], y[i], i) over n values (packets, then scalars).
template <typename T, typename F>
void map2_run(const T* x, const T* y, T* out, Index n, F f) {
  constexpr Index N = packet_size<T>;
  Index i = 0;
  for (; i + N <= n; i += N) store(out + i, f(load(x + i), load(y + i), i));
  for (; i < n; ++i) out[i] = f(x[i], y[i], i);
}

}  // namespace normlayers::detail::kernels
