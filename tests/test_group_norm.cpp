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
class GroupNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(GroupNormTest, test::Configs, test::ConfigNames);

struct Case {
  bool affine;
  bool channels_last;
};
const Case kCases[] = {{true, false}, {true, true}, {false, false}, {false, true}};

template <typename S>
nl::GroupNorm<S> make_gn(Index groups, Index channels, Case c, unsigned seed) {
  nl::GroupNormOptions o;
  o.affine = c.affine;
  o.channels_last = c.channels_last;
  nl::GroupNorm<S> gn(groups, channels, o);
  test::set_random_params(gn, seed);
  return gn;
}

::testing::Message describe(std::size_t rank, Index groups, Case c) {
  return ::testing::Message() << "rank " << rank << ", groups " << groups << ", affine "
                              << c.affine << ", channels_last " << c.channels_last;
}

// param_atol: the absolute tolerance of the parameter gradients (C::tol if < 0).
template <typename C, std::size_t Rank>
void check_against_reference(const std::array<Index, Rank>& dims, Index groups, Case c,
                             unsigned seed, double param_atol = -1) {
  using S = typename C::scalar;
  SCOPED_TRACE(describe(Rank, groups, c));
  const std::size_t axis = c.channels_last ? Rank - 1 : 1;
  const Index channels = dims[axis];
  auto gn = make_gn<S>(groups, channels, c, seed);
  const std::size_t n = std::size_t(test::numel(dims));
  const auto x = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 2, -0.4, 1.5));
  const auto dy = test::make_tensor<S, C::layout>(dims, test::random_vec(n, seed + 3));
  const Vec gamma = c.affine ? test::to_vec(gn.weight()) : Vec{};
  const Vec beta = c.affine ? test::to_vec(gn.bias()) : Vec{};
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), axis,
                                                               std::size_t(channels / groups));
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5);
  EXPECT_TRUE(test::all_close(test::logical(gn.forward(x)), ref.y, C::tol, C::tol));
  const auto pos = test::grid_positions(std::size_t(dims[0]), std::size_t(groups),
                                        C::layout == Eigen::RowMajor);
  EXPECT_TRUE(test::all_close(test::gather(gn.saved_mean(), pos), ref.mean, C::tol, C::tol));
  EXPECT_TRUE(test::all_close(test::gather(gn.saved_rstd(), pos), ref.rstd, C::tol, C::tol));
  const auto grads = reference::grouped_norm_backward(test::logical(x), test::logical(dy),
                                                      grouping, std::size_t(channels), gamma, 1e-5);
  test::expect_grads_close(test::logical(gn.backward(x, dy)), gn, grads, c.affine, c.affine,
                           C::tol, param_atol < 0 ? C::tol : param_atol, /*dx_atol=*/C::tol);
}

TYPED_TEST(GroupNormTest, MatchesReferenceForEveryRankAndOption) {
  for (Case c : kCases) {
    const bool last = c.channels_last;
    check_against_reference<TypeParam>(std::array<Index, 2>{3, 6}, 3, c, 1);
    check_against_reference<TypeParam>(last ? std::array<Index, 3>{2, 7, 6} : std::array<Index, 3>{2, 6, 7}, 2, c, 2);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{2, 3, 4, 8} : std::array<Index, 4>{2, 8, 3, 4}, 4, c, 3);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{2, 3, 4, 8} : std::array<Index, 4>{2, 8, 3, 4}, 1, c, 4);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{2, 3, 4, 8} : std::array<Index, 4>{2, 8, 3, 4}, 8, c, 5);
    check_against_reference<TypeParam>(last ? std::array<Index, 5>{2, 2, 3, 2, 6} : std::array<Index, 5>{2, 6, 2, 3, 2}, 3, c, 6);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{1, 40, 30, 4} : std::array<Index, 4>{1, 4, 40, 30}, 2, c, 7);
    // Channels-last: 257 channels side by side, the forward's apply along whole
    // rows (a scalar lane left over) where the constants are packet-aligned
    // (sample 0), in strips elsewhere (sample 1).
    check_against_reference<TypeParam>(last ? std::array<Index, 3>{2, 3, 257} : std::array<Index, 3>{2, 257, 3}, 1, c, 8);
  }
}

