// SPDX-License-Identifier: MIT
// normlayers_bench: every layer, forward and backward, on 1 and 2 threads,
// against the memory-bandwidth roofline and what users would pick instead, in
// one process so that every ratio comes from one run (see PERF.md).
//
// Case names: <Layer>/<fwd|fwd_eval|bwd>/<shape>/<layout>/t<threads>[/<baseline>],
// plus memcpy/<shape>/<fwd|bwd>/t<threads>. <shape> is the logical size, rows x
// cols or N x C x H x W, also for channels-last data (stored N x H x W x C), so
// that the layouts of one problem line up. Layouts: row (LayerNorm, RMSNorm over
// the last dim), nc (BatchNorm1d), nchw, nhwc. fwd_eval is BatchNorm in eval mode
// (running statistics); fwd and bwd of BatchNorm are training mode. GroupNorm
// uses G = 32; InstanceNorm runs with affine = true (not its default) so that the
// affine path is covered.
//
// Threads: t1 runs on the calling thread; t2 runs our layers through one
// process-wide Eigen::ThreadPool of 2 threads (normlayers::Parallel over an
// Eigen::ThreadPoolDevice), the plain Eigen baseline through the same device,
// and oneDNN/PyTorch with their own pools set to 2 threads.
//
// Counters on every case:
//   roofline  its bytes/s over the bytes/s of a memcpy moving the same accounted
//             bytes (same working set) on the same number of threads (t2: the
//             copy split in two halves, one on a pool thread, one on the calling
//             thread), measured right before and right after the case;
//   vs_<b>    (ours only) time of baseline <b> / our time, for each baseline that
//             ran earlier in this process (baselines are registered first).
// After the run a Markdown table and a targets section (our t1 roofline against
// its goal, our t2/t1 speed-up) go to stdout, normlayers_bench.md and
// normlayers_bench_summary.json, in $NORMLAYERS_BENCH_OUT (default: cwd).
#define EIGEN_USE_THREADS  // before anything includes Eigen: Eigen::ThreadPoolDevice

#include <benchmark/benchmark.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <normlayers/normlayers.hpp>
#include <unsupported/Eigen/CXX11/Tensor>

#ifdef NORMLAYERS_BENCH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif
#ifdef NORMLAYERS_BENCH_TORCH
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

namespace nl = normlayers;
using Index = Eigen::Index;
using T1 = Eigen::Tensor<float, 1, Eigen::RowMajor>;
using T2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
using T3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
template <int N>
using Idx = Eigen::array<Index, N>;
template <int Rank>
using Map = Eigen::TensorMap<Eigen::Tensor<float, Rank, Eigen::RowMajor>>;

// ---------------------------------------------------------------- threads

// The thread counts every case runs at; t2 is the process-wide pool below.
constexpr int pool_threads = 2;
constexpr int thread_counts[] = {1, pool_threads};

Eigen::ThreadPool& thread_pool() {
  static Eigen::ThreadPool pool(pool_threads);
  return pool;
}
const Eigen::ThreadPoolDevice& thread_pool_device() {
  static const Eigen::ThreadPoolDevice device(&thread_pool(), pool_threads);
  return device;
}

// ---------------------------------------------------------------- cases

enum class Norm { layer, rms, batch, group, instance };
enum class Pass { fwd, fwd_eval, bwd };
enum class Layout { row, nc, nchw, nhwc };

struct Case {
  Norm norm;
  Pass pass;
  std::vector<Index> dims;  // logical: rows x cols, N x C, or N x C x H x W (also for nhwc)
  Layout layout;
  int threads;
  Index groups = 0;  // GroupNorm only

  // Parameters per channel (BatchNorm, GroupNorm, InstanceNorm) or per column (LN, RMS).
  Index channels() const { return dims[1]; }
  Index elements() const {
    Index n = 1;
    for (Index d : dims) n *= d;
    return n;
  }
  Index spatial() const { return elements() / (dims[0] * dims[1]); }
  // The row-major dims of the data in memory: nhwc stores N x H x W x C.
  std::vector<Index> storage_dims() const {
    if (layout != Layout::nhwc) return dims;
    return {dims[0], dims[2], dims[3], dims[1]};
  }

  std::string shape() const {
    std::string s;
    for (Index d : dims) s += (s.empty() ? "" : "x") + std::to_string(d);
    return s;
  }
  const char* pass_name() const {
    return pass == Pass::fwd ? "fwd" : pass == Pass::fwd_eval ? "fwd_eval" : "bwd";
  }
  const char* layer_name() const {
    constexpr const char* names[] = {"LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm",
                                     "InstanceNorm"};
    return names[int(norm)];
  }
  const char* layout_name() const {
    constexpr const char* names[] = {"row", "nc", "nchw", "nhwc"};
    return names[int(layout)];
  }
  // The name without its thread count.
  std::string stem() const {
    return std::string(layer_name()) + "/" + pass_name() + "/" + shape() + "/" + layout_name();
  }
  std::string name() const { return stem() + "/t" + std::to_string(threads); }

