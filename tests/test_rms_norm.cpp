// SPDX-License-Identifier: MIT
#include <normlayers/normlayers.hpp>

#include <gtest/gtest.h>

#include <limits>

#include "reference.hpp"
#include "test_support.hpp"

namespace nl = normlayers;
using test::Index;
using test::Vec;

namespace {

template <typename C>
class RMSNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(RMSNormTest, test::Configs, test::ConfigNames);

nl::RMSNormOptions options_of(bool affine, double eps) {
  nl::RMSNormOptions o;
  o.elementwise_affine = affine;
  o.eps = eps;
  return o;
}

// A module over normalized_shape `ns` with a random weight (when affine).
template <typename S>
nl::RMSNorm<S> make_rms(const nl::Shape& ns, bool affine, double eps, unsigned seed) {
  nl::RMSNorm<S> rms(ns, options_of(affine, eps));
  test::set_random_params(rms, seed);
  return rms;
}

::testing::Message describe(std::size_t rank, std::size_t k, bool affine) {
  return ::testing::Message() << "rank " << rank << ", k " << k << ", affine " << affine;
}

template <typename C, std::size_t Rank>
void check_against_reference(const std::array<Index, Rank>& dims, std::size_t k, bool affine,
                             unsigned seed) {
  using S = typename C::scalar;
  SCOPED_TRACE(describe(Rank, k, affine));
  const nl::Shape ns = test::trailing_dims(dims, k);
  const std::size_t d = std::size_t(nl::detail::product(ns));
  const std::size_t n = std::size_t(test::numel(dims));
  const double eps = std::numeric_limits<S>::epsilon();
  auto rms = make_rms<S>(ns, affine, eps, seed + 2);
  const auto x = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed));
  const auto dy = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 1));
  const Vec gamma = affine ? test::to_vec(rms.weight()) : Vec{};

  const auto ref = reference::row_norm_forward(test::logical(x), d, gamma, {}, eps, false);
  EXPECT_TRUE(test::all_close(test::logical(rms.forward(x)), ref.y, C::tol, C::tol));
  const auto pos = test::row_positions(dims, k, C::layout == Eigen::RowMajor);
  EXPECT_TRUE(test::all_close(test::gather(rms.saved_rrms(), pos), ref.rstd, C::tol, C::tol));

  const auto grads =
      reference::row_norm_backward(test::logical(x), test::logical(dy), d, gamma, eps, false);
  test::expect_grads_close(test::logical(rms.backward(x, dy)), rms, grads, affine, false, C::tol,
                           C::tol);
}

TYPED_TEST(RMSNormTest, MatchesReferenceForEveryRankAndOption) {
  for (bool affine : {true, false}) {
    check_against_reference<TypeParam>(std::array<Index, 2>{6, 33}, 1, affine, 1);
    check_against_reference<TypeParam>(std::array<Index, 2>{3, 1500}, 1, affine, 2);
    check_against_reference<TypeParam>(std::array<Index, 3>{2, 5, 7}, 2, affine, 3);
    check_against_reference<TypeParam>(std::array<Index, 4>{2, 3, 4, 5}, 1, affine, 4);
    check_against_reference<TypeParam>(std::array<Index, 4>{2, 3, 4, 5}, 3, affine, 5);
    check_against_reference<TypeParam>(std::array<Index, 5>{2, 1, 3, 2, 4}, 2, affine, 6);
    // Column-major: 257 statistics side by side, lanes cut 256 + 1.
    check_against_reference<TypeParam>(std::array<Index, 2>{257, 6}, 1, affine, 7);
  }
}

template <int Layout, std::size_t Rank>
void gradcheck(const std::array<Index, Rank>& dims, std::size_t k, bool affine, unsigned seed) {
  SCOPED_TRACE(describe(Rank, k, affine));
  const nl::Shape ns = test::trailing_dims(dims, k);
  test::gradcheck_module<Layout>(
      dims, [&] { return make_rms<double>(ns, affine, 1e-5, seed + 2); }, affine, false, seed);
}