// Small feature maps (channels-first row-major): [N, C] inputs and 1x1 maps
// (a group is one row of D lanes; 54 and 20 groups, 4 at a time and a
// remainder), 7x7 runs of 4 channels a group (rows off packet boundaries),
// 5x5 runs of 10 channels a group, 12x12 runs (too long for rows in the
// backward).
TYPED_TEST(GroupNormTest, SmallMapsMatchReference) {
  for (Case c : kCases) {
    const bool last = c.channels_last;
    check_against_reference<TypeParam>(std::array<Index, 2>{9, 48}, 6, c, 51);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{5, 1, 1, 16} : std::array<Index, 4>{5, 16, 1, 1}, 4, c, 52);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{3, 7, 7, 32} : std::array<Index, 4>{3, 32, 7, 7}, 8, c, 53);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{3, 5, 5, 20} : std::array<Index, 4>{3, 20, 5, 5}, 2, c, 54);
    check_against_reference<TypeParam>(last ? std::array<Index, 4>{2, 12, 12, 8} : std::array<Index, 4>{2, 8, 12, 12}, 2, c, 55);
  }
}

// Wide channels-last inputs: vector lanes across 800 channels (strips of
// packets of every width, groups straddling packets) and several chunks of
// rows per sample, merged with Chan's formula.
// A parameter gradient here sums 2 x 256 products of size ~0.5 whose
// per-sample sums (~10) largely cancel; float rounding of such sums is a few
// 1e-5, so float parameter gradients get atol 1e-4 (double keeps 1e-11).
TYPED_TEST(GroupNormTest, WideChannelsLastMatchesReference) {
  using S = typename TypeParam::scalar;
  const double param_atol = std::is_same_v<S, float> ? 1e-4 : TypeParam::tol;
  for (bool affine : {true, false})
    check_against_reference<TypeParam>(std::array<Index, 4>{2, 16, 16, 800}, 80, {affine, true},
                                       41, param_atol);
}

template <int Layout, std::size_t Rank>
void gradcheck(const std::array<Index, Rank>& dims, Index groups, Case c, unsigned seed) {
  SCOPED_TRACE(describe(Rank, groups, c));
  const Index channels = dims[c.channels_last ? Rank - 1 : 1];
  test::gradcheck_module<Layout>(
      dims, [&] { return make_gn<double>(groups, channels, c, seed + 2); }, c.affine, c.affine,
      seed);
}

template <int Layout>
void gradcheck_all() {
  for (Case c : kCases) {
    const bool last = c.channels_last;
    gradcheck<Layout>(std::array<Index, 2>{3, 4}, 2, c, 11);
    gradcheck<Layout>(last ? std::array<Index, 3>{2, 3, 6} : std::array<Index, 3>{2, 6, 3}, 3, c, 12);
    gradcheck<Layout>(last ? std::array<Index, 4>{2, 2, 3, 4} : std::array<Index, 4>{2, 4, 2, 3}, 2, c, 13);
    gradcheck<Layout>(last ? std::array<Index, 5>{2, 1, 2, 2, 4} : std::array<Index, 5>{2, 4, 1, 2, 2}, 2, c, 14);
  }
}
TEST(GroupNormGradcheck, RowMajor) { gradcheck_all<Eigen::RowMajor>(); }
TEST(GroupNormGradcheck, ColMajor) { gradcheck_all<Eigen::ColMajor>(); }

// G = 1 is LayerNorm over (C, H, W) with the weight repeated over H*W.
TYPED_TEST(GroupNormTest, OneGroupIsLayerNormOverChannelsAndSpace) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 4> dims{3, 4, 5, 6};
  auto gn = make_gn<S>(1, 4, {true, false}, 21);
  nl::LayerNorm<S> ln({4, 5, 6});
  Vec w(120), b(120);
  for (std::size_t i = 0; i < 120; ++i) {
    w[i] = double(gn.weight()(Index(i / 30)));
    b[i] = double(gn.bias()(Index(i / 30)));
  }
  ln.weight() = test::make_vector<S>(w);
  ln.bias() = test::make_vector<S>(b);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(360, 22));
  EXPECT_TRUE(test::all_close(test::logical(gn.forward(x)), test::logical(ln.forward(x)),
                              TypeParam::tol, TypeParam::tol));
}