  // Minimal traffic: forward reads x, writes y; backward reads x, dy, writes dx.
  std::int64_t bytes() const {
    return std::int64_t(elements()) * std::int64_t(sizeof(float)) * (pass == Pass::bwd ? 3 : 2);
  }
  // Beyond the L2 caches (>= 4 MiB per tensor): all shapes but 64x768 and 256x1024.
  bool large() const { return elements() >= (Index(1) << 20); }
  double eps() const {
    switch (norm) {
      case Norm::layer:
        return nl::LayerNormOptions{}.eps;
      case Norm::rms:
        return std::numeric_limits<float>::epsilon();
      case Norm::batch:
        return nl::BatchNormOptions{}.eps;
      case Norm::group:
        return nl::GroupNormOptions{}.eps;
      case Norm::instance:
        return nl::InstanceNormOptions{}.eps;
    }
    return 0;
  }
};

// x and dy (random) and one output buffer per logical shape, made and touched
// once and shared by every implementation and layout, so no case pays page
// faults in its loop. Flat: each case views them in its storage dims.
struct Problem {
  T1 x, dy, out;
  T1 weight, bias;  // per channels(): ones and zeros, as the layers' defaults
};

Problem& problem(const Case& c) {
  static std::map<std::vector<Index>, Problem> cache;
  auto [it, fresh] = cache.try_emplace(c.dims);
  Problem& p = it->second;
  if (fresh) {
    p.x.resize(c.elements()), p.dy.resize(c.elements()), p.out.resize(c.elements());
    p.x.setRandom(), p.dy.setRandom(), p.out.setZero();
    p.weight.resize(c.channels()), p.bias.resize(c.channels());
    p.weight.setConstant(1.0f), p.bias.setZero();
  }
  return p;
}

// Calls f(x, dy, out): row-major TensorMaps of p's buffers in c's storage dims.
template <class F>
void with_maps(const Case& c, Problem& p, F&& f) {
  auto maps = [&](auto... dims) {
    constexpr int rank = int(sizeof...(dims));
    f(Map<rank>(p.x.data(), dims...), Map<rank>(p.dy.data(), dims...),
      Map<rank>(p.out.data(), dims...));
  };
  const std::vector<Index> d = c.storage_dims();
  if (d.size() == 2)
    maps(d[0], d[1]);
  else
    maps(d[0], d[1], d[2], d[3]);
}

// ---------------------------------------------------------------- roofline

// Two buffers of half the accounted bytes: one memcpy reads one and writes the
// other, moving (and touching) exactly the accounted bytes. With threads > 1 the
// copy is cut in that many equal parts: parts 1.. on the pool, part 0 on the
// calling thread, which then waits for them (as Eigen's parallelFor runs our
// layers' pieces when there are no more pieces than threads). One pair for the
// whole process, grown to the largest size asked for and never freed: a fresh
// pair per measurement cost a page fault per 4 KiB page on every reference
// (~15 us each in this sandbox, 0.5 s per 128 MiB), and giving that memory back
// to the system right before a timed loop slowed the loop 2-4x.
class CopyBuffers {
 public:
  static CopyBuffers& sized(std::int64_t accounted_bytes) {
    static CopyBuffers buffers;
    const std::size_t half = std::size_t(accounted_bytes / 2);
    if (buffers.src_.size() < half) buffers.src_.resize(half, 1), buffers.dst_.resize(half, 0);
    buffers.bytes_ = half;
    return buffers;
  }
  void copy(int threads) {
    auto part = [&](int t) {
      const std::size_t first = bytes_ * std::size_t(t) / std::size_t(threads);
      const std::size_t last = bytes_ * std::size_t(t + 1) / std::size_t(threads);
      std::memcpy(dst_.data() + first, src_.data() + first, last - first);
    };
    if (threads == 1) return part(0);
    Eigen::Barrier done(unsigned(threads - 1));
    for (int t = 1; t < threads; ++t)
      thread_pool().Schedule([&part, &done, t] {
        part(t);
        done.Notify();
      });
    part(0);
    done.Wait();
  }
  const char* destination() const { return dst_.data(); }

 private:
  CopyBuffers() = default;
  std::vector<char> src_, dst_;
  std::size_t bytes_ = 0;
};

