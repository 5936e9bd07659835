// SPDX-License-Identifier: MIT
#include <normlayers/normlayers.hpp>

#include <gtest/gtest.h>

#include "reference.hpp"
#include "test_support.hpp"

namespace nl = normlayers;
using test::Index;
using test::Vec;

namespace {

template <typename C>
class LayerNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(LayerNormTest, test::Configs, test::ConfigNames);

struct Case {
  bool affine;
  bool bias;
};
const Case kOptionCases[] = {{true, true}, {true, false}, {false, false}};

nl::LayerNormOptions options_of(Case c) {
  nl::LayerNormOptions o;
  o.elementwise_affine = c.affine;
  o.bias = c.bias;
  return o;
}

// A module over normalized_shape `ns` with random parameters.
template <typename S>
nl::LayerNorm<S> make_ln(const nl::Shape& ns, Case c, unsigned seed) {
  nl::LayerNorm<S> ln(ns, options_of(c));
  test::set_random_params(ln, seed);
  return ln;
}

::testing::Message describe(std::size_t rank, std::size_t k, Case c) {
  return ::testing::Message() << "rank " << rank << ", k " << k << ", affine " << c.affine
                              << ", bias " << c.bias;
}

// Forward, saved statistics and backward of the module against the double reference.
template <typename C, std::size_t Rank>
void check_against_reference(const std::array<Index, Rank>& dims, std::size_t k, Case c,
                             unsigned seed) {
  using S = typename C::scalar;
  SCOPED_TRACE(describe(Rank, k, c));
  const nl::Shape ns = test::trailing_dims(dims, k);
  const std::size_t d = std::size_t(nl::detail::product(ns));
  auto ln = make_ln<S>(ns, c, seed + 2);
  auto x = test::make_tensor<S, C::layout>(dims, test::random_vec(size_t(test::numel(dims)), seed));
  auto dy = test::make_tensor<S, C::layout>(dims, test::random_vec(size_t(test::numel(dims)), seed + 1));
  const Vec gamma = ln.has_weight() ? test::to_vec(ln.weight()) : Vec{};
  const Vec beta = ln.has_bias() ? test::to_vec(ln.bias()) : Vec{};

  auto y = ln.forward(x);
  const auto ref = reference::row_norm_forward(test::logical(x), d, gamma, beta, 1e-5, true);
  EXPECT_TRUE(test::all_close(test::logical(y), ref.y, C::tol, C::tol));
  const auto pos = test::row_positions(dims, k, C::layout == Eigen::RowMajor);
  EXPECT_TRUE(test::all_close(test::gather(ln.saved_mean(), pos), ref.mean, C::tol, C::tol));
  EXPECT_TRUE(test::all_close(test::gather(ln.saved_rstd(), pos), ref.rstd, C::tol, C::tol));

  auto dx = ln.backward(x, dy);
  const auto grads =
      reference::row_norm_backward(test::logical(x), test::logical(dy), d, gamma, 1e-5, true);
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)): its rounding error
  // scales with rstd, which eps alone sets for D = 1 (rstd = 316, true dx = 0).
  const double dx_atol = C::tol * std::max(1.0, test::max_abs(ref.rstd));
  test::expect_grads_close(test::logical(dx), ln, grads, c.affine, c.bias, C::tol, C::tol,
                           dx_atol);
}