// G = C is InstanceNorm with affine parameters.
TYPED_TEST(GroupNormTest, OneChannelPerGroupIsInstanceNorm) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 4> dims{3, 4, 5, 6};
  auto gn = make_gn<S>(4, 4, {true, false}, 31);
  nl::InstanceNormOptions o;
  o.affine = true;
  nl::InstanceNorm<S> in(4, o);
  in.weight() = gn.weight();
  in.bias() = gn.bias();
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(360, 32));
  const auto dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(360, 33));
  EXPECT_TRUE(test::all_close(test::logical(gn.forward(x)), test::logical(in.forward(x)),
                              TypeParam::tol, TypeParam::tol));
  EXPECT_TRUE(test::all_close(test::logical(gn.backward(x, dy)), test::logical(in.backward(x, dy)),
                              TypeParam::tol, TypeParam::tol));
  EXPECT_TRUE(test::all_close(test::to_vec(gn.weight_grad()), test::to_vec(in.weight_grad()),
                              TypeParam::tol, TypeParam::tol));
}

TYPED_TEST(GroupNormTest, InputGradientSumsToZeroPerGroup) {
  using S = typename TypeParam::scalar;
  const std::array<Index, 4> dims{2, 6, 4, 5};
  auto gn = make_gn<S>(3, 6, {true, false}, 41);
  const auto x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(240, 42));
  gn.forward(x);
  const Vec dx = test::logical(gn.backward(x, test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(240, 43))));
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 1, 2);
  Vec sum(grouping.num_stats, 0.0), mag(grouping.num_stats, 0.0);
  for (std::size_t i = 0; i < dx.size(); ++i) sum[grouping.stat[i]] += dx[i], mag[grouping.stat[i]] += std::abs(dx[i]);
  for (std::size_t s = 0; s < sum.size(); ++s) EXPECT_LE(std::abs(sum[s]), TypeParam::tol * mag[s]) << s;
}

TYPED_TEST(GroupNormTest, InPlaceAndFunctionalMatchModule) {
  using S = typename TypeParam::scalar;
  using Tensor = Eigen::Tensor<S, 4, TypeParam::layout>;
  const std::array<Index, 4> dims{2, 3, 4, 6};
  auto gn = make_gn<S>(3, 6, {true, true}, 51);
  const Tensor x = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(144, 52));
  const Tensor dy = test::make_tensor<S, TypeParam::layout>(dims, test::random_vec(144, 53));
  const Tensor y = gn.forward(x);
  const Tensor dx = gn.backward(x, dy);
  Tensor inplace = x, grad = dy;
  auto gn2 = make_gn<S>(3, 6, {true, true}, 51);
  gn2.forward(inplace, inplace);
  gn2.backward(x, grad, grad);
  EXPECT_EQ(test::to_vec(inplace), test::to_vec(y));
  EXPECT_EQ(test::to_vec(grad), test::to_vec(dx));
  Tensor yf(dims), dxf(dims);
  Eigen::Tensor<S, 1> mean(6), rstd(6), dw(6), db(6);
  dw.setZero();
  db.setZero();
  nl::group_norm_forward(x, yf, 3, gn.weight(), gn.bias(), 1e-5, mean, rstd, true);
  nl::group_norm_backward(x, dy, dxf, 3, gn.weight(), mean, rstd, dw, db, true);
  EXPECT_EQ(test::to_vec(yf), test::to_vec(y));
  EXPECT_EQ(test::to_vec(dxf), test::to_vec(dx));
  EXPECT_EQ(test::to_vec(dw), test::to_vec(gn.weight_grad()));
  EXPECT_EQ(test::to_vec(db), test::to_vec(gn.bias_grad()));
}

TEST(GroupNormNumerics, LargeMeanSmallSpreadInFloat) {
  const std::array<Index, 4> dims{2, 8, 16, 16};
  const Vec xv = test::random_vec(std::size_t(test::numel(dims)), 61, 1e4, 1.0);
  nl::GroupNorm<float> gn(4, 8);
  const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, xv);
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 1, 2);
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, {}, {}, 1e-5);
  EXPECT_TRUE(test::all_close(test::logical(gn.forward(x)), ref.y, 0.0, 1e-2));
}

TEST(GroupNormModule, DefaultsAndModes) {
  nl::GroupNorm<float> gn(2, 4);
  EXPECT_EQ(gn.options().eps, 1e-5);
  EXPECT_TRUE(gn.has_weight() && gn.has_bias());
  Eigen::Tensor<float, 3, Eigen::RowMajor> x(2, 4, 3);
  x.setRandom();
  const Vec train = test::to_vec(gn.forward(x));
  gn.eval();
  EXPECT_EQ(test::to_vec(gn.forward(x)), train);
}

