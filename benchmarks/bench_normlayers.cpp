// SPDX-License-Identifier: MIT
// normlayers_bench: LayerNorm and RMSNorm, forward and backward, against the
// memory-bandwidth roofline and what users would pick instead, in one process
// so that every ratio comes from one run (see PERF.md).
//
// Case names: <Layer>/<fwd|bwd>/<rows>x<cols>/<layout>/t<threads>[/<baseline>],
// plus memcpy/<rows>x<cols>/<fwd|bwd>. Counters on every case:
//   roofline  its bytes/s over the bytes/s of a memcpy moving the same accounted
//             bytes (same working set), measured once per size in this process;
//   vs_<b>    (ours only) time of baseline <b> / our time, for each baseline that
//             ran earlier in this process (baselines are registered first).
// After the run a Markdown table goes to stdout, normlayers_bench.md and
// normlayers_bench_summary.json, in $NORMLAYERS_BENCH_OUT (default: cwd).
#include <benchmark/benchmark.h>
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
using T1 = Eigen::Tensor<float, 1, Eigen::RowMajor>;
using T2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
template <int N>
using Idx = Eigen::array<Eigen::Index, N>;

// ---------------------------------------------------------------- cases

enum class Pass { fwd, bwd };

struct Case {
  bool layer_norm;  // else RMSNorm
  Pass pass;
  Eigen::Index rows, cols;
  int threads;

  std::string shape() const { return std::to_string(rows) + "x" + std::to_string(cols); }
  const char* pass_name() const { return pass == Pass::fwd ? "fwd" : "bwd"; }
  std::string name() const {
    return std::string(layer_norm ? "LayerNorm/" : "RMSNorm/") + pass_name() + "/" + shape() +
           "/row/t" + std::to_string(threads);
  }
  // Minimal traffic: forward reads x, writes y; backward reads x, dy, writes dx.
  std::int64_t bytes() const {
    return std::int64_t(rows) * cols * std::int64_t(sizeof(float)) * (pass == Pass::fwd ? 2 : 3);
  }
  double eps() const {
    return layer_norm ? nl::LayerNormOptions{}.eps : std::numeric_limits<float>::epsilon();
  }
};

// x and dy (random) and one output buffer per shape, made and touched once and
// shared by every implementation, so no case pays page faults in its loop.
struct Problem {
  T2 x, dy, out;
  T1 weight, bias;  // ones and zeros, as the layers' defaults
};

Problem& problem(const Case& c) {
  static std::map<std::pair<Eigen::Index, Eigen::Index>, Problem> cache;
  auto [it, fresh] = cache.try_emplace({c.rows, c.cols});
  Problem& p = it->second;
  if (fresh) {
    p.x.resize(c.rows, c.cols), p.dy.resize(c.rows, c.cols), p.out.resize(c.rows, c.cols);
    p.x.setRandom(), p.dy.setRandom(), p.out.setZero();
    p.weight.resize(c.cols), p.bias.resize(c.cols);
    p.weight.setConstant(1.0f), p.bias.setZero();
  }
  return p;
}

// ---------------------------------------------------------------- roofline

// Two buffers of half the accounted bytes: one memcpy reads one and writes the
// other, moving (and touching) exactly the accounted bytes.
struct CopyBuffers {
  explicit CopyBuffers(std::int64_t accounted_bytes)
      : src(std::size_t(accounted_bytes / 2), 1), dst(src.size(), 0) {}
  void copy() { std::memcpy(dst.data(), src.data(), src.size()); }
  std::vector<char> src, dst;
};

