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
class InstanceNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(InstanceNormTest, test::Configs, test::ConfigNames);

struct Case {
  bool affine;
  bool channels_last;
  bool track;
  bool train;
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (bool affine : {true, false})
    for (bool last : {false, true})
      for (bool track : {false, true})
        for (bool train : {true, false}) cases.push_back({affine, last, track, train});
  return cases;
}

template <typename S>
nl::InstanceNorm<S> make_in(Index channels, Case c, unsigned seed) {
  nl::InstanceNormOptions o;
  o.affine = c.affine;
  o.channels_last = c.channels_last;
  o.track_running_stats = c.track;
  nl::InstanceNorm<S> in(channels, o);
  test::set_random_params(in, seed);
  if (c.track) test::set_random_running_stats(in, seed + 2);
  if (!c.train) in.eval();
  return in;
}

::testing::Message describe(std::size_t rank, Case c) {
  return ::testing::Message() << "rank " << rank << ", affine " << c.affine << ", channels_last "
                              << c.channels_last << ", track " << c.track << ", train " << c.train;
}

// Running statistics of each channel repeated per instance, in reference order.
Vec per_instance(const Vec& per_channel, std::size_t batch) {
  Vec out;
  for (std::size_t n = 0; n < batch; ++n) out.insert(out.end(), per_channel.begin(), per_channel.end());
  return out;
}

template <typename C, std::size_t Rank>
void check_against_reference(const std::array<Index, Rank>& dims, Case c, unsigned seed) {
  using S = typename C::scalar;
  SCOPED_TRACE(describe(Rank, c));
  const std::size_t axis = c.channels_last ? Rank - 1 : 1;
  const Index channels = dims[axis];
  auto in = make_in<S>(channels, c, seed);
  const std::size_t n = std::size_t(test::numel(dims));
  const auto x = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 4, 0.7, 1.3));
  const auto dy = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 5));
  const Vec gamma = c.affine ? test::to_vec(in.weight()) : Vec{};
  const Vec beta = c.affine ? test::to_vec(in.bias()) : Vec{};
  const bool fixed = c.track && !c.train;
  const std::size_t batch = std::size_t(dims[0]);
  const Vec fm = fixed ? per_instance(test::to_vec(in.running_mean()), batch) : Vec{};
  const Vec fv = fixed ? per_instance(test::to_vec(in.running_var()), batch) : Vec{};
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), axis, 1);
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5, fm, fv);
  EXPECT_TRUE(test::all_close(test::logical(in.forward(x)), ref.y, C::tol, C::tol));
  const auto pos = test::grid_positions(batch, std::size_t(channels), C::layout == Eigen::RowMajor);
  EXPECT_TRUE(test::all_close(test::gather(in.saved_mean(), pos), ref.mean, C::tol, C::tol));
  EXPECT_TRUE(test::all_close(test::gather(in.saved_rstd(), pos), ref.rstd, C::tol, C::tol));
  const auto grads = reference::grouped_norm_backward(test::logical(x), test::logical(dy), grouping,
                                                      std::size_t(channels), gamma, 1e-5, fm, fv);
  test::expect_grads_close(test::logical(in.backward(x, dy)), in, grads, c.affine, c.affine,
                           C::tol, C::tol);
}

TYPED_TEST(InstanceNormTest, MatchesReferenceForEveryRankAndOption) {
  for (Case c : all_cases()) {
    const bool last = c.channels_last;
    check_against_reference<TypeParam>(last ? std::array<Index, 3>{3, 7, 4} : std::array<Index, 3>{3, 4, 7}, c, 1);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{2, 3, 5, 3} : std::array<Index, 4>{2, 3, 3, 5}, c, 2);
    check_against_reference<TypeParam>(last ? std::array<Index, 5>{2, 2, 3, 2, 3} : std::array<Index, 5>{2, 3, 2, 3, 2}, c, 3);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{1, 40, 40, 2} : std::array<Index, 4>{1, 2, 40, 40}, c, 4);
    // Channels-last: 257 channels side by side, lanes cut 256 + 1.
    check_against_reference<TypeParam>(last ? std::array<Index, 3>{2, 16, 257} : std::array<Index, 3>{2, 257, 16}, c, 5);
  }
}

