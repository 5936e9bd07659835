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
class BatchNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(BatchNormTest, test::Configs, test::ConfigNames);

struct Case {
  bool affine;
  bool channels_last;
  bool train;  // false: eval mode with running statistics
};

nl::BatchNormOptions options_of(Case c) {
  nl::BatchNormOptions o;
  o.affine = c.affine;
  o.channels_last = c.channels_last;
  return o;
}

// A module with random parameters and random running statistics.
template <typename S>
nl::BatchNorm<S> make_bn(Index channels, Case c, unsigned seed) {
  nl::BatchNorm<S> bn(channels, options_of(c));
  test::set_random_params(bn, seed);
  test::set_random_running_stats(bn, seed + 2);
  if (!c.train) bn.eval();
  return bn;
}

::testing::Message describe(std::size_t rank, Case c) {
  return ::testing::Message() << "rank " << rank << ", affine " << c.affine << ", channels_last "
                              << c.channels_last << ", train " << c.train;
}

template <typename C, std::size_t Rank>
void check_against_reference(const std::array<Index, Rank>& dims, Case c, unsigned seed) {
  using S = typename C::scalar;
  SCOPED_TRACE(describe(Rank, c));
  const std::size_t axis = c.channels_last ? Rank - 1 : 1;
  const Index channels = dims[axis];
  auto bn = make_bn<S>(channels, c, seed);
  const std::size_t n = std::size_t(test::numel(dims));
  const auto x = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 4, 0.3, 2.0));
  const auto dy = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 5));
  const Vec gamma = c.affine ? test::to_vec(bn.weight()) : Vec{};
  const Vec beta = c.affine ? test::to_vec(bn.bias()) : Vec{};
  const Vec rm = test::to_vec(bn.running_mean()), rv = test::to_vec(bn.running_var());
  const Vec fixed_mean = c.train ? Vec{} : rm, fixed_var = c.train ? Vec{} : rv;

  const auto ref = reference::batch_norm_forward(test::logical(x), test::dims_vec(dims), axis,
                                                 gamma, beta, 1e-5, fixed_mean, fixed_var);
  EXPECT_TRUE(test::all_close(test::logical(bn.forward(x)), ref.y, C::tol, C::tol));
  EXPECT_TRUE(test::all_close(test::to_vec(bn.saved_mean()), ref.mean, C::tol, C::tol));
  EXPECT_TRUE(test::all_close(test::to_vec(bn.saved_rstd()), ref.rstd, C::tol, C::tol));

  const auto grads =
      reference::batch_norm_backward(test::logical(x), test::logical(dy), test::dims_vec(dims),
                                     axis, gamma, 1e-5, fixed_mean, fixed_var);
  test::expect_grads_close(test::logical(bn.backward(x, dy)), bn, grads, c.affine, c.affine,
                           C::tol, C::tol, -1, C::sum_tol);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (bool affine : {true, false})
    for (bool last : {false, true})
      for (bool train : {true, false}) cases.push_back({affine, last, train});
  return cases;
}

TYPED_TEST(BatchNormTest, MatchesReferenceForEveryRankAndOption) {
  for (Case c : all_cases()) {
    check_against_reference<TypeParam>(std::array<Index, 2>{16, 5}, c, 1);
    check_against_reference<TypeParam>(std::array<Index, 3>{4, 3, 7}, c, 2);
    check_against_reference<TypeParam>(std::array<Index, 4>{3, 4, 5, 6}, c, 3);
    check_against_reference<TypeParam>(std::array<Index, 5>{2, 3, 2, 3, 4}, c, 4);
    check_against_reference<TypeParam>(std::array<Index, 4>{2, 3, 40, 40}, c, 5);  // > one block
    check_against_reference<TypeParam>(std::array<Index, 4>{20, 4, 8, 3}, c, 6);   // row chunks (last)
    check_against_reference<TypeParam>(std::array<Index, 3>{3, 5, 257}, c, 7);     // lanes 256 + 1 (last)
    // Short runs (first): pieces of 18 channels of 7x7, the last of 16.
    check_against_reference<TypeParam>(std::array<Index, 4>{5, 70, 7, 7}, c, 8);
  }
}