// Bytes/s (read + write counted) of a 1-thread memcpy of this working set,
// measured once per size: the median of 7 timed runs of >= 25 ms. Not the best:
// bandwidth on these shared hosts drifts by 10-20 % between such runs, so a
// best-of reference reads ~0.85 against benchmark's own mean-over-a-run timing
// of the very same memcpy, where the median reads ~1.
double memcpy_bytes_per_second(std::int64_t accounted_bytes) {
  static std::map<std::int64_t, double> cache;
  double& bandwidth = cache[accounted_bytes];
  if (bandwidth > 0) return bandwidth;
  CopyBuffers buffers(accounted_bytes);
  buffers.copy();
  using clock = std::chrono::steady_clock;
  std::vector<double> runs;
  for (int run = 0; run < 7; ++run) {
    std::int64_t copies = 0;
    double seconds = 0;
    const auto start = clock::now();
    do {
      buffers.copy();
      benchmark::ClobberMemory();
      ++copies;
      seconds = std::chrono::duration<double>(clock::now() - start).count();
    } while (seconds < 0.025);
    runs.push_back(double(copies) * double(accounted_bytes) / seconds);
  }
  std::nth_element(runs.begin(), runs.begin() + 3, runs.end());
  return bandwidth = runs[3];
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
// tensor) and sets bytes/s, roofline and, for our cases (`speedups_of`
// non-empty), vs_<baseline> counters. The ratios use the loop's wall time
// (what UseRealTime reports, up to the loop's start/stop overhead), so they
// print as plain numbers rather than as rates.
template <class Step>
void measure(benchmark::State& st, std::int64_t bytes, Step&& step,
             const std::string& speedups_of = {}) {
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : st) {
    benchmark::DoNotOptimize(step());
    benchmark::ClobberMemory();
  }
  const double seconds_per_iter =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
      double(st.iterations());
  st.SetBytesProcessed(st.iterations() * bytes);
  st.counters["roofline"] = double(bytes) / seconds_per_iter / memcpy_bytes_per_second(bytes);
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

void bench_memcpy(benchmark::State& st, std::int64_t accounted_bytes) {
  CopyBuffers buffers(accounted_bytes);
  measure(st, accounted_bytes, [&] {
    buffers.copy();
    return buffers.dst.data();
  });
}

template <class Layer>
void run_ours(benchmark::State& st, const Case& c, Problem& p) {
  Layer layer({c.cols});
  layer.forward(p.x, p.out);  // backward needs a forward on x first
  auto step = [&] {
    if (c.pass == Pass::fwd)
      layer.forward(p.x, p.out);
    else
      layer.backward(p.x, p.dy, p.out);
    return p.out.data();
  };
  measure(st, c.bytes(), step, c.name());
}

// TODO(t2): run through an Eigen::ThreadPoolDevice when the layers take one.
void bench_ours(benchmark::State& st, const Case& c) {
  Problem& p = problem(c);
  if (c.layer_norm)
    run_ours<nl::LayerNorm<float>>(st, c, p);
  else
    run_ours<nl::RMSNorm<float>>(st, c, p);
}

// Plain Eigen Tensor expressions over the rows of an R x C row-major tensor,
// as an Eigen user writes them: every mean and broadcast is another sweep.
struct Rows {
  Eigen::Index R, C;
  template <class E>
  auto mean(const E& e) const {  // mean of each row, broadcast to R x C
    return e.mean(Idx<1>{1}).eval().reshape(Idx<2>{R, 1}).broadcast(Idx<2>{1, C});
  }
  template <class V>
  auto per_row(const V& v) const {
    return v.reshape(Idx<2>{R, 1}).broadcast(Idx<2>{1, C});
  }
  template <class V>
  auto per_col(const V& v) const {
    return v.reshape(Idx<2>{1, C}).broadcast(Idx<2>{R, 1});
  }
};

// Backward from the saved statistics, g = w * dy (mean = 0 for RMSNorm):
//   LN:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMS: dx = rstd * (g - xhat * mean(g * xhat))
// plus dw += sum_rows(dy * xhat), db += sum_rows(dy), as the layers do.
void bench_eigen(benchmark::State& st, const Case& c) {
  Problem& p = problem(c);
  const Rows rows{c.rows, c.cols};
  const float eps = float(c.eps());
  if (c.pass == Pass::fwd) {
    measure(st, c.bytes(), [&] {
      if (c.layer_norm) {
        T2 xc = p.x - rows.mean(p.x);
        p.out =
            xc * (rows.mean(xc * xc) + eps).rsqrt() * rows.per_col(p.weight) + rows.per_col(p.bias);
      } else {
        p.out = p.x * (rows.mean(p.x * p.x) + eps).rsqrt() * rows.per_col(p.weight);
      }
      return p.out.data();
    });
    return;
  }
  T1 mean(c.rows);
  mean.setZero();
  if (c.layer_norm) mean = p.x.mean(Idx<1>{1});
  T2 xc = p.x - rows.per_row(mean);
  const T1 rstd = ((xc * xc).mean(Idx<1>{1}) + eps).rsqrt();
  T1 dw(c.cols), db(c.cols);
  dw.setZero(), db.setZero();
  measure(st, c.bytes(), [&] {
    T2 g = p.dy * rows.per_col(p.weight);
    T2 xhat = c.layer_norm ? T2((p.x - rows.per_row(mean)) * rows.per_row(rstd))
                           : T2(p.x * rows.per_row(rstd));
    if (c.layer_norm)
      p.out = (g - rows.mean(g) - xhat * rows.mean(g * xhat)) * rows.per_row(rstd);
    else
      p.out = (g - xhat * rows.mean(g * xhat)) * rows.per_row(rstd);
    dw += (p.dy * xhat).sum(Idx<1>{0});
    if (c.layer_norm) db += p.dy.sum(Idx<1>{0});
    return p.out.data();
  });
}

#ifdef NORMLAYERS_BENCH_ONEDNN
// oneDNN layer normalization (forward_training, scale and shift) on our buffers.
void bench_onednn(benchmark::State& st, const Case& c) {
  using dnnl::memory;
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  Problem& p = problem(c);
  const memory::desc md({c.rows, c.cols}, memory::data_type::f32, memory::format_tag::ab);
  const memory::desc vd({c.cols}, memory::data_type::f32, memory::format_tag::x);
  auto wrap = [&](const memory::desc& d, const float* data) {
    return memory(d, eng, const_cast<float*>(data));
  };
  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  const float eps = float(c.eps());
  const dnnl::layer_normalization_forward::primitive_desc fpd(
      {dnnl::prop_kind::forward_training, md, eps, flags}, eng);
  T1 dw(c.cols), db(c.cols);
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, wrap(md, p.x.data())},
                                          {DNNL_ARG_DST, wrap(md, p.out.data())},
                                          {DNNL_ARG_MEAN, memory(fpd.mean_desc(), eng)},
                                          {DNNL_ARG_VARIANCE, memory(fpd.variance_desc(), eng)},
                                          {DNNL_ARG_SCALE, wrap(vd, p.weight.data())},
                                          {DNNL_ARG_SHIFT, wrap(vd, p.bias.data())}};
  dnnl::primitive prim = dnnl::layer_normalization_forward(fpd);
  prim.execute(s, args);  // the statistics for the backward
  s.wait();
  if (c.pass == Pass::bwd) {
    args.erase(DNNL_ARG_DST);  // 2.6 wants SHIFT among the backward's arguments: it stays
    args.insert({{DNNL_ARG_DIFF_DST, wrap(md, p.dy.data())},
                 {DNNL_ARG_DIFF_SRC, wrap(md, p.out.data())},
                 {DNNL_ARG_DIFF_SCALE, wrap(vd, dw.data())},
                 {DNNL_ARG_DIFF_SHIFT, wrap(vd, db.data())}});
    prim = dnnl::layer_normalization_backward(
        {{dnnl::prop_kind::backward, md, md, eps, flags}, eng, fpd});
  }
  measure(st, c.bytes(), [&] {
    prim.execute(s, args);
    s.wait();
    return p.out.data();
  });
}
#endif