template <int Layout>
void gradcheck_all() {
  for (bool affine : {true, false}) {
    gradcheck<Layout>(std::array<Index, 2>{3, 7}, 1, affine, 11);
    gradcheck<Layout>(std::array<Index, 3>{2, 3, 4}, 2, affine, 12);
    gradcheck<Layout>(std::array<Index, 4>{2, 2, 3, 2}, 1, affine, 13);
    gradcheck<Layout>(std::array<Index, 5>{2, 1, 2, 3, 2}, 3, affine, 14);
  }
}
TEST(RMSNormGradcheck, RowMajor) { gradcheck_all<Eigen::RowMajor>(); }
TEST(RMSNormGradcheck, ColMajor) { gradcheck_all<Eigen::ColMajor>(); }

// With weight 1 every row of the output has mean square 1 (up to eps / mean(x^2)).
TYPED_TEST(RMSNormTest, UnitWeightGivesUnitMeanSquare) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 3> dims{4, 3, 100};
  nl::RMSNorm<S> rms({3, 100});
  const Vec y = test::logical(
      rms.forward(test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(1200, 21, 0.5, 2.0))));
  for (std::size_t r = 0; r < 4; ++r) {
    double ms = 0;
    for (std::size_t j = 0; j < 300; ++j) ms += y[r * 300 + j] * y[r * 300 + j];
    EXPECT_NEAR(ms / 300, 1.0, TypeParam::tol) << "row " << r;
  }
}

// The backward's rows alone and in groups: 37 rows (groups of 4 or 2, then
// a single row) of lengths shorter than a packet, a packet and a tail, and
// around 256, with row 3 scaled far up.
TEST(RMSNormNumerics, BackwardRowsGetTheirOwnResultInAnyGroup) {
  const Index rows = 37;
  for (Index d : {Index(7), Index(64), Index(200), Index(256), Index(257)}) {
    SCOPED_TRACE(::testing::Message() << "rows of " << d);
    Vec xv = test::random_vec(std::size_t(rows * d), 36);
    for (Index i = 0; i < d; ++i) xv[std::size_t(3 * d + i)] *= 1000.0;
    nl::RMSNorm<float> rms({d});
    test::set_random_params(rms, 37);
    test::expect_rows_backward_alone(rms, rows, d, xv, test::random_vec(xv.size(), 38), false);
  }
}

TEST(RMSNormModule, EpsDefaultsToMachineEpsilonOfTheScalar) {
  EXPECT_EQ(nl::RMSNorm<float>({4}).eps(), double(std::numeric_limits<float>::epsilon()));
  EXPECT_EQ(nl::RMSNorm<double>({4}).eps(), std::numeric_limits<double>::epsilon());
  EXPECT_EQ(nl::RMSNorm<float>({4}, options_of(true, 1e-6)).eps(), 1e-6);
  nl::RMSNorm<float> rms({4});
  EXPECT_FALSE(rms.has_bias());
  std::vector<std::string> names;
  rms.for_each_parameter([&](std::string_view name, auto&) { names.emplace_back(name); });
  EXPECT_EQ(names, std::vector<std::string>{"weight"});
}

// eps matters: an all-zero row gives 0, not NaN, and x of tiny scale is
// damped exactly as 1/sqrt(mean(x^2) + eps).
TEST(RMSNormModule, ZeroRowsStayFinite) {
  nl::RMSNorm<float> rms({8});
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(2, 8);
  x.setZero();
  const auto y = rms.forward(x);
  for (Index i = 0; i < y.size(); ++i) EXPECT_EQ(y.data()[i], 0.f);
  EXPECT_FLOAT_EQ(rms.saved_rrms()(0), 1.f / std::sqrt(std::numeric_limits<float>::epsilon()));
}