TEST(GroupNormErrors, BadInputsThrowAndChangeNothing) {
  using T4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [] { nl::GroupNorm<float> g(3, 8); }, {"normlayers::GroupNorm", "num_channels 8 is not divisible by num_groups 3"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [] { nl::GroupNorm<float> g(0, 8); }, {"normlayers::GroupNorm", "num_groups is 0"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [] { nl::GroupNorm<float> g(2, -4); }, {"normlayers::GroupNorm", "num_channels is -4"}));
  nl::GroupNormOptions o;
  o.eps = -1;
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::GroupNorm<float> g(2, 4, o); }, {"normlayers::GroupNorm", "eps is -1"}));

  nl::GroupNorm<float> gn(2, 4);
  gn.weight().setRandom();
  T4 x(2, 4, 3, 3), dy(2, 4, 3, 3);
  x.setRandom();
  dy.setRandom();
  gn.forward(x);
  gn.backward(x, dy);
  const Vec w = test::to_vec(gn.weight()), wg = test::to_vec(gn.weight_grad());
  const Vec mean = test::to_vec(gn.saved_mean());
  T4 bad(2, 6, 3, 3), y_bad(2, 4, 3, 2), x2(3, 4, 3, 3);
  bad.setRandom();
  x2.setRandom();
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { gn.forward(bad); }, {"normlayers::GroupNorm", "input has 6 channels at dim 1, expected 4"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { gn.forward(x, y_bad); }, {"normlayers::GroupNorm", "output has dims [2, 4, 3, 2]"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { gn.backward(x2, x2); }, {"normlayers::GroupNorm", "input has dims [3, 4, 3, 3]", "last forward"}));
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { gn.backward(x, y_bad); }, {"normlayers::GroupNorm", "grad_output has dims [2, 4, 3, 2]"}));
  Eigen::Tensor<float, 1> v(4);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { gn.forward(v); }, {"normlayers::GroupNorm", "input has dims [4]", "at least 2 dims"}));
  EXPECT_EQ(test::to_vec(gn.weight()), w);
  EXPECT_EQ(test::to_vec(gn.weight_grad()), wg);
  EXPECT_EQ(test::to_vec(gn.saved_mean()), mean);
  nl::GroupNorm<float> fresh(2, 4);
  EXPECT_TRUE(test::throws_with<std::logic_error>(
      [&] { fresh.backward(x, dy); }, {"normlayers::GroupNorm", "backward called before forward"}));
  std::vector<float> short_w(3, 1.f);
  T4 y(2, 4, 3, 3);
  EXPECT_TRUE(test::throws_with<std::invalid_argument>(
      [&] { nl::group_norm_forward(x, y, 2, short_w); },
      {"normlayers::group_norm_forward", "weight has 3 elements, expected 4"}));
}

}  // namespace

namespace {

// A float forward of 4 groups over dims (storage order, channels at dim
// `axis`) that reads more than 4M values, so it streams its output, against
// the double reference, the output aligned and one float off alignment.
void expect_streamed_forward(const std::array<Index, 4>& dims, int axis, unsigned seed) {
  const std::size_t n = std::size_t(test::numel(dims));
  ASSERT_GT(n, std::size_t(4) << 20);
  const Index channels = dims[std::size_t(axis)];
  auto gn = make_gn<float>(4, channels, {true, axis == 3}, seed);
  const auto x =
      test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, seed + 1, -0.5, 2.0));
  const Vec gamma = test::to_vec(gn.weight()), beta = test::to_vec(gn.bias());
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), axis, 4);
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5);
  test::expect_forward_at_offsets(dims, [&](auto& y) { gn.forward(x, y); }, ref.y, 1e-5, 1e-5);
}

// Channels-last rows narrow enough for one strip of vectors (here 16
// channels in 4 groups, one strip for SSE, AVX2 and AVX-512 alike) normalize
// each sample while the next one is summed (pipelined). 3 samples of 300x300
// (4.3M values); off alignment every row is unstreamed.
TEST(GroupNormLarge, StreamingPipelinedForwardMatchesTheReference) {
  expect_streamed_forward({3, 300, 300, 16}, 3, 14);
}