// Gradient check in double by central differences of loss = <BatchNorm(x), g>.
template <int Layout, std::size_t Rank>
void gradcheck(const std::array<Index, Rank>& dims, Case c, unsigned seed) {
  SCOPED_TRACE(describe(Rank, c));
  const Index channels = dims[c.channels_last ? Rank - 1 : 1];
  test::gradcheck_module<Layout>(
      dims, [&] { return make_bn<double>(channels, c, seed + 2); }, c.affine, c.affine, seed);
}

template <int Layout>
void gradcheck_all() {
  for (Case c : all_cases()) {
    gradcheck<Layout>(std::array<Index, 2>{6, 3}, c, 11);
    gradcheck<Layout>(std::array<Index, 3>{3, 2, 4}, c, 12);
    gradcheck<Layout>(std::array<Index, 4>{2, 3, 2, 3}, c, 13);
    gradcheck<Layout>(std::array<Index, 5>{2, 2, 2, 1, 3}, c, 14);
  }
}
TEST(BatchNormGradcheck, RowMajor) { gradcheck_all<Eigen::RowMajor>(); }
TEST(BatchNormGradcheck, ColMajor) { gradcheck_all<Eigen::ColMajor>(); }

TEST(BatchNormNumerics, LargeMeanSmallSpreadInFloat) {
  const std::array<Index, 4> dims{8, 4, 16, 16};
  const Vec xv = test::random_vec(std::size_t(test::numel(dims)), 21, 1e4, 1.0);
  for (bool last : {false, true}) {
    nl::BatchNormOptions o;
    o.channels_last = last;
    nl::BatchNorm<float> bn(last ? 16 : 4, o);
    const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, xv);
    const auto ref = reference::batch_norm_forward(test::logical(x), test::dims_vec(dims),
                                                   last ? 3 : 1, {}, {}, 1e-5);
    EXPECT_TRUE(test::all_close(test::logical(bn.forward(x)), ref.y, 0.0, 1e-2)) << "last " << last;
  }
}

// A float BatchNorm forward of x (values xv) in training mode against the
// double reference: output to 1e-5, rstd to 1e-6 relative.
void expect_float_forward_close(const std::array<Index, 4>& dims, const Vec& xv, bool last) {
  const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, xv);
  nl::BatchNormOptions o;
  o.channels_last = last;
  nl::BatchNorm<float> bn(dims[last ? 3 : 1], o);
  const Vec got = test::logical(bn.forward(x));
  const auto ref = reference::batch_norm_forward(test::logical(x), test::dims_vec(dims),
                                                 last ? 3 : 1, {}, {}, 1e-5);
  EXPECT_TRUE(test::all_close(got, ref.y, 1e-5, 1e-5));
  EXPECT_TRUE(test::all_close(test::to_vec(bn.saved_rstd()), ref.rstd, 1e-6, 0.0));
}

// As LayerNormNumerics.OutlyingFirstValuesKeepFloatPrecision for a channel's
// runs (channels-first): each channel starts with 16 zeros, then 16368 values
// near 1000, so its shifted one-pass sums cancel 10 bits and the centered
// pass must take over.
TEST(BatchNormNumerics, OutlyingFirstValuesKeepFloatPrecision) {
  const std::array<Index, 4> dims{4, 3, 64, 64};
  Vec xv = test::random_vec(std::size_t(test::numel(dims)), 23, 1000.0, 1.0);
  for (Index c = 0; c < 3; ++c)
    for (Index i = 0; i < 16; ++i) xv[std::size_t(c * 4096 + i)] = 0.0;
  expect_float_forward_close(dims, xv, false);
}