#ifdef NORMLAYERS_BENCH_TORCH
// ATen as users call it (outputs allocated per call): LayerNorm through its
// native ops, RMSNorm composed (no fused CPU op) and differentiated by autograd.
void bench_torch(benchmark::State& st, const Case& c) {
  Problem& p = problem(c);
  auto view = [&](T2& t) { return at::from_blob(t.data(), {c.rows, c.cols}); };
  const at::Tensor x = view(p.x), dy = view(p.dy);
  const at::Tensor w = at::ones({c.cols}), b = at::zeros({c.cols});
  const double eps = c.eps();
  std::function<at::Tensor()> step;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> ln;  // y, saved mean, saved rstd
  at::Tensor xg, wg, y;                               // RMSNorm: a graph for autograd
  auto rms = [&](const at::Tensor& xx, const at::Tensor& ww) {
    return ww * (xx * at::rsqrt(xx.pow(2).mean(-1, true) + eps));
  };
  if (c.layer_norm && c.pass == Pass::fwd) {
    step = [&] { return std::get<0>(at::native_layer_norm(x, {c.cols}, w, b, eps)); };
  } else if (c.layer_norm) {
    ln = at::native_layer_norm(x, {c.cols}, w, b, eps);
    step = [&] {
      return std::get<0>(at::native_layer_norm_backward(dy, x, {c.cols}, std::get<1>(ln),
                                                        std::get<2>(ln), w, b, {true, true, true}));
    };
  } else if (c.pass == Pass::fwd) {
    step = [&] { return rms(x, w); };
  } else {  // the graph is kept, so each iteration is the backward only
    xg = x.detach().requires_grad_();
    wg = w.detach().requires_grad_();
    y = rms(xg, wg);
    step = [&] { return torch::autograd::grad({y}, {xg, wg}, {dy}, true)[0]; };
  }
  measure(st, c.bytes(), step);
}
#endif