// Small feature maps (channels-first row-major: runs of under 512 values,
// taken as rows several at a time): 7x7 runs (starting off packet
// boundaries) over 55 instances (13 groups of 4 rows and 3 single rows),
// 4x4 runs (each a whole AVX-512 packet), 1x3 runs (scalars only); every
// option, train and eval.
TYPED_TEST(InstanceNormTest, SmallMapsMatchReference) {
  for (Case c : all_cases()) {
    const bool last = c.channels_last;
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{5, 7, 7, 11} : std::array<Index, 4>{5, 11, 7, 7}, c, 21);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{3, 4, 4, 6} : std::array<Index, 4>{3, 6, 4, 4}, c, 22);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{7, 1, 3, 5} : std::array<Index, 4>{7, 5, 1, 3}, c, 23);
  }
}

template <int Layout, std::size_t Rank>
void gradcheck(const std::array<Index, Rank>& dims, Case c, unsigned seed) {
  SCOPED_TRACE(describe(Rank, c));
  const Index channels = dims[c.channels_last ? Rank - 1 : 1];
  test::gradcheck_module<Layout>(
      dims, [&] { return make_in<double>(channels, c, seed + 2); }, c.affine, c.affine, seed);
}

template <int Layout>
void gradcheck_all() {
  for (Case c : all_cases()) {
    const bool last = c.channels_last;
    gradcheck<Layout>(last ? std::array<Index, 3>{2, 4, 3} : std::array<Index, 3>{2, 3, 4}, c, 11);
    gradcheck<Layout>(last ? std::array<Index, 4>{2, 2, 3, 2} : std::array<Index, 4>{2, 2, 2, 3}, c, 12);
    gradcheck<Layout>(last ? std::array<Index, 5>{2, 1, 2, 2, 2} : std::array<Index, 5>{2, 2, 1, 2, 2}, c, 13);
  }
}
TEST(InstanceNormGradcheck, RowMajor) { gradcheck_all<Eigen::RowMajor>(); }
TEST(InstanceNormGradcheck, ColMajor) { gradcheck_all<Eigen::ColMajor>(); }

// Running statistics after 3 training steps, from PyTorch's rule: the
// batch-mean of the instances' mean and unbiased variance, blended with
// factor momentum (0 when unset); num_batches_tracked is not counted.
TYPED_TEST(InstanceNormTest, RunningStatisticsFollowTheUpdateRule) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 3> dims{4, 3, 6};
  for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    nl::InstanceNormOptions o;
    o.track_running_stats = true;
    o.momentum = momentum;
    nl::InstanceNorm<S> in(3, o);
    Vec rm(3, 0.0), rv(3, 1.0);
    for (int step = 1; step <= 3; ++step) {
      const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(72, 70u + unsigned(step), step, 1.0 + step));
      in.forward(x);
      const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 1, 1);
      const auto batch = reference::grouped_norm_forward(test::logical(x), grouping, {}, {}, 1e-5);
      const double f = momentum.value_or(0.0);
      for (std::size_t c = 0; c < 3; ++c) {
        double mean = 0, var = 0;
        for (std::size_t n = 0; n < 4; ++n) mean += batch.mean[n * 3 + c] / 4, var += batch.var[n * 3 + c] * 6.0 / 5.0 / 4;
        rm[c] = (1 - f) * rm[c] + f * mean;
        rv[c] = (1 - f) * rv[c] + f * var;
      }
    }
    EXPECT_EQ(in.num_batches_tracked(), 0);
    EXPECT_TRUE(test::all_close(test::to_vec(in.running_mean()), rm, TypeParam::tol, TypeParam::tol));
    EXPECT_TRUE(test::all_close(test::to_vec(in.running_var()), rv, TypeParam::tol, TypeParam::tol));
  }
}

TYPED_TEST(InstanceNormTest, FunctionalMatchesModule) {
  using S = typename TypeParam::scalar;
  using Tensor = Eigen::Tensor<S, 3, TypeParam::layout>;
  const std::array<Index, 3> dims{3, 2, 9};
  auto in = make_in<S>(2, {true, false, true, true}, 81);
  auto fresh = make_in<S>(2, {true, false, true, true}, 81);
  const Tensor x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(54, 82));
  const Tensor dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(54, 83));
  const Tensor y = in.forward(x);
  const Tensor dx = in.backward(x, dy);
  Eigen::Tensor<S, 1> rm = fresh.running_mean(), rv = fresh.running_var();
  Eigen::Tensor<S, 1> mean(6), rstd(6), dw(2), db(2);
  dw.setZero();
  db.setZero();
  Tensor yf(dims), dxf(dims);
  nl::instance_norm_forward(x, yf, fresh.weight(), fresh.bias(), rm, rv, true, 0.1, 1e-5, mean, rstd);
  nl::instance_norm_backward(x, dy, dxf, fresh.weight(), mean, rstd, true, dw, db);
  EXPECT_EQ(test::to_vec(yf), test::to_vec(y));
  EXPECT_EQ(test::to_vec(rm), test::to_vec(in.running_mean()));
  EXPECT_EQ(test::to_vec(rv), test::to_vec(in.running_var()));
  EXPECT_EQ(test::to_vec(dxf), test::to_vec(dx));
  EXPECT_EQ(test::to_vec(dw), test::to_vec(in.weight_grad()));
  EXPECT_EQ(test::to_vec(db), test::to_vec(in.bias_grad()));
}