TYPED_TEST(LayerNormTest, MatchesReferenceForEveryRankAndOption) {
  for (Case c : kOptionCases) {
    check_against_reference<TypeParam>(std::array<Index, 2>{6, 33}, 1, c, 1);
    check_against_reference<TypeParam>(std::array<Index, 2>{3, 1500}, 1, c, 2);  // > one sum block
    check_against_reference<TypeParam>(std::array<Index, 3>{2, 5, 7}, 1, c, 3);
    check_against_reference<TypeParam>(std::array<Index, 3>{2, 5, 7}, 2, c, 4);
    check_against_reference<TypeParam>(std::array<Index, 4>{2, 3, 4, 5}, 2, c, 5);
    check_against_reference<TypeParam>(std::array<Index, 4>{2, 3, 4, 5}, 3, c, 6);
    check_against_reference<TypeParam>(std::array<Index, 5>{2, 1, 3, 2, 4}, 3, c, 7);
    check_against_reference<TypeParam>(std::array<Index, 5>{3, 2, 1, 2, 5}, 4, c, 8);
    check_against_reference<TypeParam>(std::array<Index, 3>{2, 3, 1}, 1, c, 9);  // D = 1
    // Column-major: 257 statistics side by side, lanes cut 256 + 1.
    check_against_reference<TypeParam>(std::array<Index, 2>{257, 6}, 1, c, 10);
  }
}

// Gradient check in double by central differences (step 1e-6, atol 1e-5,
// rtol 1e-3) of loss = <LayerNorm(x), g> for dx, dweight and dbias.
template <int Layout, std::size_t Rank>
void gradcheck(const std::array<Index, Rank>& dims, std::size_t k, Case c, unsigned seed) {
  SCOPED_TRACE(describe(Rank, k, c));
  const nl::Shape ns = test::trailing_dims(dims, k);
  test::gradcheck_module<Layout>(
      dims, [&] { return make_ln<double>(ns, c, seed + 2); }, c.affine, c.bias, seed);
}

template <int Layout>
void gradcheck_all() {
  for (Case c : kOptionCases) {
    gradcheck<Layout>(std::array<Index, 2>{3, 7}, 1, c, 11);
    gradcheck<Layout>(std::array<Index, 3>{2, 3, 4}, 1, c, 12);
    gradcheck<Layout>(std::array<Index, 3>{2, 3, 4}, 2, c, 13);
    gradcheck<Layout>(std::array<Index, 4>{2, 2, 3, 2}, 3, c, 14);
    gradcheck<Layout>(std::array<Index, 5>{2, 1, 2, 3, 2}, 3, c, 15);
  }
}
TEST(LayerNormGradcheck, RowMajor) { gradcheck_all<Eigen::RowMajor>(); }
TEST(LayerNormGradcheck, ColMajor) { gradcheck_all<Eigen::ColMajor>(); }

// Rows with mean 1e4 and std 1: float must still normalize to 1e-2.
TEST(LayerNormNumerics, LargeMeanSmallSpreadInFloat) {
  const Index rows = 4, d = 4096;
  const Vec xv = test::random_vec(std::size_t(rows * d), 21, 1e4, 1.0);
  for (int layout : {int(Eigen::RowMajor), int(Eigen::ColMajor)}) {
    nl::LayerNorm<float> ln({d});
    Vec got;
    if (layout == Eigen::RowMajor) {
      got = test::logical(ln.forward(test::make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{rows, d}, xv)));
    } else {
      got = test::logical(ln.forward(test::make_tensor<float, Eigen::ColMajor>(std::array<Index, 2>{rows, d}, xv)));
    }
    const Vec rounded = test::logical(test::make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{rows, d}, xv));
    const auto ref = reference::row_norm_forward(rounded, std::size_t(d), {}, {}, 1e-5, true);
    EXPECT_TRUE(test::all_close(got, ref.y, 0.0, 1e-2)) << "layout " << layout;
  }
}