// The same for channels-last, where the moments run across rows with a lane
// per channel: the first 16 rows (the rows whose mean shifts the one-pass
// sums of a first chunk) are zeros, the rest near 1000, so the shifted sums
// cancel ~20 bits and the centered pass must take over. 256 rows take the
// single-block path, 4096 rows the chunked one (zeros in its first chunk);
// 19 channels take vector and scalar lanes.
TEST(BatchNormNumerics, OutlyingFirstRowsKeepFloatPrecisionChannelsLast) {
  for (Index hw : {8, 32}) {
    const std::array<Index, 4> dims{4, hw, hw, 19};
    Vec xv = test::random_vec(std::size_t(test::numel(dims)), 24, 1000.0, 1.0);
    std::fill(xv.begin(), xv.begin() + 16 * 19, 0.0);
    SCOPED_TRACE(::testing::Message() << "hw " << hw);
    expect_float_forward_close(dims, xv, true);
  }
}

// The same for channels-first with short runs (4x4), whose moments run down
// the samples with a lane per position: the first 16 samples (the rows whose
// mean shifts the one-pass sums) are zeros, the rest near 1000.
TEST(BatchNormNumerics, OutlyingFirstSamplesKeepFloatPrecisionShortRuns) {
  const std::array<Index, 4> dims{64, 3, 4, 4};
  Vec xv = test::random_vec(std::size_t(test::numel(dims)), 25, 1000.0, 1.0);
  std::fill(xv.begin(), xv.begin() + 16 * 3 * 16, 0.0);
  expect_float_forward_close(dims, xv, false);
}

// Channels-first with short runs and many samples: pieces limited by their
// bytes (3 channels of 2000 samples x 3x3), the last of one channel; forward,
// statistics and backward against the reference.
TEST(BatchNormShortRuns, PiecesLimitedByBytesMatchTheReference) {
  const std::array<Index, 4> dims{2000, 16, 3, 3};
  const std::size_t n = std::size_t(test::numel(dims));
  nl::BatchNorm<float> bn(16);
  test::set_random_params(bn, 31);
  const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 32, 0.3, 2.0));
  const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 33));
  const Vec gamma = test::to_vec(bn.weight()), beta = test::to_vec(bn.bias());
  const auto ref = reference::batch_norm_forward(test::logical(x), test::dims_vec(dims), 1, gamma, beta, 1e-5);
  EXPECT_TRUE(test::all_close(test::logical(bn.forward(x)), ref.y, 1e-5, 1e-5));
  EXPECT_TRUE(test::all_close(test::to_vec(bn.saved_mean()), ref.mean, 1e-5, 1e-5));
  EXPECT_TRUE(test::all_close(test::to_vec(bn.saved_rstd()), ref.rstd, 1e-5, 1e-5));
  const auto grads = reference::batch_norm_backward(test::logical(x), test::logical(dy), test::dims_vec(dims), 1, gamma, 1e-5);
  test::expect_grads_close(test::logical(bn.backward(x, dy)), bn, grads, true, true, 1e-5, 1e-5,
                           -1, test::Config<float, Eigen::RowMajor>::sum_tol);
}

// Running statistics after 3 steps, computed by hand from the formulas:
// factor = momentum (or 1/step), var unbiased = var * M / (M - 1).
TYPED_TEST(BatchNormTest, RunningStatisticsFollowTheUpdateRule) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 3> dims{4, 3, 5};
  const double m = 20;  // values per channel
  for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    nl::BatchNormOptions o;
    o.momentum = momentum;
    nl::BatchNorm<S> bn(3, o);
    Vec rm(3, 0.0), rv(3, 1.0);
    for (int step = 1; step <= 3; ++step) {
      const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(60, 30u + unsigned(step), step, 1.0 + step));
      bn.forward(x);
      const auto batch =
          reference::batch_norm_forward(test::logical(x), test::dims_vec(dims), 1, {}, {}, 1e-5);
      const double f = momentum ? *momentum : 1.0 / step;
      for (std::size_t c = 0; c < 3; ++c) {
        rm[c] = (1 - f) * rm[c] + f * batch.mean[c];
        rv[c] = (1 - f) * rv[c] + f * batch.var[c] * m / (m - 1);
      }
    }
    EXPECT_EQ(bn.num_batches_tracked(), 3);
    EXPECT_TRUE(test::all_close(test::to_vec(bn.running_mean()), rm, TypeParam::tol, TypeParam::tol));
    EXPECT_TRUE(test::all_close(test::to_vec(bn.running_var()), rv, TypeParam::tol, TypeParam::tol));
  }
}

