// SPDX-License-Identifier: MIT
// The canonical [P, Q, R, S, T] view for every layout DESIGN.md lists, in
// both storage orders.
#include <normlayers/detail/view.hpp>

#include <gtest/gtest.h>

namespace {

using normlayers::detail::Index;
using normlayers::detail::make_view;
using normlayers::detail::View;

void expect_view(const View& v, std::array<Index, 5> want) {
  EXPECT_EQ((std::array<Index, 5>{v.P, v.Q, v.R, v.S, v.T}), want);
}

const std::vector<Index> nchw{8, 6, 5, 4};
const std::vector<bool> per_channel{true, false, true, true};  // reduce N, H, W
const std::vector<Index> nhwc{8, 5, 4, 6};
const std::vector<bool> per_channel_last{true, true, true, false};

TEST(View, LayerNormRowsAndColumns) {
  const std::vector<bool> trailing2{false, false, true, true};
  expect_view(make_view(nchw, true, trailing2), {48, 1, 1, 20, 1});   // rows of 20
  expect_view(make_view(nchw, false, trailing2), {1, 1, 1, 20, 48});  // 48 lanes
}

TEST(View, BatchNorm) {
  expect_view(make_view(nchw, true, per_channel), {1, 8, 6, 20, 1});
  expect_view(make_view(nchw, false, per_channel), {1, 20, 6, 8, 1});
  expect_view(make_view(nhwc, true, per_channel_last), {1, 1, 1, 160, 6});
  expect_view(make_view(nhwc, false, per_channel_last), {6, 1, 1, 160, 1});
  // BatchNorm1d on (N, C): a column reduction.
  expect_view(make_view({32, 10}, true, {true, false}), {1, 1, 1, 32, 10});
}

TEST(View, InstanceNorm) {
  const std::vector<bool> spatial{false, false, true, true};
  expect_view(make_view(nchw, true, spatial), {48, 1, 1, 20, 1});
  expect_view(make_view(nchw, false, spatial), {1, 1, 1, 20, 48});
  const std::vector<bool> spatial_last{false, true, true, false};
  expect_view(make_view(nhwc, true, spatial_last), {8, 1, 1, 20, 6});
  expect_view(make_view(nhwc, false, spatial_last), {6, 1, 1, 20, 8});
}

TEST(View, GroupNormNeedsAllFiveLevels) {
  // GroupNorm with G = 3 groups of D = 2 channels, channel c = g*D + d: d is
  // the faster part of c, so the split of C reads (G, D) in row-major dims and
  // (D, G) in column-major dims (first dim fastest).
  const std::vector<bool> per_group{false, false, true, true};
  expect_view(make_view({8, 3, 2, 20}, true, per_group), {24, 1, 1, 40, 1});
  expect_view(make_view({8, 2, 3, 20}, false, {false, true, false, true}), {1, 20, 3, 2, 8});
  // Channels last: (N, HW, G, D) row-major, (N, HW, D, G) column-major.
  expect_view(make_view({8, 20, 3, 2}, true, {false, true, false, true}), {8, 20, 3, 2, 1});
  expect_view(make_view({8, 20, 2, 3}, false, {false, true, true, false}), {3, 1, 1, 40, 8});
}

TEST(View, UnitAxesVanishAndSizesMultiply) {
  const View v = make_view({1, 7, 1, 3}, true, {false, false, true, true});
  expect_view(v, {7, 1, 1, 3, 1});
  EXPECT_EQ(v.num_stats(), 7);
  EXPECT_EQ(v.reduced_size(), 3);
  EXPECT_EQ(v.size(), 21);
  expect_view(make_view({4, 1}, true, {false, true}), {4, 1, 1, 1, 1});
}

}  // namespace