// Bytes/s (read + write counted) of a memcpy of this working set on `threads`
// threads: the median of 3 timed runs of >= 20 ms, measured anew when the last
// measurement of this (bytes, threads) is older than 0.1 s. measure() takes
// one right before and one right after each case's timed loop and uses their
// mean: bandwidth on these shared hosts drifts by 10-30 % over seconds, so a
// reference measured once per size, cases earlier, skewed whole groups of
// ratios. (The median, not the best: a best-of reference reads ~0.85 against
// benchmark's own mean-over-a-run timing of the very same memcpy, where the
// median reads ~1.)
double memcpy_bytes_per_second(std::int64_t accounted_bytes, int threads) {
  using clock = std::chrono::steady_clock;
  static std::map<std::pair<std::int64_t, int>, std::pair<clock::time_point, double>> recent;
  const auto key = std::make_pair(accounted_bytes, threads);
  const auto found = recent.find(key);
  if (found != recent.end() &&
      std::chrono::duration<double>(clock::now() - found->second.first).count() < 0.1)
    return found->second.second;
  CopyBuffers& buffers = CopyBuffers::sized(accounted_bytes);
  buffers.copy(threads);
  std::vector<double> runs;
  for (int run = 0; run < 3; ++run) {
    std::int64_t copies = 0;
    double seconds = 0;
    const auto start = clock::now();
    do {
      buffers.copy(threads);
      benchmark::ClobberMemory();
      ++copies;
      seconds = std::chrono::duration<double>(clock::now() - start).count();
    } while (seconds < 0.020);
    runs.push_back(double(copies) * double(accounted_bytes) / seconds);
  }
  std::nth_element(runs.begin(), runs.begin() + 1, runs.end());
  recent[key] = {clock::now(), runs[1]};
  return runs[1];
}

// ---------------------------------------------------------------- timing

// Results of the runs so far, in run order (filled by SummaryReporter), by
// registered name (benchmark appends "/real_time" to the names it prints).
struct Result {
  std::string name;
  double seconds_per_iter;
  std::map<std::string, double> counters;
};
std::vector<Result> results;

const Result* find_result(const std::string& name) {
  for (const Result& r : results)
    if (r.name == name) return &r;
  return nullptr;
}

// What users would pick instead: name suffix, the cases it has, how to run one.
struct Baseline {
  const char* suffix;
  bool (*applies)(const Case&);
  void (*run)(benchmark::State&, const Case&);
};
const std::vector<Baseline>& baselines();

// Times `step` (which returns something to keep alive: an output pointer or
// tensor) and sets bytes/s, roofline (against a memcpy on `threads` threads)
// and, for our cases (`speedups_of` non-empty), vs_<baseline> counters. The
// ratios use the loop's wall time (what UseRealTime reports, up to the loop's
// start/stop overhead), so they print as plain numbers rather than as rates.
template <class Step>
void measure(benchmark::State& st, std::int64_t bytes, int threads, Step&& step,
             const std::string& speedups_of = {}) {
  const double before = memcpy_bytes_per_second(bytes, threads);
  // Untimed, right before the loop (after the reference copy, which would
  // evict it and let pools fall asleep again): first touch, lazy setup,
  // thread pools woken.
  benchmark::DoNotOptimize(step());
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : st) {
    benchmark::DoNotOptimize(step());
    benchmark::ClobberMemory();
  }
  const double seconds_per_iter =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
      double(st.iterations());
  const double after = memcpy_bytes_per_second(bytes, threads);
  st.SetBytesProcessed(st.iterations() * bytes);
  st.counters["roofline"] = double(bytes) / seconds_per_iter / ((before + after) / 2);
  if (speedups_of.empty()) return;
  for (const Baseline& b : baselines())
    if (const Result* r = find_result(speedups_of + "/" + b.suffix))
      st.counters[std::string("vs_") + b.suffix] = r->seconds_per_iter / seconds_per_iter;
}

// The thread count of the baselines' own thread pools (ATen, oneDNN's OpenMP).
void set_baseline_threads(int threads) {
#ifdef NORMLAYERS_BENCH_TORCH
  at::set_num_threads(threads);
#endif
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  (void)threads;
}

// ---------------------------------------------------------------- implementations

void bench_memcpy(benchmark::State& st, std::int64_t accounted_bytes, int threads) {
  CopyBuffers& buffers = CopyBuffers::sized(accounted_bytes);
  measure(st, accounted_bytes, threads, [&] {
    buffers.copy(threads);
    return buffers.destination();
  });
}

// A forward on x first, in training mode (backward needs its statistics; eval
// then normalizes with the running statistics it updated), then the timed pass.
template <class Layer>
void run_ours(benchmark::State& st, const Case& c, Layer layer) {
  if (c.threads > 1) layer.set_parallel(nl::Parallel(thread_pool_device()));
  with_maps(c, problem(c), [&](auto x, auto dy, auto out) {
    layer.forward(x, out);
    if (c.pass == Pass::fwd_eval) layer.eval();
    auto step = [&] {
      if (c.pass == Pass::bwd)
        layer.backward(x, dy, out);
      else
        layer.forward(x, out);
      return out.data();
    };
    measure(st, c.bytes(), c.threads, step, c.name());
  });
}