// Eval mode is exactly y = (x - running_mean) * (rstd * weight) + bias with
// rstd = 1 / sqrt(running_var + eps), evaluated in the scalar type (the last
// step with or without a fused multiply-add, as the target ISA offers).
TYPED_TEST(BatchNormTest, EvalIsTheAffineMapOfTheRunningStatistics) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 4> dims{2, 3, 4, 5};
  auto bn = make_bn<S>(3, {true, false, false}, 41);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(120, 42));
  const auto y = bn.forward(x);
  const auto& rm = bn.running_mean();
  const auto& rv = bn.running_var();
  for (Index i = 0; i < 2; ++i)
    for (Index c = 0; c < 3; ++c)
      for (Index h = 0; h < 4; ++h)
        for (Index w = 0; w < 5; ++w) {
          const S rstd = S(1) / std::sqrt(rv(c) + S(1e-5));
          const S scale = rstd * bn.weight()(c), centered = x(i, c, h, w) - rm(c);
          const volatile S product = centered * scale;  // rounded on its own
          const S unfused = product + bn.bias()(c);
          const S fused = std::fma(centered, scale, bn.bias()(c));
          EXPECT_TRUE(y(i, c, h, w) == unfused || y(i, c, h, w) == fused)
              << y(i, c, h, w) << " is neither " << unfused << " nor " << fused;
        }
  EXPECT_EQ(bn.num_batches_tracked(), 0);
}

TYPED_TEST(BatchNormTest, WithoutTrackingEvalUsesBatchStatistics) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 3> dims{5, 2, 6};
  nl::BatchNormOptions o;
  o.track_running_stats = false;
  nl::BatchNorm<S> bn(2, o);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(60, 51, 2.0, 3.0));
  const Vec train = test::to_vec(bn.forward(x));
  bn.eval();
  EXPECT_EQ(test::to_vec(bn.forward(x)), train);
  const auto ref =
      reference::batch_norm_forward(test::logical(x), test::dims_vec(dims), 1, {}, {}, 1e-5);
  EXPECT_TRUE(test::all_close(test::logical(bn.forward(x)), ref.y, TypeParam::tol, TypeParam::tol));
  EXPECT_FALSE(bn.tracks_running_stats());
  int buffers = 0;
  bn.for_each_buffer([&](std::string_view, auto&) { ++buffers; });
  EXPECT_EQ(buffers, 0);
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { bn.running_mean(); }, {"normlayers::BatchNorm", "running_mean", "track_running_stats is false"}));
}

TYPED_TEST(BatchNormTest, TogglingModesChangesNothing) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 3> dims{5, 2, 6};
  auto bn = make_bn<S>(2, {true, false, true}, 61);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(60, 62));
  bn.eval();
  const Vec first = test::to_vec(bn.forward(x));
  const Vec rm = test::to_vec(bn.running_mean()), rv = test::to_vec(bn.running_var());
  bn.train();
  bn.eval();
  bn.train();
  bn.eval();
  EXPECT_EQ(test::to_vec(bn.forward(x)), first);
  EXPECT_EQ(test::to_vec(bn.running_mean()), rm);
  EXPECT_EQ(test::to_vec(bn.running_var()), rv);
  EXPECT_EQ(bn.num_batches_tracked(), 0);
}

TYPED_TEST(BatchNormTest, TrainInputGradientSumsToZeroPerChannel) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 4> dims{4, 3, 5, 5};
  auto bn = make_bn<S>(3, {true, false, true}, 71);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(300, 72));
  bn.forward(x);
  const Vec dx = test::logical(bn.backward(x, test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(300, 73))));
  const auto ch = reference::channel_of_each(test::dims_vec(dims), 1);
  Vec sum(3, 0.0), mag(3, 0.0);
  for (std::size_t i = 0; i < dx.size(); ++i) sum[ch[i]] += dx[i], mag[ch[i]] += std::abs(dx[i]);
  for (std::size_t c = 0; c < 3; ++c) EXPECT_LE(std::abs(sum[c]), TypeParam::tol * mag[c]) << c;
}