// The test of the test: the textbook one-pass E[x^2] - E[x]^2 in float fails
// the check above by orders of magnitude, so the check can fail.
TEST(LayerNormNumerics, TextbookVarianceFailsTheSameCheck) {
  const std::size_t d = 4096;
  const Vec xv = test::random_vec(d, 21, 1e4, 1.0);
  std::vector<float> xf(xv.begin(), xv.end());
  float sum = 0, sum_sq = 0;
  for (float v : xf) sum += v, sum_sq += v * v;
  const float mean = sum / float(d), var = sum_sq / float(d) - mean * mean;
  Vec naive(d);
  for (std::size_t i = 0; i < d; ++i) naive[i] = double((xf[i] - mean) / std::sqrt(var + 1e-5f));
  const auto ref = reference::row_norm_forward(Vec(xf.begin(), xf.end()), d, {}, {}, 1e-5, true);
  double err = 0;
  for (std::size_t i = 0; i < d; ++i) err = std::max(err, std::isnan(naive[i]) ? 1e30 : std::abs(naive[i] - ref.y[i]));
  EXPECT_GT(err, 1.0);
}

// The one-pass moments shift by the mean of a row's first values; when those
// sit far from the row's mean (here 16 zeros before 16368 values near 1000:
// s2/M2 ~ 1000, 10 bits of cancellation) the centered pass must take over.
// Rows 5: four at once, then one alone.
TEST(LayerNormNumerics, OutlyingFirstValuesKeepFloatPrecision) {
  const Index rows = 5, d = 16384;
  Vec xv = test::random_vec(std::size_t(rows * d), 23, 1000.0, 1.0);
  for (Index r = 0; r < rows; ++r)
    for (Index i = 0; i < 16; ++i) xv[std::size_t(r * d + i)] = 0.0;
  const auto x = test::make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{rows, d}, xv);
  nl::LayerNorm<float> ln({d});
  const Vec got = test::logical(ln.forward(x));
  const auto ref = reference::row_norm_forward(test::logical(x), std::size_t(d), {}, {}, 1e-5, true);
  EXPECT_TRUE(test::all_close(got, ref.y, 1e-5, 1e-5));
  EXPECT_TRUE(test::all_close(test::to_vec(ln.saved_rstd()), ref.rstd, 1e-6, 0.0));
}

// Rows of up to 256 values take their moments a packet of rows at a time:
// 37 rows are two full packets (AVX-512 float) and a part. Every row must
// get the same bits as when normalized alone, and match the reference; in
// rows 3 and 20 the first 16 values sit far from the rest, so that their
// shifted sums cancel and the centered pass takes over for them only.
// Lengths: shorter than a packet, a packet and a tail, the longest batched
// one and the next (one row at a time).
TEST(LayerNormNumerics, ShortRowsGetTheirOwnResultInAnyBatch) {
  const Index rows = 37;
  for (Index d : {Index(7), Index(64), Index(200), Index(256), Index(257)}) {
    SCOPED_TRACE(::testing::Message() << "rows of " << d);
    Vec xv = test::random_vec(std::size_t(rows * d), 31, 3.0, 2.0);
    for (Index r : {Index(3), Index(20)})
      for (Index i = 0; i < std::min(d, Index(16)); ++i) xv[std::size_t(r * d + i)] = -3000.0;
    const auto x = test::make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{rows, d}, xv);
    nl::LayerNorm<float> ln({d});
    test::set_random_params(ln, 32);
    const Vec y = test::logical(ln.forward(x));
    const Vec mean = test::to_vec(ln.saved_mean()), rstd = test::to_vec(ln.saved_rstd());
    const auto ref = reference::row_norm_forward(test::logical(x), std::size_t(d),
                                                 test::to_vec(ln.weight()),
                                                 test::to_vec(ln.bias()), 1e-5, true);
    EXPECT_TRUE(test::all_close(y, ref.y, 1e-5, 1e-5));
    EXPECT_TRUE(test::all_close(rstd, ref.rstd, 1e-5, 0.0));
    std::size_t differ = 0;
    for (Index r = 0; r < rows; ++r) {
      const auto first = xv.begin() + r * d;
      const auto row = test::make_tensor<float, Eigen::RowMajor>(std::array<Index, 2>{1, d},
                                                                 Vec(first, first + d));
      const Vec alone = test::logical(ln.forward(row));
      differ += ln.saved_mean()(0) != float(mean[std::size_t(r)]);
      differ += ln.saved_rstd()(0) != float(rstd[std::size_t(r)]);
      for (Index i = 0; i < d; ++i)
        differ += float(alone[std::size_t(i)]) != float(y[std::size_t(r * d + i)]);
    }
    EXPECT_EQ(differ, 0u);
  }
}