void bench_ours(benchmark::State& st, const Case& c) {
  const bool channels_last = c.layout == Layout::nhwc;
  switch (c.norm) {
    case Norm::layer:
      return run_ours(st, c, nl::LayerNorm<float>({c.channels()}));
    case Norm::rms:
      return run_ours(st, c, nl::RMSNorm<float>({c.channels()}));
    case Norm::batch: {
      nl::BatchNormOptions o;
      o.channels_last = channels_last;
      return run_ours(st, c, nl::BatchNorm<float>(c.channels(), o));
    }
    case Norm::group: {
      nl::GroupNormOptions o;
      o.channels_last = channels_last;
      return run_ours(st, c, nl::GroupNorm<float>(c.groups, c.channels(), o));
    }
    case Norm::instance: {
      nl::InstanceNormOptions o;
      o.affine = true;  // not InstanceNorm's default: the benchmark covers the affine path
      o.channels_last = channels_last;
      return run_ours(st, c, nl::InstanceNorm<float>(c.channels(), o));
    }
  }
}

// Plain Eigen Tensor expressions, as an Eigen user writes them: every mean and
// broadcast is another sweep. One formula for every layer it covers, over a
// view whose statistics are per row (Rows: LN, RMS, parameters per column) or
// per channel (Channels: BatchNorm as P x C x S, parameters per channel).
struct Rows {
  Index R, C;
  using Tensor = T2;
  Map<2> map(float* data) const { return {data, R, C}; }
  template <class E>
  auto stats(const E& e) const {  // one mean per statistic
    return e.mean(Idx<1>{1});
  }
  template <class V>
  auto per_stat(const V& v) const {
    return v.reshape(Idx<2>{R, 1}).broadcast(Idx<2>{1, C});
  }
  template <class V>
  auto per_param(const V& v) const {
    return v.reshape(Idx<2>{1, C}).broadcast(Idx<2>{R, 1});
  }
  template <class E>
  auto param_sum(const E& e) const {
    return e.sum(Idx<1>{0});
  }
};
// BatchNorm's (N, C, H, W) as P x C x S: nchw N x C x HW, nhwc NHW x C x 1, nc N x C x 1
// (the same reductions as over the 4-d tensor's axes {0, 2, 3} or {0, 1, 2}).
struct Channels {
  Index P, C, S;
  using Tensor = T3;
  Map<3> map(float* data) const { return {data, P, C, S}; }
  template <class E>
  auto stats(const E& e) const {
    return e.mean(Idx<2>{0, 2});
  }
  template <class V>
  auto per_stat(const V& v) const {
    return v.reshape(Idx<3>{1, C, 1}).broadcast(Idx<3>{P, 1, S});
  }
  template <class V>
  auto per_param(const V& v) const {
    return per_stat(v);
  }
  template <class E>
  auto param_sum(const E& e) const {
    return e.sum(Idx<2>{0, 2});
  }
};

