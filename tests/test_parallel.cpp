// SPDX-License-Identifier: MIT
// Every layer gives bitwise identical outputs, gradients and running
// statistics whether it runs on the calling thread or on 1, 2 or 4 threads of
// an Eigen::ThreadPoolDevice.
#define EIGEN_USE_THREADS
#include <normlayers/normlayers.hpp>

#include <gtest/gtest.h>

#include <memory>

#include "test_support.hpp"

namespace nl = normlayers;
using test::Index;
using test::Vec;

namespace {

struct Pool {
  explicit Pool(int n) : pool(n), device(&pool, n) {}
  Eigen::ThreadPool pool;
  Eigen::ThreadPoolDevice device;
};

// A "device" that runs every item as its own range, last item first: results
// must not depend on how the work is cut or in which order pieces run. It
// counts the ranges, so a test can tell that the work really was split.
struct SplittingDevice {
  mutable Index calls = 0, ranges = 0;
  int numThreads() const { return 4; }
  void parallelFor(Index n, const Eigen::TensorOpCost&, const std::function<void(Index, Index)>& f) const {
    ++calls;
    for (Index i = n; i-- > 0;) f(i, i + 1), ++ranges;
  }
};

// Forward then backward (twice, so gradients accumulate) with `make()`'s
// module on `parallel`; returns y, dx, the parameter gradients and buffers.
template <int Layout, std::size_t Rank, typename Make>
Vec run(const std::array<Index, Rank>& dims, Make make, const nl::Parallel& parallel) {
  auto m = make();
  m.set_parallel(parallel);
  const std::size_t n = std::size_t(test::numel(dims));
  const auto x = test::make_tensor<double, Layout>(dims, test::random_vec(n, 7, 0.5, 2.0));
  const auto dy = test::make_tensor<double, Layout>(dims, test::random_vec(n, 8));
  Vec out = test::to_vec(m.forward(x));
  for (int i = 0; i < 2; ++i) {
    const Vec dx = test::to_vec(m.backward(x, dy));
    out.insert(out.end(), dx.begin(), dx.end());
  }
  if (m.has_weight()) {
    const Vec g = test::to_vec(m.weight_grad());
    out.insert(out.end(), g.begin(), g.end());
  }
  if (m.has_bias()) {
    const Vec g = test::to_vec(m.bias_grad());
    out.insert(out.end(), g.begin(), g.end());
  }
  return out;
}

// expect_split = false where the library does not yet spread the work
// (stated at the call); determinism is checked all the same.
template <int Layout, std::size_t Rank, typename Make>
void expect_same_for_any_thread_count(const std::array<Index, Rank>& dims, Make make,
                                      bool expect_split = true) {
  const Vec serial = run<Layout>(dims, make, nl::Parallel());
  SplittingDevice splitter;
  EXPECT_EQ(run<Layout>(dims, make, nl::Parallel(splitter, /*min_bytes=*/0)), serial)
      << "split item by item";
  if (expect_split) {
    EXPECT_GT(splitter.ranges, splitter.calls) << "the work was never split";
  }
  // Below min_bytes (the default) the work stays on the calling thread.
  SplittingDevice unused;
  EXPECT_EQ(run<Layout>(dims, make, nl::Parallel(unused, /*min_bytes=*/1e18)), serial);
  EXPECT_EQ(unused.calls, 0);
  for (int threads : {1, 2, 4}) {
    Pool pool(threads);
    const Vec parallel = run<Layout>(dims, make, nl::Parallel(pool.device, /*min_bytes=*/0));
    ASSERT_EQ(parallel.size(), serial.size());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < serial.size(); ++i) differ += parallel[i] != serial[i];
    EXPECT_EQ(differ, 0u) << threads << " threads";
  }
}

template <typename Fn>
void for_both_layouts(Fn fn) {
  fn(std::integral_constant<int, Eigen::RowMajor>{});
  fn(std::integral_constant<int, Eigen::ColMajor>{});
}

// threads_for is what the layers choose their loops by: it must agree with
// where for_ranges actually runs the work.
TEST(Parallel, ThreadsForMatchesWhereLoopsRun) {
  EXPECT_EQ(nl::Parallel().threads_for(1e18), 1);
  SplittingDevice device;  // 4 threads
  const nl::Parallel par(device, /*min_bytes=*/1000);
  EXPECT_EQ(par.num_threads(), 4);
  EXPECT_EQ(par.threads_for(999), 1);
  EXPECT_EQ(par.threads_for(1000), 4);
  Index ranges = 0;
  par.for_ranges(10, 99.9, [&](Index, Index) { ++ranges; });  // 999 bytes
  EXPECT_EQ(ranges, 1);
  EXPECT_EQ(device.calls, 0);
  ranges = 0;
  par.for_ranges(10, 100.0, [&](Index, Index) { ++ranges; });  // 1000 bytes
  EXPECT_EQ(ranges, 10);
  EXPECT_EQ(device.calls, 1);
}

TEST(Parallel, LayerNormAndRMSNorm) {
  for_both_layouts([](auto layout) {
    constexpr int L = decltype(layout)::value;
    expect_same_for_any_thread_count<L>(std::array<Index, 3>{5, 70, 33}, [] {
      nl::LayerNorm<double> ln({33});
      test::set_random_params(ln, 1);
      return ln;
    });
    expect_same_for_any_thread_count<L>(std::array<Index, 2>{300, 40}, [] {
      nl::RMSNorm<double> rms({40});
      test::set_random_params(rms, 2);
      return rms;
    });
  });
}