// The backward's rows alone and in groups: 37 rows (groups of 4 or 2, then
// a single row) of each length as above, with rows 3 and 20 offset far from
// the rest.
TEST(LayerNormNumerics, BackwardRowsGetTheirOwnResultInAnyGroup) {
  const Index rows = 37;
  for (Index d : {Index(7), Index(64), Index(200), Index(256), Index(257)}) {
    SCOPED_TRACE(::testing::Message() << "rows of " << d);
    Vec xv = test::random_vec(std::size_t(rows * d), 33, 3.0, 2.0);
    for (Index i = 0; i < d; ++i) xv[std::size_t(3 * d + i)] += 1000.0;
    for (Index i = 0; i < d; ++i) xv[std::size_t(20 * d + i)] -= 500.0;
    nl::LayerNorm<float> ln({d});
    test::set_random_params(ln, 34);
    test::expect_rows_backward_alone(ln, rows, d, xv, test::random_vec(xv.size(), 35), true);
  }
}

TYPED_TEST(LayerNormTest, InvariantToPositiveAffineMapOfInput) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 3> dims{3, 4, 50};
  nl::LayerNormOptions o;
  o.eps = 0;  // with eps > 0 the invariance holds only up to eps / var
  nl::LayerNorm<S> ln({4, 50}, o);
  const Vec xv = test::random_vec(600, 31);
  Vec xt(xv.size());
  for (std::size_t i = 0; i < xv.size(); ++i) xt[i] = 3.7 * xv[i] - 2.1;
  const Vec y1 = test::logical(ln.forward(test::make_tensor<S, TypeParam::layout>(dims, xv)));
  const Vec y2 = test::logical(ln.forward(test::make_tensor<S, TypeParam::layout>(dims, xt)));
  EXPECT_TRUE(test::all_close(y2, y1, TypeParam::tol, TypeParam::tol));
}

TYPED_TEST(LayerNormTest, InputGradientSumsToZeroPerRow) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 2> dims{5, 300};
  nl::LayerNorm<S> ln({300});
  test::set_random_params(ln, 41);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(1500, 43));
  ln.forward(x);
  const Vec dx = test::logical(ln.backward(x, test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(1500, 44))));
  for (std::size_t r = 0; r < 5; ++r) {
    double sum = 0, mag = 0;
    for (std::size_t j = 0; j < 300; ++j) sum += dx[r * 300 + j], mag += std::abs(dx[r * 300 + j]);
    EXPECT_LE(std::abs(sum), TypeParam::tol * mag) << "row " << r;
  }
}

TYPED_TEST(LayerNormTest, InPlaceAndTensorMapMatchOutOfPlace) {
  using S = typename TypeParam::scalar;
  using Tensor = Eigen::Tensor<S, 3, TypeParam::layout>;
  const std::array<Index, 3> dims{2, 3, 40};
  nl::LayerNorm<S> ln({3, 40});
  test::set_random_params(ln, 51);
  const Tensor x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(240, 53));
  const Tensor dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(240, 54));
  const Tensor y = ln.forward(x);
  const Tensor dx = ln.backward(x, dy);
  const Vec dgamma = test::to_vec(ln.weight_grad()), dbeta = test::to_vec(ln.bias_grad());

  Tensor inplace = x;
  ln.forward(inplace, inplace);
  EXPECT_EQ(test::to_vec(inplace), test::to_vec(y));
  Tensor grad = dy;
  ln.zero_grad();
  ln.backward(x, grad, grad);
  EXPECT_EQ(test::to_vec(grad), test::to_vec(dx));
  EXPECT_EQ(test::to_vec(ln.weight_grad()), dgamma);
  EXPECT_EQ(test::to_vec(ln.bias_grad()), dbeta);

  std::vector<S> xbuf(x.data(), x.data() + x.size()), ybuf(xbuf.size());
  Eigen::TensorMap<const Tensor> xmap(xbuf.data(), dims);
  Eigen::TensorMap<Tensor> ymap(ybuf.data(), dims);
  ln.forward(xmap, ymap);
  EXPECT_EQ(Vec(ybuf.begin(), ybuf.end()), test::to_vec(y));
  const auto y_from_map = ln.forward(xmap);
  EXPECT_EQ(test::to_vec(y_from_map), test::to_vec(y));
}