// Training forward:  y = (x - mean) * rsqrt(mean((x - mean)^2) + eps) * w + b
//   (RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w);
// eval (BatchNorm):  y = (x - running_mean) * rsqrt(running_var + eps) * w + b;
// backward from the saved statistics, g = w * dy (mean = 0 for RMSNorm):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (RMSNorm: without mean(g))
//   plus dw += sum(dy * xhat), db += sum(dy) over all but the parameter axis.
// Every assignment runs on `device`: Eigen::DefaultDevice (t1) or the pool (t2).
template <class Axes, class Device>
void run_eigen(benchmark::State& st, const Case& c, Problem& p, const Axes& axes,
               const Device& device) {
  using Tensor = typename Axes::Tensor;
  auto x = axes.map(p.x.data()), dy = axes.map(p.dy.data()), out = axes.map(p.out.data());
  auto mean_of = [&](const auto& e) { return axes.per_stat(axes.stats(e).eval()); };
  const bool centered = c.norm != Norm::rms;  // RMSNorm: no mean, no bias
  const float eps = float(c.eps());
  if (c.pass == Pass::fwd_eval) {
    T1 running_mean(c.channels()), running_var(c.channels());  // as a fresh BatchNorm's
    running_mean.setZero(), running_var.setConstant(1.0f);
    measure(st, c.bytes(), c.threads, [&] {
      out.device(device) = (x - axes.per_stat(running_mean)) *
                               axes.per_stat((running_var + eps).rsqrt()) *
                               axes.per_param(p.weight) +
                           axes.per_param(p.bias);
      return out.data();
    });
  } else if (c.pass == Pass::fwd) {
    measure(st, c.bytes(), c.threads, [&] {
      if (centered) {
        Tensor xc(x.dimensions());
        xc.device(device) = x - mean_of(x);
        out.device(device) = xc * (mean_of(xc * xc) + eps).rsqrt() * axes.per_param(p.weight) +
                             axes.per_param(p.bias);
      } else {
        out.device(device) = x * (mean_of(x * x) + eps).rsqrt() * axes.per_param(p.weight);
      }
      return out.data();
    });
  } else {
    T1 mean = axes.stats(x);
    if (!centered) mean.setZero();
    const Tensor xc = x - axes.per_stat(mean);
    const T1 rstd = (axes.stats(xc * xc) + eps).rsqrt();
    T1 dw(c.channels()), db(c.channels());
    dw.setZero(), db.setZero();
    measure(st, c.bytes(), c.threads, [&] {
      Tensor g(x.dimensions()), xhat(x.dimensions());
      g.device(device) = dy * axes.per_param(p.weight);
      if (centered) {
        xhat.device(device) = (x - axes.per_stat(mean)) * axes.per_stat(rstd);
        out.device(device) = (g - mean_of(g) - xhat * mean_of(g * xhat)) * axes.per_stat(rstd);
        db.device(device) += axes.param_sum(dy);
      } else {
        xhat.device(device) = x * axes.per_stat(rstd);
        out.device(device) = (g - xhat * mean_of(g * xhat)) * axes.per_stat(rstd);
      }
      dw.device(device) += axes.param_sum(dy * xhat);
      return out.data();
    });
  }
}

void bench_eigen(benchmark::State& st, const Case& c) {
  Problem& p = problem(c);
  auto run = [&](const auto& axes) {
    if (c.threads == 1)
      run_eigen(st, c, p, axes, Eigen::DefaultDevice());
    else
      run_eigen(st, c, p, axes, thread_pool_device());
  };
  if (c.norm != Norm::batch) return run(Rows{c.dims[0], c.dims[1]});
  const Index P = c.dims[0] * (c.layout == Layout::nhwc ? c.spatial() : 1);
  run(Channels{P, c.channels(), c.elements() / (P * c.channels())});
}

#ifdef NORMLAYERS_BENCH_ONEDNN
// oneDNN layer or batch normalization (the two share their API) with scale and
// shift on our buffers: forward_training; eval as forward_inference with the
// training forward's statistics as global statistics; backward.
template <class Forward, class Backward>
void run_onednn(benchmark::State& st, const Case& c, const dnnl::memory::desc& md) {
  using dnnl::memory;
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  Problem& p = problem(c);
  const memory::desc vd({c.channels()}, memory::data_type::f32, memory::format_tag::x);
  auto wrap = [&](const memory::desc& d, const float* data) {
    return memory(d, eng, const_cast<float*>(data));
  };
  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  const float eps = float(c.eps());
  const typename Forward::primitive_desc fpd({dnnl::prop_kind::forward_training, md, eps, flags},
                                             eng);
  T1 dw(c.channels()), db(c.channels());
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, wrap(md, p.x.data())},
                                          {DNNL_ARG_DST, wrap(md, p.out.data())},
                                          {DNNL_ARG_MEAN, memory(fpd.mean_desc(), eng)},
                                          {DNNL_ARG_VARIANCE, memory(fpd.variance_desc(), eng)},
                                          {DNNL_ARG_SCALE, wrap(vd, p.weight.data())},
                                          {DNNL_ARG_SHIFT, wrap(vd, p.bias.data())}};
  dnnl::primitive prim = Forward(fpd);
  prim.execute(s, args);  // the statistics for the backward and for eval
  s.wait();
  if (c.pass == Pass::fwd_eval) {
    prim = Forward(
        typename Forward::primitive_desc({dnnl::prop_kind::forward_inference, md, eps,
                                          flags | dnnl::normalization_flags::use_global_stats},
                                         eng));
  } else if (c.pass == Pass::bwd) {
    args.erase(DNNL_ARG_DST);  // 2.6 wants SHIFT among the backward's arguments: it stays
    args.insert({{DNNL_ARG_DIFF_DST, wrap(md, p.dy.data())},
                 {DNNL_ARG_DIFF_SRC, wrap(md, p.out.data())},
                 {DNNL_ARG_DIFF_SCALE, wrap(vd, dw.data())},
                 {DNNL_ARG_DIFF_SHIFT, wrap(vd, db.data())}});
    prim = Backward(typename Backward::primitive_desc(
        {dnnl::prop_kind::backward, md, md, eps, flags}, eng, fpd));
  }
  measure(st, c.bytes(), c.threads, [&] {
    prim.execute(s, args);
    s.wait();
    return p.out.data();
  });
}