TEST(Parallel, BatchNormTrainEvalAndChannelsLast) {
  for_both_layouts([](auto layout) {
    constexpr int L = decltype(layout)::value;
    for (bool last : {false, true})
      for (bool train : {true, false}) {
        expect_same_for_any_thread_count<L>(std::array<Index, 4>{12, 10, 10, 10}, [=] {
          nl::BatchNormOptions o;
          o.channels_last = last;
          nl::BatchNorm<double> bn(10, o);
          test::set_random_params(bn, 3);
          if (!train) {
            test::set_random_running_stats(bn, 7);
            bn.eval();
          }
          return bn;
        });
      }
  });
}

TEST(Parallel, GroupNormAndInstanceNorm) {
  for_both_layouts([](auto layout) {
    constexpr int L = decltype(layout)::value;
    for (bool last : {false, true}) {
      const auto dims =
          last ? std::array<Index, 4>{3, 40, 40, 8} : std::array<Index, 4>{3, 8, 40, 40};
      expect_same_for_any_thread_count<L>(dims, [=] {
        nl::GroupNormOptions o;
        o.channels_last = last;
        nl::GroupNorm<double> gn(4, 8, o);
        test::set_random_params(gn, 4);
        return gn;
      }, /*expect_split=*/L == Eigen::RowMajor || last);  // column-major NCHW: one tall block
      expect_same_for_any_thread_count<L>(dims, [=] {
        nl::InstanceNormOptions o;
        o.channels_last = last;
        o.affine = true;
        nl::InstanceNorm<double> in(8, o);
        test::set_random_params(in, 5);
        return in;
      });
      // Eval with running statistics: one elementwise pass over the input.
      expect_same_for_any_thread_count<L>(dims, [=] {
        nl::InstanceNormOptions o;
        o.channels_last = last;
        o.affine = true;
        o.track_running_stats = true;
        nl::InstanceNorm<double> in(8, o);
        test::set_random_params(in, 5);
        test::set_random_running_stats(in, 9);
        in.eval();
        return in;
      });
    }
  });
  // Wide channels-last GroupNorm: packet strips and several row chunks per
  // sample; with 300 channels, a sample per visit and rows applied whole for
  // 1 and 2 threads, separate passes over pieces of 256 lanes for 4 (fewer
  // samples than threads).
  for_both_layouts([](auto layout) {
    for (Index channels : {120, 300}) {
      expect_same_for_any_thread_count<decltype(layout)::value>(
          std::array<Index, 4>{2, 32, 32, channels}, [channels] {
            nl::GroupNormOptions o;
            o.channels_last = true;
            nl::GroupNorm<double> gn(channels / 10, channels, o);
            test::set_random_params(gn, 6);
            return gn;
          });
    }
  });
}


// Small maps, channels-first: runs of 49 values taken 4 rows at a time
// (InstanceNorm, GroupNorm's backward), groups of 147 values summed 4 at a
// time, [N, C] GroupNorm (a group is one row of lanes): whichever rows a
// range starts at, every row and group is computed the same.
TEST(Parallel, SmallMapsGroupNormAndInstanceNorm) {
  const std::array<Index, 4> dims{5, 12, 7, 7};
  expect_same_for_any_thread_count<Eigen::RowMajor>(dims, [] {
    nl::GroupNorm<double> gn(4, 12);
    test::set_random_params(gn, 4);
    return gn;
  });
  for (bool eval : {false, true})
    expect_same_for_any_thread_count<Eigen::RowMajor>(dims, [=] {
      nl::InstanceNormOptions o;
      o.affine = true;
      o.track_running_stats = true;
      nl::InstanceNorm<double> in(12, o);
      test::set_random_params(in, 5);
      test::set_random_running_stats(in, 9);
      if (eval) in.eval();
      return in;
    });
  expect_same_for_any_thread_count<Eigen::RowMajor>(std::array<Index, 2>{9, 48}, [] {
    nl::GroupNorm<double> gn(6, 48);
    test::set_random_params(gn, 6);
    return gn;
  });
}

// Channels-last InstanceNorm and GroupNorm forwards read from memory (over 4M
// values) with rows of one strip pipeline their samples: one is summed while
// the previous one is normalized, the first of every range alone. 8 channels
// (one strip for SSE, AVX2 and AVX-512 in double); results must not depend
// on where ranges start.
TEST(Parallel, PipelinedChannelsLastForward) {
  const std::array<Index, 4> dims{3, 420, 420, 8};
  ASSERT_GT(test::numel(dims), Index(4) << 20);
  expect_same_for_any_thread_count<Eigen::RowMajor>(dims, [] {
    nl::InstanceNormOptions o;
    o.channels_last = true;
    o.affine = true;
    nl::InstanceNorm<double> in(8, o);
    test::set_random_params(in, 10);
    return in;
  });
  expect_same_for_any_thread_count<Eigen::RowMajor>(dims, [] {
    nl::GroupNormOptions o;
    o.channels_last = true;
    nl::GroupNorm<double> gn(4, 8, o);
    test::set_random_params(gn, 11);
    return gn;
  });
}

}  // namespace