TYPED_TEST(LayerNormTest, GradientsAccumulateUntilZeroGrad) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 2> dims{4, 16};
  nl::LayerNorm<S> ln({16});
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(64, 61));
  const auto dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(64, 62));
  ln.forward(x);
  ln.backward(x, dy);
  const Vec once = test::to_vec(ln.weight_grad());
  ln.backward(x, dy);
  const Vec twice = test::to_vec(ln.weight_grad());
  for (std::size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2 * once[i], 4 * TypeParam::tol * (1 + std::abs(once[i])));
  ln.zero_grad();
  EXPECT_EQ(test::max_abs(test::to_vec(ln.weight_grad())), 0.0);
  EXPECT_EQ(test::max_abs(test::to_vec(ln.bias_grad())), 0.0);
}

TYPED_TEST(LayerNormTest, FunctionalMatchesModule) {
  using S = typename TypeParam::scalar;
  using Tensor = Eigen::Tensor<S, 3, TypeParam::layout>;
  const std::array<Index, 3> dims{3, 2, 24};
  nl::LayerNorm<S> ln({2, 24});
  test::set_random_params(ln, 71);
  const Tensor x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(144, 73));
  const Tensor dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(144, 74));
  const Tensor y = ln.forward(x);
  const Tensor dx = ln.backward(x, dy);

  Tensor yf(dims), dxf(dims);
  Eigen::Tensor<S, 1> mean(3), rstd(3), dw(48), db(48);
  dw.setZero();
  db.setZero();
  nl::layer_norm_forward(x, yf, {2, 24}, ln.weight(), ln.bias(), 1e-5, mean, rstd);
  nl::layer_norm_backward(x, dy, dxf, {2, 24}, ln.weight(), mean, rstd, dw, db);
  EXPECT_EQ(test::to_vec(yf), test::to_vec(y));
  EXPECT_EQ(test::to_vec(mean), test::to_vec(ln.saved_mean()));
  EXPECT_EQ(test::to_vec(rstd), test::to_vec(ln.saved_rstd()));
  EXPECT_EQ(test::to_vec(dxf), test::to_vec(dx));
  EXPECT_EQ(test::to_vec(dw), test::to_vec(ln.weight_grad()));
  EXPECT_EQ(test::to_vec(db), test::to_vec(ln.bias_grad()));
}

TEST(LayerNormModule, DefaultsFollowPyTorch) {
  nl::LayerNorm<float> ln({2, 3});
  EXPECT_EQ(ln.eps(), 1e-5);
  EXPECT_TRUE(ln.has_weight());
  EXPECT_TRUE(ln.has_bias());
  EXPECT_TRUE(ln.is_training());
  EXPECT_EQ(test::to_vec(ln.weight()), Vec(6, 1.0));
  EXPECT_EQ(test::to_vec(ln.bias()), Vec(6, 0.0));
  std::vector<std::string> names;
  ln.for_each_parameter([&](std::string_view name, auto& t) {
    names.emplace_back(name);
    EXPECT_EQ(t.size(), 6);
  });
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
  ln.eval();
  EXPECT_FALSE(ln.is_training());
  ln.train();
  EXPECT_TRUE(ln.is_training());
  ln.weight().setConstant(3.f);
  ln.reset_parameters();
  EXPECT_EQ(test::to_vec(ln.weight()), Vec(6, 1.0));
}