// Channels-first groups of long channels (at least 1024 values) are summed
// while the previous group is normalized in the same sweep: 2 samples of 16
// channels of 363x363 (4.2M values); the channels' runs (an odd number of
// values) start at every alignment.
TEST(GroupNormLarge, StreamingRidingForwardMatchesTheReference) {
  expect_streamed_forward({2, 16, 363, 363}, 1, 16);
}

// A pass that reads more than 4M values writes with streaming stores, so a
// backward (x and dy) of 2.56M values streams dx while its forward does not.
// Outputs aligned (channels-last rows stream only from aligned rows) and one
// float off alignment (the head and tail of every 10000-value run,
// channels-first). A parameter gradient sums 40000 products of size ~0.3
// (sum of magnitudes ~1e4), so its float rounding is up to ~1e-3 absolute
// (the scalar build's is ~1.2e-4); dx stays at 1e-5.
TEST(GroupNormLarge, StreamingBackwardMatchesTheReference) {
  for (bool last : {false, true})
    for (std::size_t offset : {0, 1}) {
      SCOPED_TRACE(::testing::Message() << "channels_last " << last << ", offset " << offset);
      const std::array<Index, 4> dims = last ? std::array<Index, 4>{4, 100, 100, 64}
                                             : std::array<Index, 4>{4, 64, 100, 100};
      const std::size_t n = std::size_t(test::numel(dims));
      ASSERT_GT(2 * n, std::size_t(4) << 20);
      ASSERT_LT(n, std::size_t(4) << 20);
      auto gn = make_gn<float>(8, 64, {true, last}, 9);
      const auto x = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 10));
      const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 11));
      Eigen::Tensor<float, 1> ybuf(Index(n + 1)), dxbuf(Index(n + 1));  // aligned storage
      ybuf.setZero();
      dxbuf.setZero();
      Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>> y(ybuf.data() + offset, dims);
      Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>> dx(dxbuf.data() + offset, dims);
      gn.forward(x, y);
      gn.backward(x, dy, dx);
      const Vec gamma = test::to_vec(gn.weight()), beta = test::to_vec(gn.bias());
      const auto grouping =
          reference::group_by_sample_and_channel(test::dims_vec(dims), last ? 3 : 1, 8);
      const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5);
      EXPECT_TRUE(test::all_close(test::logical(y), ref.y, 1e-5, 1e-5));
      const auto grads = reference::grouped_norm_backward(test::logical(x), test::logical(dy),
                                                          grouping, 64, gamma, 1e-5);
      test::expect_grads_close(test::logical(dx), gn, grads, true, true, 1e-5, 1e-3, 1e-5);
      EXPECT_EQ(dxbuf(offset ? 0 : Index(n)), 0.f);  // nothing written outside the output
    }
}

// Small maps over 4M values (4x4, 8 channels a group): the forward's
// groups summed 4 at a time and streamed, the backward's rows of 16 values
// (whole packets) streamed, aligned and one float off alignment. A
// parameter gradient sums 1040 per-sample terms of ~2 in float: errors
// up to 4.7e-5 measured, so atol 1e-4.
TEST(GroupNormLarge, StreamingSmallMapsMatchTheReference) {
  const std::array<Index, 4> dims{1040, 256, 4, 4};
  const std::size_t n = std::size_t(test::numel(dims));
  ASSERT_GT(n, std::size_t(4) << 20);
  auto gn = make_gn<float>(32, 256, {true, false}, 61);
  const auto x =
      test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 62, -0.5, 2.0));
  const auto dy = test::make_tensor<float, Eigen::RowMajor>(dims, test::random_vec(n, 63));
  const Vec gamma = test::to_vec(gn.weight()), beta = test::to_vec(gn.bias());
  const auto grouping = reference::group_by_sample_and_channel(test::dims_vec(dims), 1, 8);
  const auto ref = reference::grouped_norm_forward(test::logical(x), grouping, gamma, beta, 1e-5);
  test::expect_forward_at_offsets(dims, [&](auto& y) { gn.forward(x, y); }, ref.y, 1e-5, 1e-5);
  const auto grads = reference::grouped_norm_backward(test::logical(x), test::logical(dy),
                                                      grouping, 256, gamma, 1e-5);
  test::expect_backward_at_offsets(dims, gn, x, dy, grads, 1e-4);
}

}  // namespace