// ---------------------------------------------------------------- registration

const std::vector<Baseline>& baselines() {
  static const std::vector<Baseline> list = {
      {"eigen", [](const Case&) { return true; }, bench_eigen},
#ifdef NORMLAYERS_BENCH_ONEDNN
      {"onednn", [](const Case& c) { return c.layer_norm; }, bench_onednn},
#endif
#ifdef NORMLAYERS_BENCH_TORCH
      {"torch", [](const Case&) { return true; }, bench_torch},
#endif
  };
  return list;
}

template <class Fn>
void add(const std::string& name, Fn fn) {
  benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// Per shape: the memcpy rooflines, then per case its baselines before ours
// (our vs_<baseline> counters read the baselines' results).
void register_all() {
  const std::pair<Eigen::Index, Eigen::Index> shapes[] = {{8192, 1024}, {64, 768}, {4096, 4096}};
  for (auto [rows, cols] : shapes) {
    for (Pass pass : {Pass::fwd, Pass::bwd}) {
      const Case c{true, pass, rows, cols, 1};
      add("memcpy/" + c.shape() + "/" + c.pass_name(),
          [bytes = c.bytes()](benchmark::State& st) { bench_memcpy(st, bytes); });
    }
    for (int threads : {1})  // t2: add 2 here once the layers take a thread pool
      for (bool layer_norm : {true, false})
        for (Pass pass : {Pass::fwd, Pass::bwd}) {
          const Case c{layer_norm, pass, rows, cols, threads};
          for (const Baseline& b : baselines())
            if (b.applies(c))
              add(c.name() + "/" + b.suffix, [c, run = b.run](benchmark::State& st) {
                set_baseline_threads(c.threads);
                run(st, c);
              });
          add(c.name(), [c](benchmark::State& st) { bench_ours(st, c); });
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

std::string format(const Result& r, const std::string& counter, const char* fmt, double scale = 1) {
  const auto it = r.counters.find(counter);
  if (it == r.counters.end()) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, fmt, it->second * scale);
  return buf;
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
  json += "\n  ]\n}\n";

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