TEST(LayerNormModule, SameResultInTrainAndEval) {
  const std::array<Index, 2> dims{3, 10};
  nl::LayerNorm<double> ln({10});
  const auto x = test::make_tensor<double, Eigen::RowMajor>(dims, test::random_vec(30, 81));
  const Vec train = test::to_vec(ln.forward(x));
  ln.eval();
  EXPECT_EQ(test::to_vec(ln.forward(x)), train);
}

// ---- errors: type, message, and nothing changed

struct Snapshot {
  Vec weight, bias, weight_grad, bias_grad, mean, rstd;
  bool saved;
  template <typename S>
  explicit Snapshot(const nl::LayerNorm<S>& ln)
      : weight(test::to_vec(ln.weight())),
        bias(test::to_vec(ln.bias())),
        weight_grad(test::to_vec(ln.weight_grad())),
        bias_grad(test::to_vec(ln.bias_grad())),
        mean(test::to_vec(ln.saved_mean())),
        rstd(test::to_vec(ln.saved_rstd())),
        saved(ln.has_saved_statistics()) {}
  bool operator==(const Snapshot& o) const {
    return weight == o.weight && bias == o.bias && weight_grad == o.weight_grad &&
           bias_grad == o.bias_grad && mean == o.mean && rstd == o.rstd && saved == o.saved;
  }
};

class LayerNormErrors : public ::testing::Test {
 protected:
  using T2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  LayerNormErrors() : ln({8}), x(4, 8), dy(4, 8) {
    x.setRandom();
    dy.setRandom();
    ln.weight().setRandom();
    ln.bias().setRandom();
    ln.forward(x);
    ln.backward(x, dy);  // non-zero gradients and saved statistics to protect
  }
  nl::LayerNorm<float> ln;
  T2 x, dy;
};

TEST_F(LayerNormErrors, WrongTrailingDims) {
  const Snapshot before(ln);
  T2 bad(4, 7);
  bad.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { ln.forward(bad); },
      {"normlayers::LayerNorm", "input has dims [4, 7]", "expected trailing dims [8]"}));
  EXPECT_TRUE(Snapshot(ln) == before);
}

TEST_F(LayerNormErrors, RankTooSmall) {
  nl::LayerNorm<float> ln2({4, 8});
  ln2.weight().setRandom();
  const Snapshot before(ln2);
  Eigen::Tensor<float, 1> small(8);
  small.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { ln2.forward(small); }, {"normlayers::LayerNorm", "input has dims [8]", "[4, 8]"}));
  EXPECT_TRUE(Snapshot(ln2) == before);
}

TEST_F(LayerNormErrors, NegativeOrNanEps) {
  nl::LayerNormOptions o;
  o.eps = -1;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::LayerNorm<float> bad({8}, o); }, {"normlayers::LayerNorm", "eps is -1", ">= 0"}));
  o.eps = std::nan("");
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::LayerNorm<float> bad({8}, o); }, {"normlayers::LayerNorm", "eps is nan"}));
  std::vector<float> w(8, 1.f), y(32);
  Eigen::TensorMap<T2> ymap(y.data(), 4, 8);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::layer_norm_forward(x, ymap, {8}, w, {}, -1e-3); },
      {"normlayers::layer_norm_forward", "eps is -0.001"}));
  EXPECT_EQ(y, std::vector<float>(32, 0.f));
}

TEST_F(LayerNormErrors, BadNormalizedShape) {
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::LayerNorm<float> bad({}); }, {"normlayers::LayerNorm", "normalized_shape is empty"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::LayerNorm<float> bad({4, 0}); },
      {"normlayers::LayerNorm", "normalized_shape is [4, 0]", "positive"}));
}