// channels_last on (N, H, W, C) equals channels-first on (N, C, H, W) with the
// same values, for outputs, gradients and running statistics.
TYPED_TEST(BatchNormTest, ChannelsLastEqualsChannelsFirstOnTransposedInput) {
  using S = typename TypeParam::scalar;
  constexpr int L = TypeParam::layout;
  const Index N = 3, C = 4, H = 5, W = 2;
  Eigen::Tensor<S, 4, L> first(N, C, H, W), dy_first(N, C, H, W);
  first = test::make_tensor<S, L>(std::array<Index, 4>{N, C, H, W}, test::random_vec(120, 81));
  dy_first = test::make_tensor<S, L>(std::array<Index, 4>{N, C, H, W}, test::random_vec(120, 82));
  const Eigen::array<Index, 4> to_last{0, 2, 3, 1};
  Eigen::Tensor<S, 4, L> last = first.shuffle(to_last), dy_last = dy_first.shuffle(to_last);
  auto bn_first = make_bn<S>(C, {true, false, true}, 83);
  auto bn_last = make_bn<S>(C, {true, true, true}, 83);
  const Eigen::Tensor<S, 4, L> y_first = bn_first.forward(first), y_last = bn_last.forward(last);
  const Eigen::Tensor<S, 4, L> dx_first = bn_first.backward(first, dy_first);
  const Eigen::Tensor<S, 4, L> dx_last = bn_last.backward(last, dy_last);
  const Eigen::Tensor<S, 4, L> y_first_t = y_first.shuffle(to_last), dx_first_t = dx_first.shuffle(to_last);
  EXPECT_TRUE(test::all_close(test::logical(y_last), test::logical(y_first_t), TypeParam::tol, TypeParam::tol));
  EXPECT_TRUE(test::all_close(test::logical(dx_last), test::logical(dx_first_t), TypeParam::tol, TypeParam::tol));
  EXPECT_TRUE(test::all_close(test::to_vec(bn_last.running_var()), test::to_vec(bn_first.running_var()), TypeParam::tol, TypeParam::tol));
  EXPECT_TRUE(test::all_close(test::to_vec(bn_last.weight_grad()), test::to_vec(bn_first.weight_grad()), TypeParam::tol, TypeParam::tol));
}

TYPED_TEST(BatchNormTest, InPlaceTensorMapAndFunctionalMatchModule) {
  using S = typename TypeParam::scalar;
  using Tensor = Eigen::Tensor<S, 4, TypeParam::layout>;
  const std::array<Index, 4> dims{3, 4, 3, 5};
  auto bn = make_bn<S>(4, {true, false, true}, 91);
  auto bn2 = make_bn<S>(4, {true, false, true}, 91);
  const Tensor x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(180, 92));
  const Tensor dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(180, 93));
  const Tensor y = bn.forward(x);
  const Tensor dx = bn.backward(x, dy);

  Tensor inplace = x;
  bn2.forward(inplace, inplace);
  EXPECT_EQ(test::to_vec(inplace), test::to_vec(y));
  std::vector<S> grad(dy.data(), dy.data() + dy.size());
  Eigen::TensorMap<Tensor> grad_map(grad.data(), dims);
  bn2.backward(x, grad_map, grad_map);
  EXPECT_EQ(Vec(grad.begin(), grad.end()), test::to_vec(dx));
  EXPECT_EQ(test::to_vec(bn2.weight_grad()), test::to_vec(bn.weight_grad()));
  EXPECT_EQ(test::to_vec(bn2.running_mean()), test::to_vec(bn.running_mean()));

  // Functional: same numbers, and the running statistics blend with the given momentum.
  auto fresh = make_bn<S>(4, {true, false, true}, 91);
  Eigen::Tensor<S, 1> rm = fresh.running_mean(), rv = fresh.running_var();
  Eigen::Tensor<S, 1> mean(4), rstd(4), dw(4), db(4);
  dw.setZero();
  db.setZero();
  Tensor yf(dims), dxf(dims);
  nl::batch_norm_forward(x, yf, fresh.weight(), fresh.bias(), rm, rv, true, 0.1, 1e-5, mean, rstd);
  nl::batch_norm_backward(x, dy, dxf, fresh.weight(), mean, rstd, true, dw, db);
  EXPECT_EQ(test::to_vec(yf), test::to_vec(y));
  EXPECT_EQ(test::to_vec(mean), test::to_vec(bn.saved_mean()));
  EXPECT_EQ(test::to_vec(rstd), test::to_vec(bn.saved_rstd()));
  EXPECT_EQ(test::to_vec(rm), test::to_vec(bn.running_mean()));
  EXPECT_EQ(test::to_vec(rv), test::to_vec(bn.running_var()));
  EXPECT_EQ(test::to_vec(dxf), test::to_vec(dx));
  EXPECT_EQ(test::to_vec(dw), test::to_vec(bn.weight_grad()));
  EXPECT_EQ(test::to_vec(db), test::to_vec(bn.bias_grad()));
}