void bench_onednn(benchmark::State& st, const Case& c) {
  using tag = dnnl::memory::format_tag;
  const dnnl::memory::desc md(c.dims, dnnl::memory::data_type::f32,
                              c.layout == Layout::nhwc ? tag::nhwc
                              : c.dims.size() == 4     ? tag::nchw
                                                       : tag::ab);
  if (c.norm == Norm::layer)
    run_onednn<dnnl::layer_normalization_forward, dnnl::layer_normalization_backward>(st, c, md);
  else
    run_onednn<dnnl::batch_normalization_forward, dnnl::batch_normalization_backward>(st, c, md);
}
#endif

#ifdef NORMLAYERS_BENCH_TORCH
// A tensor of c's logical dims over one of our buffers; nhwc: channels-last
// strides (a permuted view, already ChannelsLast-contiguous, so no copy).
at::Tensor torch_view(const Case& c, T1& buffer) {
  at::Tensor t = at::from_blob(buffer.data(), c.storage_dims());
  if (c.layout == Layout::nhwc)
    t = t.permute({0, 3, 1, 2}).contiguous(at::MemoryFormat::ChannelsLast);
  return t;
}

// ATen as users call it (outputs allocated per call): each layer's native or
// functional op, its native backward op where ATen has one (LayerNorm,
// BatchNorm, GroupNorm) on the statistics of a forward at setup; RMSNorm
// (composed, no fused CPU op) and InstanceNorm (a view onto batch_norm)
// differentiated by autograd through a graph built once. Freed blocks are
// reused in this process (see main()), where a standalone program would map
// outputs of 32 MiB or more afresh, and fault them in, on every call.
void bench_torch(benchmark::State& st, const Case& c) {
  Problem& p = problem(c);
  const at::Tensor x = torch_view(c, p.x), dy = torch_view(c, p.dy);
  const at::Tensor w = at::ones({c.channels()}), b = at::zeros({c.channels()});
  const at::Tensor running_mean = at::zeros({c.channels()}), running_var = at::ones({c.channels()});
  const Index N = c.dims[0], C = c.channels(), HxW = c.spatial();
  const double eps = c.eps(), momentum = 0.1;
  const bool fwd = c.pass != Pass::bwd;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> saved;  // y and the saved statistics
  at::Tensor xg, wg, bg, y;                              // a graph for autograd
  auto by_autograd = [&](auto forward) {  // the graph is kept: each iteration is the backward only
    xg = x.detach().requires_grad_();
    wg = w.detach().requires_grad_();
    bg = b.detach().requires_grad_();
    y = forward(xg, wg, bg);
    return [&] {
      return torch::autograd::grad({y}, {xg, wg, bg}, {dy}, /*retain_graph=*/true,
                                   /*create_graph=*/false, /*allow_unused=*/true)[0];
    };
  };
  std::function<at::Tensor()> step;
  switch (c.norm) {
    case Norm::layer:
      saved = at::native_layer_norm(x, {C}, w, b, eps);
      if (fwd)
        step = [&] { return std::get<0>(at::native_layer_norm(x, {C}, w, b, eps)); };
      else
        step = [&] {
          return std::get<0>(at::native_layer_norm_backward(
              dy, x, {C}, std::get<1>(saved), std::get<2>(saved), w, b, {true, true, true}));
        };
      break;
    case Norm::rms: {
      auto rms = [&](const at::Tensor& xx, const at::Tensor& ww, const at::Tensor&) {
        return ww * (xx * at::rsqrt(xx.pow(2).mean(-1, true) + eps));
      };
      if (fwd)
        step = [&] { return rms(x, w, b); };
      else
        step = by_autograd(rms);
      break;
    }
    case Norm::batch:
      saved = at::native_batch_norm(x, w, b, running_mean, running_var, true, momentum, eps);
      if (fwd)
        step = [&] {
          return at::batch_norm(x, w, b, running_mean, running_var, c.pass == Pass::fwd, momentum,
                                eps, /*cudnn_enabled=*/false);
        };
      else
        step = [&] {
          return std::get<0>(at::native_batch_norm_backward(dy, x, w, running_mean, running_var,
                                                            std::get<1>(saved), std::get<2>(saved),
                                                            true, eps, {true, true, true}));
        };
      break;
    case Norm::group:
      saved = at::native_group_norm(x, w, b, N, C, HxW, c.groups, eps);
      if (fwd)
        step = [&] {
          return std::get<0>(at::native_group_norm(x, w, b, N, C, HxW, c.groups, eps));
        };
      else
        step = [&] {
          return std::get<0>(at::native_group_norm_backward(dy, x, std::get<1>(saved),
                                                            std::get<2>(saved), w, N, C, HxW,
                                                            c.groups, {true, true, true}));
        };
      break;
    case Norm::instance: {
      auto instance_norm = [&](const at::Tensor& xx, const at::Tensor& ww, const at::Tensor& bb) {
        return at::instance_norm(xx, ww, bb, {}, {}, /*use_input_stats=*/true, momentum, eps,
                                 /*cudnn_enabled=*/false);
      };
      if (fwd)
        step = [&] { return instance_norm(x, w, b); };
      else
        step = by_autograd(instance_norm);
      break;
    }
  }
  measure(st, c.bytes(), c.threads, step);
}
#endif

