// SPDX-License-Identifier: MIT
#pragma once

// Helpers shared by the tests: typed-test configurations, random data,
// conversion between Eigen tensors (either storage order) and logical
// row-major vectors, tolerant comparisons, and central-difference gradients.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

#include "reference.hpp"

namespace test {

using Index = Eigen::Index;
using Vec = std::vector<double>;

template <typename Scalar, int Layout>
struct Config {
  using scalar = Scalar;
  static constexpr int layout = Layout;
  // Agreement with the double reference: float to 1e-5 relative (PyTorch's
  // float tolerance), double to rounding.
  static constexpr double tol = std::is_same_v<Scalar, float> ? 1e-5 : 1e-11;
  // A parameter gradient is a sum over many values; where the reference
  // gives the sum of its terms' magnitudes, the gradient may also err by this
  // much of that sum (see expect_grads_close).
  static constexpr double sum_tol = 4 * std::numeric_limits<Scalar>::epsilon();
};
using Configs =
    ::testing::Types<Config<float, Eigen::RowMajor>, Config<float, Eigen::ColMajor>,
                     Config<double, Eigen::RowMajor>, Config<double, Eigen::ColMajor>>;

struct ConfigNames {
  template <typename C>
  static std::string GetName(int) {
    return std::string(std::is_same_v<typename C::scalar, float> ? "float" : "double") +
           (C::layout == Eigen::RowMajor ? "_row" : "_col");
  }
};

inline Vec random_vec(std::size_t n, unsigned seed, double mean = 0.0, double stddev = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(mean, stddev);
  Vec v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

template <std::size_t Rank>
Index numel(const std::array<Index, Rank>& dims) {
  Index n = 1;
  for (Index d : dims) n *= d;
  return n;
}

// The dims as the reference functions take them.
template <std::size_t Rank>
std::vector<long> dims_vec(const std::array<Index, Rank>& dims) {
  return std::vector<long>(dims.begin(), dims.end());
}

// The trailing k dims (a LayerNorm/RMSNorm normalized_shape).
template <std::size_t Rank>
std::vector<Index> trailing_dims(const std::array<Index, Rank>& dims, std::size_t k) {
  return std::vector<Index>(dims.end() - std::ptrdiff_t(k), dims.end());
}

// Visits every element of t in logical row-major order: f(flat, multi_index).
template <typename T, typename F>
void for_each_logical(const T& t, F f) {
  constexpr int rank = Eigen::internal::traits<T>::NumDimensions;
  std::array<Index, rank> idx{};
  const Index n = t.size();
  for (Index flat = 0; flat < n; ++flat) {
    f(flat, idx);
    for (int k = rank - 1; k >= 0; --k) {
      if (++idx[std::size_t(k)] < t.dimensions()[std::size_t(k)]) break;
      idx[std::size_t(k)] = 0;
    }
  }
}

template <typename T>
Vec logical(const T& t) {
  Vec v(std::size_t(t.size()));
  for_each_logical(t, [&](Index flat, const auto& idx) { v[std::size_t(flat)] = double(t(idx)); });
  return v;
}

template <typename T>
void set_logical(T& t, const Vec& v) {
  using S = typename Eigen::internal::traits<T>::Scalar;
  for_each_logical(t, [&](Index flat, const auto& idx) { t(idx) = S(v[std::size_t(flat)]); });
}

template <typename Scalar, int Layout, std::size_t Rank>
Eigen::Tensor<Scalar, int(Rank), Layout> make_tensor(const std::array<Index, Rank>& dims,
                                                     const Vec& values) {
  Eigen::Tensor<Scalar, int(Rank), Layout> t(dims);
  set_logical(t, values);
  return t;
}

template <typename Scalar>
Eigen::Tensor<Scalar, 1> make_vector(const Vec& values) {
  Eigen::Tensor<Scalar, 1> t(Index(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) t(Index(i)) = Scalar(values[i]);
  return t;
}

template <typename T>
Vec to_vec(const T& t) {
  Vec v(std::size_t(t.size()));
  for (Index i = 0; i < t.size(); ++i) v[std::size_t(i)] = double(t.data()[i]);
  return v;
}

// |got - want| <= atol + rtol * |want| everywhere, or <= scale_tol *
// scale[i] where a scale is given; reports the worst element.
inline ::testing::AssertionResult all_close(const Vec& got, const Vec& want, double rtol,
                                            double atol, const Vec& scale = {},
                                            double scale_tol = 0) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  std::size_t bad = 0, worst = 0;
  double worst_excess = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    const double allowed = std::max(atol + rtol * std::abs(want[i]),
                                    scale.empty() ? 0.0 : scale_tol * scale[i]);
    if (!(err <= allowed)) {
      ++bad;
      if (!(err - allowed <= worst_excess)) worst_excess = err - allowed, worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements differ; worst at " << worst << ": got "
         << got[worst] << ", want " << want[worst] << " (rtol " << rtol << ", atol " << atol << ")";
}

// Runs write(out) with a float row-major out of `dims` at the start of an
// aligned buffer one element longer (offset 0) and one element into it
// (offset 1: streaming stores then meet a head and a tail), then
// check(logical(out)), and checks that the buffer's element outside out
// stays 0.
template <std::size_t Rank, typename Write, typename Check>
void expect_at_offsets(const std::array<Index, Rank>& dims, Write write, Check check) {
  const std::size_t n = std::size_t(numel(dims));
  for (std::size_t offset : {0, 1}) {
    SCOPED_TRACE(::testing::Message() << "output offset " << offset);
    Eigen::Tensor<float, 1> buf{Index(n + 1)};  // aligned storage
    buf.setZero();
    Eigen::TensorMap<Eigen::Tensor<float, int(Rank), Eigen::RowMajor>> out(buf.data() + offset,
                                                                          dims);
    write(out);
    check(logical(out));
    EXPECT_EQ(buf(offset ? 0 : Index(n)), 0.f);  // nothing written outside the output
  }
}

// expect_at_offsets of forward(y), y checked against `want`.
template <std::size_t Rank, typename Forward>
void expect_forward_at_offsets(const std::array<Index, Rank>& dims, Forward forward,
                               const Vec& want, double rtol, double atol) {
  expect_at_offsets(dims, forward, [&](const Vec& y) {
    EXPECT_TRUE(all_close(y, want, rtol, atol));
  });
}

inline double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Central differences of a scalar function at x (the gradient check of
// torch.autograd.gradcheck: step 1e-6).
inline Vec numeric_gradient(const std::function<double(const Vec&)>& f, Vec x,
                            double step = 1e-6) {
  Vec g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + step;
    const double up = f(x);
    x[i] = saved - step;
    const double down = f(x);
    x[i] = saved;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Gradcheck tolerances (torch.autograd.gradcheck's defaults).
inline constexpr double grad_atol = 1e-5;
inline constexpr double grad_rtol = 1e-3;

// ---- modules: every layer has forward(x), backward(x, dy), has_weight(), has_bias(),
// weight(), bias(), weight_grad(), bias_grad() (the last four throw when absent).

// Random affine parameters where `m` has them: weight ~ N(1, 0.5) from `seed`,
// bias ~ N(0, 1) from seed + 1.
template <typename Module>
void set_random_params(Module& m, unsigned seed) {
  if (m.has_weight()) {
    using P = typename std::decay_t<decltype(m.weight())>::Scalar;
    m.weight() = make_vector<P>(random_vec(std::size_t(m.weight().size()), seed, 1.0, 0.5));
  }
  if (m.has_bias()) {
    using P = typename std::decay_t<decltype(m.bias())>::Scalar;
    m.bias() = make_vector<P>(random_vec(std::size_t(m.bias().size()), seed + 1));
  }
}

// Random running statistics: mean ~ N(0, 1) from `seed`, var = 0.5 + N(0, 1)^2 from seed + 1.
template <typename Module>
void set_random_running_stats(Module& m, unsigned seed) {
  using P = typename std::decay_t<decltype(m.running_mean())>::Scalar;
  const std::size_t n = std::size_t(m.running_mean().size());
  m.running_mean() = make_vector<P>(random_vec(n, seed));
  Vec var = random_vec(n, seed + 1);
  for (double& v : var) v = 0.5 + v * v;
  m.running_var() = make_vector<P>(var);
}

// Checks dx, and weight_grad()/bias_grad() of `m` where expected, against
// `want` (.dx, .dgamma, .dbeta). A module whose parameters are not the expected
// ones fails here or throws.
// With sum_tol > 0 and want.dgamma_terms/dbeta_terms filled, a parameter
// gradient may also err by sum_tol times the sum of its terms' magnitudes:
// rounding a sum can err by a few units of that (epsilon of the type),
// whatever the order of the sum, so a gradient that cancels (a random dy
// sums to ~sqrt(n) of its n terms) cannot be held to rtol of itself.
// Measured, float BatchNorm, 1800 random cases of 3x5x257, 16x8x7x7 and
// 5x70x7x7 (49 800 dgamma values), by the library's channel blocks and by
// its short-run pieces: errors up to 2.1 and 1.2 epsilons of that sum, 7 and
// 9 values outside 1e-5 relative.
template <typename Module, typename Grads>
void expect_grads_close(const Vec& dx, const Module& m, const Grads& want, bool has_weight,
                        bool has_bias, double rtol, double atol, double dx_atol = -1,
                        double sum_tol = 0) {
  EXPECT_EQ(m.has_weight(), has_weight);
  EXPECT_EQ(m.has_bias(), has_bias);
  EXPECT_TRUE(all_close(dx, want.dx, rtol, dx_atol < 0 ? atol : dx_atol)) << "dx";
  if (has_weight) {
    EXPECT_TRUE(all_close(to_vec(m.weight_grad()), want.dgamma, rtol, atol, want.dgamma_terms,
                          sum_tol))
        << "weight_grad";
  }
  if (has_bias) {
    EXPECT_TRUE(
        all_close(to_vec(m.bias_grad()), want.dbeta, rtol, atol, want.dbeta_terms, sum_tol))
        << "bias_grad";
  }
}

// The forward and backward of `rows` rows of d values through `m` (a float
// LayerNorm or RMSNorm over {d}, centered: LayerNorm) against the double
// reference, and every row's input gradient bitwise equal to that of the
// same row backpropagated alone: the backward takes rows a group at a time
// (kernels::rows_at_once, then single rows), and a row's result must not
// depend on its group.
template <typename Module>
void expect_rows_backward_alone(Module& m, Index rows, Index d, const Vec& xv, const Vec& dyv,
                                bool centered) {
  const auto x = make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{rows, d}, xv);
  const auto dy = make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{rows, d}, dyv);
  const Vec gamma = to_vec(m.weight());
  m.zero_grad();
  m.forward(x);
  const Vec dx = logical(m.backward(x, dy));
  const auto want = reference::row_norm_backward(logical(x), logical(dy), std::size_t(d), gamma,
                                                 double(m.eps()), centered);
  expect_grads_close(dx, m, want, true, centered, 1e-4, 1e-4);
  std::size_t differ = 0;
  for (Index r = 0; r < rows; ++r) {
    const auto at = [&](const Vec& v) {
      const auto first = v.begin() + r * d;
      return make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{1, d},
                                                 Vec(first, first + d));
    };
    m.forward(at(xv));
    const Vec alone = logical(m.backward(at(xv), at(dyv)));
    for (Index i = 0; i < d; ++i)
      differ += float(alone[std::size_t(i)]) != float(dx[std::size_t(r * d + i)]);
  }
  EXPECT_EQ(differ, 0u);
}

// expect_at_offsets of a fresh forward then backward(x, dy, dx) of module m
// (float), dx and the parameter gradients checked against `want` (rtol
// 1e-5, dx atol 1e-5, parameter gradients atol param_atol).
template <std::size_t Rank, typename Module, typename X, typename Grads>
void expect_backward_at_offsets(const std::array<Index, Rank>& dims, Module& m, const X& x,
                                const X& dy, const Grads& want, double param_atol) {
  expect_at_offsets(
      dims,
      [&](auto& dx) {
        m.zero_grad();
        m.forward(x);
        m.backward(x, dy, dx);
      },
      [&](const Vec& dx) {
        expect_grads_close(dx, m, want, m.has_weight(), m.has_bias(), 1e-5, param_atol, 1e-5);
      });
}

// Gradient check in double by central differences (torch.autograd.gradcheck:
// step 1e-6, rtol grad_rtol, atol grad_atol) of loss = <forward(x), g> for dx,
// weight_grad and bias_grad, with x = random_vec(n, seed), g = random_vec(n, seed + 1).
// make() returns a freshly configured module of double (options, parameters,
// running statistics, mode), the same on every call; the check perturbs x and
// the parameters around make()'s values.
template <int Layout, std::size_t Rank, typename MakeModule>
void gradcheck_module(const std::array<Index, Rank>& dims, MakeModule make, bool has_weight,
                      bool has_bias, unsigned seed) {
  const std::size_t n = std::size_t(numel(dims));
  const Vec x0 = random_vec(n, seed), g = random_vec(n, seed + 1);
  const auto proto = make();
  const Vec gamma0 = has_weight ? to_vec(proto.weight()) : Vec{};
  const Vec beta0 = has_bias ? to_vec(proto.bias()) : Vec{};
  auto loss = [&](const Vec& xv, const Vec& gamma, const Vec& beta) {
    auto m = make();
    if (has_weight) m.weight() = make_vector<double>(gamma);
    if (has_bias) m.bias() = make_vector<double>(beta);
    return dot(logical(m.forward(make_tensor<double, Layout>(dims, xv))), g);
  };
  auto m = make();
  const auto x = make_tensor<double, Layout>(dims, x0);
  m.forward(x);
  const auto dx = m.backward(x, make_tensor<double, Layout>(dims, g));
  struct {
    Vec dx, dgamma, dbeta;
    Vec dgamma_terms, dbeta_terms;  // not known here: empty
  } num;
  num.dx = numeric_gradient([&](const Vec& v) { return loss(v, gamma0, beta0); }, x0);
  if (has_weight) {
    num.dgamma = numeric_gradient([&](const Vec& v) { return loss(x0, v, beta0); }, gamma0);
  }
  if (has_bias) {
    num.dbeta = numeric_gradient([&](const Vec& v) { return loss(x0, gamma0, v); }, beta0);
  }
  expect_grads_close(logical(dx), m, num, has_weight, has_bias, grad_rtol, grad_atol);
}

// Runs `f` and checks it throws E with every piece of `parts` in its message.
template <typename E, typename F>
::testing::AssertionResult throws_with(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const std::exception& e) {
    if (typeid(e) != typeid(E))
      return ::testing::AssertionFailure() << "threw " << typeid(e).name() << " instead of "
                                           << typeid(E).name() << ": " << e.what();
    const std::string msg = e.what();
    for (const auto& p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << p << '"';
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace test

namespace test {

// For a tensor normalized over its trailing k dims: where each row (logical,
// row-major index over the leading dims) sits in the library's saved
// statistics, which follow the input's storage order of the leading dims.
template <std::size_t Rank>
std::vector<std::size_t> row_positions(const std::array<Index, Rank>& dims, std::size_t k,
                                       bool row_major) {
  const std::size_t lead = Rank - k;
  std::size_t rows = 1;
  for (std::size_t i = 0; i < lead; ++i) rows *= std::size_t(dims[i]);
  std::vector<std::size_t> pos(rows);
  std::vector<Index> idx(lead, 0);
  for (std::size_t r = 0; r < rows; ++r) {
    std::size_t p = 0;
    if (row_major) {
      p = r;
    } else {
      for (std::size_t i = lead; i-- > 0;) p = p * std::size_t(dims[i]) + std::size_t(idx[i]);
    }
    pos[r] = p;
    for (std::size_t i = lead; i-- > 0;) {
      if (++idx[i] < dims[i]) break;
      idx[i] = 0;
    }
  }
  return pos;
}

template <typename T>
Vec gather(const T& saved, const std::vector<std::size_t>& positions) {
  Vec v(positions.size());
  for (std::size_t i = 0; i < positions.size(); ++i) v[i] = double(saved.data()[positions[i]]);
  return v;
}

}  // namespace test

namespace test {

// Where statistic (n, k) of an (N, K) grid (reference order n*K + k) sits in
// the library's saved statistics: n*K + k row-major, k*N + n column-major.
inline std::vector<std::size_t> grid_positions(std::size_t N, std::size_t K, bool row_major) {
  std::vector<std::size_t> pos(N * K);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t k = 0; k < K; ++k) pos[n * K + k] = row_major ? n * K + k : k * N + n;
  return pos;
}

}  // namespace test