TEST_F(LayerNormErrors, OutputBufferOfWrongDims) {
  const Snapshot before(ln);
  T2 y(4, 9);
  y.setConstant(7.f);
  x(0, 0) += 1.f;  // a forward that ran would change the saved statistics
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { ln.forward(x, y); }, {"normlayers::LayerNorm", "output has dims [4, 9]", "expected [4, 8]"}));
  EXPECT_TRUE(Snapshot(ln) == before);
  EXPECT_EQ(test::max_abs(test::to_vec(y)), 7.0);
}

TEST_F(LayerNormErrors, GradientBuffersOfWrongDims) {
  const Snapshot before(ln);
  T2 dy_bad(4, 9), dx(4, 8), dx_bad(3, 8);
  dy_bad.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { ln.backward(x, dy_bad, dx); }, {"normlayers::LayerNorm", "grad_output has dims [4, 9]", "expected [4, 8]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { ln.backward(x, dy, dx_bad); }, {"normlayers::LayerNorm", "grad_input has dims [3, 8]", "expected [4, 8]"}));
  EXPECT_TRUE(Snapshot(ln) == before);
}

TEST_F(LayerNormErrors, BackwardBeforeForward) {
  nl::LayerNorm<float> fresh({8});
  const Snapshot before(fresh);
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { fresh.backward(x, dy); }, {"normlayers::LayerNorm", "backward called before forward"}));
  EXPECT_TRUE(Snapshot(fresh) == before);
}

TEST_F(LayerNormErrors, BackwardWithOtherDimsThanForward) {
  const Snapshot before(ln);
  T2 x2(5, 8), dy2(5, 8);
  x2.setRandom();
  dy2.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { ln.backward(x2, dy2); },
      {"normlayers::LayerNorm", "input has dims [5, 8]", "expected [4, 8]", "last forward"}));
  EXPECT_TRUE(Snapshot(ln) == before);
}

TEST_F(LayerNormErrors, MissingParametersAndWrongSizesInFunctional) {
  nl::LayerNormOptions o;
  o.elementwise_affine = false;
  nl::LayerNorm<float> plain({8}, o);
  EXPECT_TRUE(test::throws_with<std::logic_error>([&] { plain.weight(); },
                                                  {"normlayers::LayerNorm", "no weight"}));
  EXPECT_TRUE(test::throws_with<std::logic_error>([&] { plain.bias_grad(); },
                                                  {"normlayers::LayerNorm", "no bias_grad"}));
  T2 y(4, 8);
  std::vector<float> w(7, 1.f), mean(3);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::layer_norm_forward(x, y, {8}, w); },
      {"normlayers::layer_norm_forward", "weight has 7 elements, expected 8"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::layer_norm_forward(x, y, {8}, {}, {}, 1e-5, mean); },
      {"normlayers::layer_norm_forward", "mean has 3 elements, expected 4"}));
  std::vector<float> mean4(4), rstd4(4), dw(8, 0.f);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::layer_norm_backward(x, dy, y, {8}, {}, mean4, {}, dw); },
      {"normlayers::layer_norm_backward", "rstd has 0 elements, expected 4"}));
  EXPECT_EQ(dw, std::vector<float>(8, 0.f));
}

}  // namespace