TEST(InstanceNormNumerics, LargeMeanSmallSpreadInFloat) {
  const std::array<Index, 4> dims{2, 3, 32, 32};
  const Vec xv = test::random_vec(std::size_t(test::numel(dims)), 91, 1e4, 1.0);
  nl::InstanceNorm<float> in(3);
  const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, xv);
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 1, 1);
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, {}, {}, 1e-5);
  EXPECT_TRUE(test::all_close(test::logical(in.forward(x)), ref.y, 0.0, 1e-2));
}

TEST(InstanceNormModule, DefaultsFollowPyTorch) {
  nl::InstanceNorm<float> in(3);
  EXPECT_FALSE(in.has_weight());
  EXPECT_FALSE(in.tracks_running_stats());
  EXPECT_EQ(in.options().momentum, 0.1);
  int count = 0;
  in.for_each_parameter([&](std::string_view, auto&) { ++count; });
  in.for_each_buffer([&](std::string_view, auto&) { ++count; });
  EXPECT_EQ(count, 0);
}

TEST(InstanceNormErrors, BadInputsThrowAndChangeNothing) {
  using T3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
  nl::InstanceNormOptions o;
  o.affine = true;
  o.track_running_stats = true;
  nl::InstanceNorm<float> in(3, o);
  T3 x(2, 3, 5), dy(2, 3, 5);
  x.setRandom();
  dy.setRandom();
  in.forward(x);
  in.backward(x, dy);
  const Vec rm = test::to_vec(in.running_mean()), rv = test::to_vec(in.running_var());
  const Vec wg = test::to_vec(in.weight_grad()), mean = test::to_vec(in.saved_mean());
  auto unchanged = [&] {
    return test::to_vec(in.running_mean()) == rm && test::to_vec(in.running_var()) == rv &&
           test::to_vec(in.weight_grad()) == wg && test::to_vec(in.saved_mean()) == mean;
  };
  T3 one(2, 3, 1), bad(2, 4, 5), y_bad(2, 3, 4);
  one.setRandom();
  bad.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { in.forward(one); },
      {"normlayers::InstanceNorm", "expected more than 1 spatial element when training", "[2, 3, 1]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { in.forward(bad); }, {"normlayers::InstanceNorm", "input has 4 channels at dim 1, expected 3"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { in.forward(x, y_bad); }, {"normlayers::InstanceNorm", "output has dims [2, 3, 4]"}));
  Eigen::Tensor<float, 2, Eigen::RowMajor> x2(2, 3);
  x2.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { in.forward(x2); }, {"normlayers::InstanceNorm", "input has dims [2, 3]", "at least 3 dims"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { in.backward(bad, bad); }, {"normlayers::InstanceNorm", "input has dims [2, 4, 5]", "last forward"}));
  EXPECT_TRUE(unchanged());
  in.eval();  // running statistics: one spatial element is fine
  EXPECT_EQ(in.forward(one).size(), 6);

  nl::InstanceNormOptions bad_opts;
  bad_opts.momentum = 7.0;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::InstanceNorm<float> b(3, bad_opts); }, {"normlayers::InstanceNorm", "momentum is 7"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::InstanceNorm<float> b(-1); }, {"normlayers::InstanceNorm", "num_features is -1"}));
  nl::InstanceNorm<float> fresh(3);
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { fresh.backward(x, dy); }, {"normlayers::InstanceNorm", "backward called before forward"}));
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { fresh.running_var(); }, {"normlayers::InstanceNorm", "track_running_stats is false"}));
}

}  // namespace

