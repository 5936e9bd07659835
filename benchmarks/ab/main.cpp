// SPDX-License-Identifier: MIT
// A/B of two builds of the library in one process (see run.sh): calls of
// build A, build B and a memcpy of the same bytes, interleaved in blocks of
// `calls` (the first of each block untimed), the order rotated every round;
// prints the median times, each build's fraction of the memcpy, B/A, and
// whether the two builds' outputs (y, or dx) are bitwise equal.
// Separate processes, or one full benchmark run against another, differ by
// 10-30 % on shared hosts for the same code; this does not (an A/A build
// reads 1.00-1.02).
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

void ab_run_a(const std::string& kind, bool nhwc, int mode, float* x, float* dy, float* y,
              const int* d, std::vector<float>* extra = nullptr);
void ab_run_b(const std::string& kind, bool nhwc, int mode, float* x, float* dy, float* y,
              const int* d, std::vector<float>* extra = nullptr);

namespace {

// 64-byte aligned, as an Eigen::Tensor's data under AVX-512 (what the
// benchmark suite and most users pass); a std::vector's is 16-byte aligned
// here, so every packet load of a kernel would straddle two cache lines.
struct AlignedFloats {
  explicit AlignedFloats(std::size_t count)
      : p(static_cast<float*>(std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64))),
        n(count) {
    std::fill(p, p + n, 0.0f);
  }
  ~AlignedFloats() { std::free(p); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data() { return p; }
  float* begin() { return p; }
  float* end() { return p + n; }
  float& operator[](std::size_t i) { return p[i]; }
  float* p;
  std::size_t n;
};

struct Shape {
  const char* kind;
  bool nhwc;
  int d[4];
};

// The benchmark suite's shapes (channels-last dims in storage order).
const std::map<std::string, Shape> shapes = {
    {"ln8192", {"ln", false, {8192, 1024, 1, 1}}},
    {"ln4096", {"ln", false, {4096, 4096, 1, 1}}},
    {"ln64", {"ln", false, {64, 768, 1, 1}}},
    {"rms8192", {"rms", false, {8192, 1024, 1, 1}}},
    {"rms4096", {"rms", false, {4096, 4096, 1, 1}}},
    {"bn_nchw", {"bn", false, {32, 64, 56, 56}}},
    {"bn_nhwc", {"bn", true, {32, 56, 56, 64}}},
    {"gn_nchw", {"gn", false, {8, 320, 32, 32}}},
    {"gn_nhwc", {"gn", true, {8, 32, 32, 320}}},
    {"gn2_nchw", {"gn", false, {2, 320, 64, 64}}},
    {"gn2_nhwc", {"gn", true, {2, 64, 64, 320}}},
    {"in_nchw", {"in", false, {8, 64, 128, 128}}},
    {"in_nhwc", {"in", true, {8, 128, 128, 64}}},
    {"bn_2d", {"bn", true, {256, 1, 1, 1024}}},  // [256, 1024]: C last, as BatchNorm1d's
    // Short runs (small feature maps, not in the suite): CIFAR-style 8x8,
    // ResNet-50's last stage, 4x4 maps, GroupNorm on [N, C] (1x1) and with
    // groups of 784 values, GroupNorm in Mask R-CNN's heads (7x7, 14x14),
    // 10x10 maps, ResNet-50's last stage channels-last.
    {"bn_cifar", {"bn", false, {128, 64, 8, 8}}},
    {"bn_r50", {"bn", false, {32, 2048, 7, 7}}},
    {"in_r50", {"in", false, {32, 2048, 7, 7}}},
    {"gn_r50", {"gn", false, {32, 2048, 7, 7}}},
    {"in_4x4", {"in", false, {128, 1024, 4, 4}}},
    {"gn_1x1", {"gn", false, {2048, 1024, 1, 1}}},
    {"gn_7x7", {"gn", false, {64, 512, 7, 7}}},
    {"gn_14", {"gn", false, {128, 256, 14, 14}}},
    {"gn_roi7", {"gn", false, {512, 256, 7, 7}}},
    {"in_14", {"in", false, {128, 256, 14, 14}}},
    {"in_10", {"in", false, {256, 256, 10, 10}}},
    {"gn_10", {"gn", false, {256, 256, 10, 10}}},
    {"bn_r50_nhwc", {"bn", true, {32, 7, 7, 2048}}},
    {"in_r50_nhwc", {"in", true, {32, 7, 7, 2048}}},
    {"gn_r50_nhwc", {"gn", true, {32, 7, 7, 2048}}},
    {"gn_28", {"gn", false, {32, 256, 28, 28}}},
    {"gn_big", {"gn", false, {8, 320, 128, 128}}},
    {"gn_16", {"gn", false, {16, 640, 16, 16}}},  // a UNet's 16x16 level
    {"bn_14", {"bn", false, {32, 1024, 14, 14}}},
    {"bn_14s", {"bn", false, {32, 512, 14, 14}}},
    {"bn_r50s", {"bn", false, {16, 2048, 7, 7}}},
    // Short rows over trailing dims: per-head norms (QK-norm over a head of
    // 64 or 128 values), small feature vectors.
    {"ln_r64", {"ln", false, {131072, 64, 1, 1}}},
    {"rms_r64", {"rms", false, {131072, 64, 1, 1}}},
    {"rms_r128", {"rms", false, {65536, 128, 1, 1}}},
    {"ln_r16", {"ln", false, {524288, 16, 1, 1}}},
    {"ln_r128", {"ln", false, {65536, 128, 1, 1}}},
    {"ln_r256", {"ln", false, {32768, 256, 1, 1}}},
    {"ln_r512", {"ln", false, {16384, 512, 1, 1}}},
    {"ln_r64c", {"ln", false, {2048, 64, 1, 1}}},  // cache-resident
};

double now_us() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !shapes.count(argv[1])) {
    std::fprintf(stderr, "usage: %s <case> [fwd|bwd|eval] [rounds] [calls]\ncases:", argv[0]);
    for (const auto& s : shapes) std::fprintf(stderr, " %s", s.first.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  mallopt(M_MMAP_MAX, 0);  // as the benchmark: freed memory is kept (no page faults)
  mallopt(M_TRIM_THRESHOLD, -1);
  const Shape& shape = shapes.at(argv[1]);
  const std::string pass = argc > 2 ? argv[2] : "fwd";
  const int mode = pass == "bwd" ? 1 : pass == "eval" ? 2 : 0;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 15, calls = argc > 4 ? std::atoi(argv[4]) : 4;
  const std::size_t n = std::size_t(shape.d[0]) * shape.d[1] * shape.d[2] * shape.d[3];
  AlignedFloats x(n), dy(n), y(n);
  std::srand(1);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = float(std::rand()) / float(RAND_MAX) * 2 - 1;
    dy[i] = float(std::rand()) / float(RAND_MAX) * 2 - 1;
  }
  // A memcpy of the bytes the pass is counted for (8 per element forward, 12 backward).
  const std::size_t half = n * sizeof(float) * (mode == 1 ? 3 : 2) / 2;
  std::vector<char> src(half, 1), dst(half, 0);
  std::vector<double> times[3];
  for (int r = 0; r < rounds; ++r)
    for (int k = 0; k < 3; ++k) {
      const int which = (k + r) % 3;
      for (int c = 0; c < calls; ++c) {
        const double start = now_us();
        if (which == 0)
          ab_run_a(shape.kind, shape.nhwc, mode, x.data(), dy.data(), y.data(), shape.d);
        else if (which == 1)
          ab_run_b(shape.kind, shape.nhwc, mode, x.data(), dy.data(), y.data(), shape.d);
        else
          std::memcpy(dst.data(), src.data(), half);
        if (c > 0) times[which].push_back(now_us() - start);
      }
    }
  const double a = median(times[0]), b = median(times[1]), m = median(times[2]);
  // The two builds' outputs (y, or dx for bwd) and what else the pass leaves
  // (the statistics a forward saves or updates, the parameter gradients of a
  // backward), compared bit for bit: a kernel change that only moves memory
  // traffic should change no value. The output buffers are first filled
  // with two different NaNs, so a value a build leaves unwritten differs (y
  // holds B's output from the timed calls).
  AlignedFloats out_b(n);
  const float nan_a = std::nanf("1"), nan_b = std::nanf("2");
  std::fill(y.begin(), y.end(), nan_a);
  std::fill(out_b.begin(), out_b.end(), nan_b);
  std::vector<float> extra_a, extra_b;
  ab_run_a(shape.kind, shape.nhwc, mode, x.data(), dy.data(), y.data(), shape.d, &extra_a);
  ab_run_b(shape.kind, shape.nhwc, mode, x.data(), dy.data(), out_b.data(), shape.d, &extra_b);
  const auto differing = [](const float* p, const float* q, std::size_t count) {
    std::size_t d = 0;
    for (std::size_t i = 0; i < count; ++i) d += std::memcmp(&p[i], &q[i], sizeof(float)) != 0;
    return d;
  };
  const std::size_t differ = differing(y.data(), out_b.data(), n);
  const std::size_t extra_differ =
      extra_a.size() != extra_b.size()
          ? std::max(extra_a.size(), extra_b.size())
          : differing(extra_a.data(), extra_b.data(), extra_a.size());
  const std::string extra_text =
      extra_a.empty() && extra_b.empty() ? ""
      : extra_differ ? ", " + std::to_string(extra_differ) + " of " +
                           std::to_string(extra_a.size()) +
                           (mode == 1 ? " parameter gradients differ" : " statistics differ")
                     : (mode == 1 ? ", parameter gradients too" : ", statistics too");
  std::printf("%s %s: A %.0f us (%.3f of memcpy)  B %.0f us (%.3f)  memcpy %.0f us  B/A %.3f  "
              "outputs %s%s\n",
              argv[1], pass.c_str(), a, m / a, b, m / b, m, a / b,
              differ ? (std::to_string(differ) + " values differ").c_str() : "bitwise equal",
              extra_text.c_str());
}