namespace {

// A pass that reads more than 4M values writes with streaming stores; an output
// one float off packet alignment exercises the aligned body, head and tail.
// Row-major rows of a page or less then go 4 at once with the next rows
// prefetched (8195 rows of 513: groups of 4 and a row left over); longer
// rows one at a time.
template <int Layout>
void check_streaming_output(Index rows = 4099, Index cols = 1025) {
  const std::array<Index, 2> dims{rows, cols};
  const std::size_t n = std::size_t(test::numel(dims));
  ASSERT_GT(n, std::size_t(4) << 20);
  nl::LayerNorm<float> ln({cols});
  test::set_random_params(ln, 3);
  const auto x = test::make_tensor<float, Layout>(dims, test::random_vec(n, 4));
  const auto dy = test::make_tensor<float, Layout>(dims, test::random_vec(n, 5));
  std::vector<float> ybuf(n + 1), dxbuf(n + 1);
  Eigen::TensorMap<Eigen::Tensor<float, 2, Layout>> y(ybuf.data() + 1, dims);
  Eigen::TensorMap<Eigen::Tensor<float, 2, Layout>> dx(dxbuf.data() + 1, dims);
  ln.forward(x, y);
  ln.backward(x, dy, dx);
  const Vec gamma = test::to_vec(ln.weight()), beta = test::to_vec(ln.bias());
  const auto D = std::size_t(cols);
  const auto ref = reference::row_norm_forward(test::logical(x), D, gamma, beta, 1e-5, true);
  EXPECT_TRUE(test::all_close(test::logical(y), ref.y, 1e-5, 1e-5));
  const auto grads =
      reference::row_norm_backward(test::logical(x), test::logical(dy), D, gamma, 1e-5, true);
  EXPECT_TRUE(test::all_close(test::logical(dx), grads.dx, 1e-5, 1e-5));
  EXPECT_EQ(ybuf[0], 0.f);
}
TEST(LayerNormLarge, StreamingStoresMatchTheReferenceRowMajor) {
  check_streaming_output<Eigen::RowMajor>();
}
TEST(LayerNormLarge, StreamingStoresMatchTheReferenceColMajor) {
  check_streaming_output<Eigen::ColMajor>();
}
TEST(LayerNormLarge, StreamingShortRowsMatchTheReference) {
  check_streaming_output<Eigen::RowMajor>(8195, 513);
}

// Where y lies from x modulo 4 KiB picks plain or streaming stores on some
// CPUs (kernels::streaming_stalls_loads); the output must not depend on it.
TEST(LayerNormLarge, OutputIsTheSameWhereverItLiesFromTheInput) {
  const std::array<Index, 2> dims{4100, 1024};
  const std::size_t n = std::size_t(test::numel(dims));
  ASSERT_GT(n, std::size_t(4) << 20);
  nl::LayerNorm<float> ln({dims[1]});
  test::set_random_params(ln, 6);
  const Vec xv = test::random_vec(n, 7);
  // One buffer: x from a 4 KiB boundary, y from a later one moved by `shift` bytes.
  const std::size_t page = 1024, gap = (n + page - 1) / page * page + 2 * page;
  std::vector<float> buf(2 * gap + 2 * page, 0.f);
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  float* const x = buf.data() + (4096 - addr % 4096) % 4096 / sizeof(float);
  for (std::size_t i = 0; i < n; ++i) x[i] = float(xv[i]);
  Eigen::TensorMap<const Eigen::Tensor<float, 2, Eigen::RowMajor>> xmap(x, dims);
  std::vector<float> first;
  for (int shift : {0, 32, 64, 256, -64, -256, 1024}) {
    float* const y = x + std::ptrdiff_t(gap) + shift / int(sizeof(float));
    EXPECT_EQ(nl::detail::kernels::near_4k_alias(x, y), shift != 0 && shift != 1024);
    Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> ymap(y, dims);
    ln.forward(xmap, ymap);
    if (first.empty()) {
      first.assign(y, y + n);
      const Vec gamma = test::to_vec(ln.weight()), beta = test::to_vec(ln.bias());
      const auto ref = reference::row_norm_forward(test::logical(xmap), std::size_t(dims[1]),
                                                   gamma, beta, 1e-5, true);
      EXPECT_TRUE(test::all_close(test::logical(ymap), ref.y, 1e-5, 1e-5));
    } else {
      EXPECT_TRUE(std::equal(first.begin(), first.end(), y)) << "y " << shift << " bytes off";
    }
  }
}

}  // namespace