TYPED_TEST(RMSNormTest, InPlaceAndFunctionalMatchModule) {
  using S = typename TypeParam::scalar;
  using Tensor = Eigen::Tensor<S, 2, TypeParam::layout>;
  const std::array<Index, 2> dims{5, 64};
  nl::RMSNorm<S> rms({64});
  test::set_random_params(rms, 31);
  const Tensor x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(320, 32));
  const Tensor dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(320, 33));
  const Tensor y = rms.forward(x);
  const Tensor dx = rms.backward(x, dy);

  Tensor inplace = x;
  rms.forward(inplace, inplace);
  EXPECT_EQ(test::to_vec(inplace), test::to_vec(y));
  Tensor grad = dy;
  rms.backward(x, grad, grad);
  EXPECT_EQ(test::to_vec(grad), test::to_vec(dx));

  Tensor yf(dims), dxf(dims);
  Eigen::Tensor<S, 1> rrms(5), dw(64);
  dw.setZero();
  nl::rms_norm_forward(x, yf, {64}, rms.weight(), rms.eps(), rrms);
  nl::rms_norm_backward(x, dy, dxf, {64}, rms.weight(), rrms, dw);
  EXPECT_EQ(test::to_vec(yf), test::to_vec(y));
  EXPECT_EQ(test::to_vec(rrms), test::to_vec(rms.saved_rrms()));
  EXPECT_EQ(test::to_vec(dxf), test::to_vec(dx));
  const Vec twice = test::to_vec(rms.weight_grad());  // two backward calls accumulated
  const Vec once = test::to_vec(dw);
  for (std::size_t i = 0; i < once.size(); ++i)
    EXPECT_NEAR(twice[i], 2 * once[i], 4 * TypeParam::tol * (1 + std::abs(once[i])));
}

// ---- errors: type, message, and nothing changed

TEST(RMSNormErrors, BadInputsThrowAndChangeNothing) {
  using T2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  nl::RMSNorm<float> rms({8});
  rms.weight().setRandom();
  T2 x(4, 8), dy(4, 8);
  x.setRandom();
  dy.setRandom();
  rms.forward(x);
  rms.backward(x, dy);
  const Vec weight = test::to_vec(rms.weight()), grad = test::to_vec(rms.weight_grad());
  const Vec rrms = test::to_vec(rms.saved_rrms());
  auto unchanged = [&] {
    return test::to_vec(rms.weight()) == weight && test::to_vec(rms.weight_grad()) == grad &&
           test::to_vec(rms.saved_rrms()) == rrms;
  };

  T2 wrong(4, 7), y_wrong(3, 8), x5(5, 8);
  wrong.setRandom();
  x5.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { rms.forward(wrong); }, {"normlayers::RMSNorm", "input has dims [4, 7]", "expected trailing dims [8]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { rms.forward(x, y_wrong); }, {"normlayers::RMSNorm", "output has dims [3, 8]", "expected [4, 8]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { rms.backward(x5, x5); }, {"normlayers::RMSNorm", "input has dims [5, 8]", "last forward"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { rms.backward(x, wrong); }, {"normlayers::RMSNorm", "grad_output has dims [4, 7]"}));
  EXPECT_TRUE(unchanged());

  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::RMSNorm<float> bad({8}, options_of(true, -1e-6)); }, {"normlayers::RMSNorm", "eps is -1e-06"}));
  nl::RMSNorm<float> fresh({8});
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { fresh.backward(x, dy); }, {"normlayers::RMSNorm", "backward called before forward"}));
  EXPECT_FALSE(fresh.has_saved_statistics());
  nl::RMSNorm<float> plain({8}, options_of(false, 1e-6));
  EXPECT_TRUE(test::throws_with<std::logic_error>([&] { plain.weight(); }, {"normlayers::RMSNorm", "no weight"}));
  EXPECT_TRUE(test::throws_with<std::logic_error>([&] { fresh.bias(); }, {"normlayers::RMSNorm", "no bias"}));
}

}  // namespace