// ---------------------------------------------------------------- registration

const std::vector<Baseline>& baselines() {
  static const std::vector<Baseline> list = {
      {"eigen", [](const Case& c) { return c.norm != Norm::group && c.norm != Norm::instance; },
       bench_eigen},
#ifdef NORMLAYERS_BENCH_ONEDNN
      {"onednn", [](const Case& c) { return c.norm == Norm::layer || c.norm == Norm::batch; },
       bench_onednn},
#endif
#ifdef NORMLAYERS_BENCH_TORCH
      {"torch", [](const Case&) { return true; }, bench_torch},
#endif
  };
  return list;
}

// Our cases in registration order (the targets section reads their results).
std::vector<Case> our_cases;

template <class Fn>
void add(const std::string& name, Fn fn) {
  benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// Per shape: the memcpy rooflines, then per case (t1 and t2 next to each other)
// its baselines before ours (our vs_<baseline> counters read their results).
void register_all() {
  struct Shape {
    std::vector<Index> dims;
    std::vector<Norm> norms;
    std::vector<Layout> layouts;
    Index groups = 0;
  };
  const Shape shapes[] = {
      {{8192, 1024}, {Norm::layer, Norm::rms}, {Layout::row}},
      {{64, 768}, {Norm::layer, Norm::rms}, {Layout::row}},
      {{4096, 4096}, {Norm::layer, Norm::rms}, {Layout::row}},
      {{32, 64, 56, 56}, {Norm::batch}, {Layout::nchw, Layout::nhwc}},
      {{256, 1024}, {Norm::batch}, {Layout::nc}},  // BatchNorm1d
      {{8, 320, 32, 32}, {Norm::group}, {Layout::nchw, Layout::nhwc}, 32},
      {{2, 320, 64, 64}, {Norm::group}, {Layout::nchw, Layout::nhwc}, 32},
      {{8, 64, 128, 128}, {Norm::instance}, {Layout::nchw, Layout::nhwc}},
  };
  for (const Shape& shape : shapes) {
    for (Pass pass : {Pass::fwd, Pass::bwd})
      for (int threads : thread_counts) {
        const Case c{shape.norms[0], pass, shape.dims, shape.layouts[0], threads};
        add("memcpy/" + c.shape() + "/" + c.pass_name() + "/t" + std::to_string(threads),
            [bytes = c.bytes(), threads](benchmark::State& st) {
              bench_memcpy(st, bytes, threads);
            });
      }
    for (Norm norm : shape.norms)
      for (Layout layout : shape.layouts)
        for (Pass pass : {Pass::fwd, Pass::fwd_eval, Pass::bwd}) {
          if (pass == Pass::fwd_eval && norm != Norm::batch) continue;  // the same as fwd
          for (int threads : thread_counts) {
            const Case c{norm, pass, shape.dims, layout, threads, shape.groups};
            for (const Baseline& b : baselines())
              if (b.applies(c))
                add(c.name() + "/" + b.suffix, [c, run = b.run](benchmark::State& st) {
                  set_baseline_threads(c.threads);
                  run(st, c);
                });
            add(c.name(), [c](benchmark::State& st) { bench_ours(st, c); });
            our_cases.push_back(c);
          }
        }
  }
}

// ---------------------------------------------------------------- summary

// The console reporter, also recording each run (the best of repetitions).
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration || run.error_occurred || run.iterations == 0) continue;
      Result r{run.run_name.function_name, run.real_accumulated_time / double(run.iterations), {}};
      for (const auto& [key, counter] : run.counters) r.counters[key] = counter.value;
      auto it = std::find_if(results.begin(), results.end(),
                             [&](const Result& old) { return old.name == r.name; });
      if (it == results.end())
        results.push_back(std::move(r));
      else if (r.seconds_per_iter < it->seconds_per_iter)
        *it = std::move(r);
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

std::string format(double value, const char* fmt) {
  char buf[32];
  std::snprintf(buf, sizeof buf, fmt, value);
  return buf;
}
std::string format(const Result& r, const std::string& counter, const char* fmt, double scale = 1) {
  const auto it = r.counters.find(counter);
  return it == r.counters.end() ? "" : format(it->second * scale, fmt);
}