namespace {

// A forward that reads more than 4M values streams its output. With one
// contiguous run per instance (channels-first) it prefetches the next
// instance while it normalizes the current one; with channels-last rows
// narrow enough for one strip of vectors it normalizes each sample while it
// sums the next (pipelined): 33 channels (two AVX-512 vectors and a single
// lane) and 15 (SSE vectors and single lanes). 3 samples, 4.27M-4.32M values,
// the output aligned and one float off alignment (head and tail of every
// run; every channels-last row, which then goes unstreamed).
TEST(InstanceNormLarge, StreamingForwardMatchesTheReference) {
  for (const auto& [last, dims] : {std::pair{false, std::array<Index, 4>{3, 33, 208, 208}},
                                   std::pair{true, std::array<Index, 4>{3, 208, 208, 33}},
                                   std::pair{true, std::array<Index, 4>{3, 310, 310, 15}}}) {
    const Index channels = dims[last ? 3 : 1];
    const std::size_t n = std::size_t(test::numel(dims));
    ASSERT_GT(n, std::size_t(4) << 20);
    auto in = make_in<float>(channels, {true, last, false, true}, 12);
    const auto x =
        test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 13, -0.5, 2.0));
    const Vec gamma = test::to_vec(in.weight()), beta = test::to_vec(in.bias());
    const auto grouping =
        reference::group_by_sample_and_channel(test::dims_vec(dims), last ? 3 : 1, 1);
    const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5);
    SCOPED_TRACE(::testing::Message() << "channels " << channels << ", channels_last " << last);
    test::expect_forward_at_offsets(dims, [&](auto& y) { in.forward(x, y); }, ref.y, 1e-5, 1e-5);
  }
}

// A channels-last backward reading over 4M values (x and dy) writes dx
// with streaming stores, lanes across 15 channels (SSE vectors and single
// lanes) or 33 (two AVX-512 vectors and a single lane), dx aligned and one
// float off alignment (every row then unstreamed). A parameter gradient
// sums 160000 or 270000 float products of ~0.3 to a few units: its rounding
// is bounded by ~eps times their magnitudes (~8e4, so ~5e-3); measured up to
// 6.6e-4, hence atol 2e-3 (dx keeps 1e-5).
TEST(InstanceNormLarge, StreamingChannelsLastBackwardMatchesTheReference) {
  for (const auto& dims :
       {std::array<Index, 4>{4, 200, 200, 15}, std::array<Index, 4>{3, 300, 300, 33}}) {
    const Index channels = dims[3];
    SCOPED_TRACE(::testing::Message() << "channels " << channels);
    const std::size_t n = std::size_t(test::numel(dims));
    ASSERT_GT(2 * n, std::size_t(4) << 20);
    auto in = make_in<float>(channels, {true, true, false, true}, 41);
    const auto x =
        test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 42, -0.5, 2.0));
    const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 43));
    const Vec gamma = test::to_vec(in.weight());
    const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 3, 1);
    const auto grads = reference::grouped_norm_backward(test::logical(x), test::logical(dy),
                                                        grouping, std::size_t(channels), gamma,
                                                        1e-5);
    test::expect_backward_at_offsets(dims, in, x, dy, grads, 2e-3);
  }
}

// Small maps over 4M values: the forward's output streamed from rows of 16
// values (whole packets), the backward's (x and dy) too, aligned and one
// float off alignment. A parameter gradient sums 1040 per-instance terms of
// ~2 in float: errors up to 4.7e-5 measured, so atol 1e-4.
TEST(InstanceNormLarge, StreamingSmallMapsMatchTheReference) {
  const std::array<Index, 4> dims{1040, 256, 4, 4};
  const std::size_t n = std::size_t(test::numel(dims));
  ASSERT_GT(n, std::size_t(4) << 20);
  auto in = make_in<float>(256, {true, false, false, true}, 31);
  const auto x =
      test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 32, -0.5, 2.0));
  const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 33));
  const Vec gamma = test::to_vec(in.weight()), beta = test::to_vec(in.bias());
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 1, 1);
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5);
  test::expect_forward_at_offsets(dims, [&](auto& y) { in.forward(x, y); }, ref.y, 1e-5, 1e-5);
  const auto grads = reference::grouped_norm_backward(test::logical(x), test::logical(dy),
                                                      grouping, 256, gamma, 1e-5);
  test::expect_backward_at_offsets(dims, in, x, dy, grads, 1e-4);
}

}  // namespace