TEST(BatchNormModule, DefaultsAndStateFollowPyTorch) {
  nl::BatchNorm<float> bn(3);
  EXPECT_EQ(bn.options().eps, 1e-5);
  EXPECT_EQ(bn.options().momentum, 0.1);
  EXPECT_TRUE(bn.has_weight() && bn.has_bias() && bn.tracks_running_stats() && bn.is_training());
  EXPECT_EQ(test::to_vec(bn.running_mean()), Vec(3, 0.0));
  EXPECT_EQ(test::to_vec(bn.running_var()), Vec(3, 1.0));
  std::vector<std::string> names;
  bn.for_each_parameter([&](std::string_view name, auto&) { names.emplace_back(name); });
  bn.for_each_buffer([&](std::string_view name, auto&) { names.emplace_back(name); });
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "running_mean", "running_var",
                                             "num_batches_tracked"}));
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(4, 3);
  x.setRandom();
  bn.forward(x);
  bn.weight().setConstant(2.f);
  bn.reset_parameters();
  EXPECT_EQ(test::to_vec(bn.weight()), Vec(3, 1.0));
  EXPECT_EQ(test::to_vec(bn.running_mean()), Vec(3, 0.0));
  EXPECT_EQ(bn.num_batches_tracked(), 0);
}

TEST(BatchNormModule, EmptyBatchGivesEmptyOutputAndKeepsRunningStatistics) {
  nl::BatchNorm<float> bn(3);
  Eigen::Tensor<float, 4, Eigen::RowMajor> x(0, 3, 4, 4);
  const auto y = bn.forward(x);
  EXPECT_EQ(y.size(), 0);
  EXPECT_EQ(y.dimension(1), 3);
  EXPECT_EQ(test::to_vec(bn.running_mean()), Vec(3, 0.0));
  EXPECT_EQ(test::to_vec(bn.running_var()), Vec(3, 1.0));
  EXPECT_EQ(bn.num_batches_tracked(), 0);
  EXPECT_EQ(bn.backward(x, x).size(), 0);
  EXPECT_EQ(test::to_vec(bn.weight_grad()), Vec(3, 0.0));
}

// ---- errors: type, message, and nothing changed

struct Snapshot {
  Vec weight, bias, weight_grad, running_mean, running_var, mean, rstd;
  std::int64_t batches;
  explicit Snapshot(const nl::BatchNorm<float>& bn)
      : weight(test::to_vec(bn.weight())),
        bias(test::to_vec(bn.bias())),
        weight_grad(test::to_vec(bn.weight_grad())),
        running_mean(test::to_vec(bn.running_mean())),
        running_var(test::to_vec(bn.running_var())),
        mean(test::to_vec(bn.saved_mean())),
        rstd(test::to_vec(bn.saved_rstd())),
        batches(bn.num_batches_tracked()) {}
  bool operator==(const Snapshot& o) const {
    return weight == o.weight && bias == o.bias && weight_grad == o.weight_grad &&
           running_mean == o.running_mean && running_var == o.running_var && mean == o.mean &&
           rstd == o.rstd && batches == o.batches;
  }
};

