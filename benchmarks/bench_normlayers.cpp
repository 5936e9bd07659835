// SPDX-License-Identifier: MIT
// Placeholder so the benchmark wiring builds and runs; to be replaced by the real benchmarks.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

// Roofline: memcpy of n floats, counted as one read and one write.
static void BW_copy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<float> src(n, 1.0f), dst(n, 0.0f);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(2 * n * sizeof(float)));
}
BENCHMARK(BW_copy)->Arg(64 * 768)->Arg(8192 * 1024);

BENCHMARK_MAIN();