// Each of our t1 cases on a large tensor: its roofline against the goal (fwd
// 0.75, bwd 0.55) and our t2 speed-up (t1 time / t2 time), from this run's
// results. Appends Markdown to `md` and JSON entries to `json`.
void write_targets(std::string& md, std::string& json) {
  md +=
      "\nTargets: our t1 roofline >= 0.75 (fwd, fwd_eval) / >= 0.55 (bwd) on tensors of >= 1 Mi"
      " elements; t2/t1 = our t1 time / our t2 time.\n\n"
      "| case | roofline t1 | target | met | t2/t1 |\n|---|---:|---:|:---:|---:|\n";
  json += ",\n  \"targets\": [";
  int met = 0, total = 0;
  for (const Case& c : our_cases) {
    if (c.threads != 1 || !c.large()) continue;
    const Result* t1 = find_result(c.name());
    if (!t1) continue;  // filtered out
    Case c2 = c;
    c2.threads = pool_threads;
    const Result* t2 = find_result(c2.name());
    const double roofline = t1->counters.at("roofline");
    const double target = c.pass == Pass::bwd ? 0.55 : 0.75;
    const bool ok = roofline >= target;
    met += ok, ++total;
    const std::string speedup =
        t2 ? format(t1->seconds_per_iter / t2->seconds_per_iter, "%.2f") : "";
    md += "| " + c.stem() + " | " + format(roofline, "%.3f") + " | " + format(target, "%.2f") +
          " | " + (ok ? "yes" : "**no**") + " | " + speedup + " |\n";
    json += std::string(total == 1 ? "\n" : ",\n") + "    {\"case\": \"" + c.stem() +
            "\", \"roofline_t1\": " + format(roofline, "%.3f") +
            ", \"target\": " + format(target, "%.2f") + ", \"met\": " + (ok ? "true" : "false") +
            (t2 ? ", \"t2_over_t1\": " + speedup : "") + "}";
  }
  md += "\nTargets met: " + std::to_string(met) + " of " + std::to_string(total) + "\n";
  json += "\n  ]";
}

void write_summary() {
  std::vector<std::string> columns = {"roofline"};
  for (const Baseline& b : baselines()) columns.push_back(std::string("vs_") + b.suffix);

  std::string md = "| case | GB/s |";
  std::string rule = "|---|---:|";
  for (const std::string& col : columns) md += " " + col + " |", rule += "---:|";
  md += "\n" + rule + "\n";
  std::string json = "{\n  \"unit\": \"GB/s = 1e9 bytes/s\",\n  \"cases\": [";
  for (const Result& r : results) {
    md += "| " + r.name + " | " + format(r, "bytes_per_second", "%.3g", 1e-9) + " |";
    json += std::string(&r == &results.front() ? "\n" : ",\n") + "    {\"name\": \"" + r.name +
            "\", \"us_per_iter\": " + std::to_string(r.seconds_per_iter * 1e6) +
            ", \"GB/s\": " + format(r, "bytes_per_second", "%.4g", 1e-9);
    for (const std::string& col : columns) {
      const std::string value = format(r, col, "%.3f");
      md += " " + value + " |";
      if (!value.empty()) json += ", \"" + col + "\": " + value;
    }
    md += "\n", json += "}";
  }
  json += "\n  ]";
  write_targets(md, json);
  json += "\n}\n";

  std::fputs(("\n" + md).c_str(), stdout);
  const char* env = std::getenv("NORMLAYERS_BENCH_OUT");
  const std::string dir = env && *env ? std::string(env) + "/" : std::string();
  for (const auto& [file, text] :
       {std::pair{"normlayers_bench.md", &md}, std::pair{"normlayers_bench_summary.json", &json}}) {
    const std::string path = dir + file;
    if (std::FILE* f = std::fopen(path.c_str(), "w")) {
      std::fputs(text->c_str(), f);
      std::fclose(f);
      std::printf("wrote %s\n", path.c_str());
    } else {
      std::fprintf(stderr, "normlayers_bench: cannot write %s\n", path.c_str());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Memory freed by a case stays in the process and serves the next allocation
  // (no mmap per large block, no trimming): baselines that allocate their outputs
  // and temporaries on every call (ATen, the plain Eigen expressions) then time
  // their kernels, not the first touch of fresh pages, which costs ~15 us per
  // 4 KiB page in the sandboxes this runs in (30-60x a native page fault).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  SummaryReporter reporter(isatty(STDOUT_FILENO) ? SummaryReporter::OO_Color
                                                 : SummaryReporter::OO_None);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  if (!results.empty()) write_summary();
  benchmark::Shutdown();
  return 0;
}