class BatchNormErrors : public ::testing::Test {
 protected:
  using T4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  BatchNormErrors() : bn(4), x(2, 4, 3, 3), dy(2, 4, 3, 3) {
    x.setRandom();
    dy.setRandom();
    bn.weight().setRandom();
    bn.forward(x);
    bn.backward(x, dy);
  }
  nl::BatchNorm<float> bn;
  T4 x, dy;
};

TEST_F(BatchNormErrors, WrongChannelCount) {
  const Snapshot before(bn);
  T4 bad(2, 5, 3, 3);
  bad.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.forward(bad); }, {"normlayers::BatchNorm", "input has 5 channels at dim 1, expected 4"}));
  nl::BatchNormOptions o;
  o.channels_last = true;
  nl::BatchNorm<float> last(4, o);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { last.forward(x); }, {"normlayers::BatchNorm", "input has 3 channels at dim 3, expected 4"}));
  EXPECT_TRUE(Snapshot(bn) == before);
}

TEST_F(BatchNormErrors, RankBelowTwo) {
  const Snapshot before(bn);
  Eigen::Tensor<float, 1> v(4);
  v.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.forward(v); }, {"normlayers::BatchNorm", "input has dims [4]", "at least 2 dims"}));
  EXPECT_TRUE(Snapshot(bn) == before);
}

TEST_F(BatchNormErrors, OneValuePerChannelWhenTraining) {
  const Snapshot before(bn);
  T4 one(1, 4, 1, 1);
  one.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.forward(one); },
      {"normlayers::BatchNorm", "expected more than 1 value per channel when training",
       "[1, 4, 1, 1]"}));
  EXPECT_TRUE(Snapshot(bn) == before);
  bn.eval();  // with running statistics a single value is fine
  EXPECT_EQ(bn.forward(one).size(), 4);
}

TEST_F(BatchNormErrors, BadConstructorArguments) {
  nl::BatchNormOptions o;
  o.momentum = 1.5;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::BatchNorm<float> b(4, o); }, {"normlayers::BatchNorm", "momentum is 1.5", "[0, 1]"}));
  o.momentum = -0.1;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::BatchNorm<float> b(4, o); }, {"normlayers::BatchNorm", "momentum is -0.1"}));
  o = {};
  o.eps = -1e-5;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::BatchNorm<float> b(4, o); }, {"normlayers::BatchNorm", "eps is -1e-05"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::BatchNorm<float> b(0); }, {"normlayers::BatchNorm", "num_features is 0", "> 0"}));
}

TEST_F(BatchNormErrors, BuffersOfWrongDims) {
  const Snapshot before(bn);
  T4 y(2, 4, 3, 2), dy_bad(2, 4, 2, 3), dx(2, 4, 3, 3);
  dy_bad.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.forward(x, y); }, {"normlayers::BatchNorm", "output has dims [2, 4, 3, 2]", "expected [2, 4, 3, 3]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.backward(x, dy_bad, dx); }, {"normlayers::BatchNorm", "grad_output has dims [2, 4, 2, 3]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.backward(x, dy, y); }, {"normlayers::BatchNorm", "grad_input has dims [2, 4, 3, 2]"}));
  EXPECT_TRUE(Snapshot(bn) == before);
}

TEST_F(BatchNormErrors, BackwardBeforeForwardOrWithOtherDims) {
  nl::BatchNorm<float> fresh(4);
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { fresh.backward(x, dy); }, {"normlayers::BatchNorm", "backward called before forward"}));
  const Snapshot before(bn);
  T4 x2(3, 4, 3, 3);
  x2.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { bn.backward(x2, x2); }, {"normlayers::BatchNorm", "input has dims [3, 4, 3, 3]", "last forward"}));
  EXPECT_TRUE(Snapshot(bn) == before);
}

TEST_F(BatchNormErrors, FunctionalArguments) {
  T4 y(2, 4, 3, 3);
  std::vector<float> w(4, 1.f), b(4, 0.f), rm(4, 0.f), rv(4, 1.f), short_rv(3, 1.f);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::batch_norm_forward(x, y, w, b, rm, short_rv, true); },
      {"normlayers::batch_norm_forward", "running_var has 3 elements, expected 4"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::batch_norm_forward(x, y, w, b, {}, {}, false); },
      {"normlayers::batch_norm_forward", "required when not training"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::batch_norm_forward(x, y, w, b, rm, rv, true, 2.0); },
      {"normlayers::batch_norm_forward", "momentum is 2"}));
  EXPECT_EQ(rm, std::vector<float>(4, 0.f));
  EXPECT_EQ(rv, std::vector<float>(4, 1.f));
}

}  // namespace

namespace {

// A pass that reads more than 4M values writes with streaming stores; an
// output one float off packet alignment exercises the aligned body, the
// unaligned head and the tail.
TEST(BatchNormLarge, StreamingStoresMatchTheReference) {
  for (int layout : {0, 1, 2}) {  // channels-last, channels-first, short runs (8x8)
    const bool last = layout == 0;
    const std::array<Index, 4> dims = last        ? std::array<Index, 4>{4, 33, 160, 200}
                                      : layout == 1 ? std::array<Index, 4>{4, 200, 33, 160}
                                                    : std::array<Index, 4>{330, 200, 8, 8};
    const std::size_t n = std::size_t(test::numel(dims));
    ASSERT_GT(n, std::size_t(4) << 20);
    nl::BatchNormOptions o;
    o.channels_last = last;
    nl::BatchNorm<float> bn(200, o);
    test::set_random_params(bn, 5);
    const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 6));
    const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 7));
    std::vector<float> ybuf(n + 1), dxbuf(n + 1);
    Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>> y(ybuf.data() + 1, dims);
    Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>> dx(dxbuf.data() + 1, dims);
    bn.forward(x, y);
    bn.backward(x, dy, dx);
    const Vec gamma = test::to_vec(bn.weight()), beta = test::to_vec(bn.bias());
    const std::size_t axis = last ? 3 : 1;
    const auto ref = reference::batch_norm_forward(test::logical(x), test::dims_vec(dims), axis, gamma, beta, 1e-5);
    EXPECT_TRUE(test::all_close(test::logical(y), ref.y, 1e-5, 1e-5)) << "layout " << layout;
    const auto grads = reference::batch_norm_backward(test::logical(x), test::logical(dy), test::dims_vec(dims), axis, gamma, 1e-5);
    EXPECT_TRUE(test::all_close(test::logical(dx), grads.dx, 1e-5, 1e-5)) << "layout " << layout;
    EXPECT_EQ(ybuf[0], 0.f);  // nothing written before the output
  }
}

// Channels-first short runs (7x7) in pieces that stream their output from
// 3M values forward and 1.5M backward, in pieces of 32 channels whose rows
// all start on a packet boundary when the output does: aligned (streamed)
// and one float off (plain stores), forward and backward.
TEST(BatchNormLarge, StreamingShortRunPiecesMatchTheReference) {
  const std::array<Index, 4> dims{41, 1600, 7, 7};
  const std::size_t n = std::size_t(test::numel(dims));
  ASSERT_GE(n, std::size_t(3) << 20);
  nl::BatchNorm<float> bn(1600);
  test::set_random_params(bn, 41);
  const auto x =
      test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 42, -0.5, 2.0));
  const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 43));
  const Vec gamma = test::to_vec(bn.weight()), beta = test::to_vec(bn.bias());
  const auto ref =
      reference::batch_norm_forward(test::logical(x), test::dims_vec(dims), 1, gamma, beta, 1e-5);
  test::expect_forward_at_offsets(dims, [&](auto& y) { bn.forward(x, y); }, ref.y, 1e-5, 1e-5);
  const auto grads = reference::batch_norm_backward(test::logical(x), test::logical(dy),
                                                    test::dims_vec(dims), 1, gamma, 1e-5);
  test::expect_backward_at_offsets(dims, bn, x, dy, grads, 1e-4);
}

}  // namespace
