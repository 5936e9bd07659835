// SPDX-License-Identifier: MIT
#pragma once

// normlayers::Parallel: where a layer runs its loops. Default: the calling
// thread. Constructed from an Eigen::ThreadPoolDevice (define
// EIGEN_USE_THREADS before including Eigen to have it), the loops over
// independent statistics run on the device's threads:
//
//   Eigen::ThreadPool pool(2);
//   Eigen::ThreadPoolDevice device(&pool, 2);
//   layer.set_parallel(normlayers::Parallel(device));   // device must outlive the use
//
// Work is cut into pieces whose boundaries depend only on the tensor's shape,
// and partial results are combined in a fixed order, so outputs and gradients
// are bitwise identical for any number of threads.

#include <functional>
#include <utility>

#include <unsupported/Eigen/CXX11/Tensor>

namespace normlayers {

class Parallel {
 public:
  using Index = Eigen::Index;
  using Range = std::function<void(Index, Index)>;

  // Runs everything on the calling thread.
  Parallel() = default;

  // Loops touching fewer bytes than this run on the calling thread by default:
  // handing cache-resident work to another thread costs more than it saves.
  // Measured on a 2-core AMD EPYC (1 MiB L2 per core, BatchNorm and LayerNorm
  // on rows of 1024): a second thread starts to pay at 3 MiB of input forward
  // (6 MiB read + written) and 2 MiB backward (6 MiB), and costs up to 2.5x
  // below (0.3-0.8x at 0.2-2 MiB forward).
  static constexpr double default_min_bytes = 6.0 * 1024 * 1024;

  // Runs on the threads of `device` (anything with numThreads() and
  // parallelFor(n, Eigen::TensorOpCost, std::function<void(Index, Index)>),
  // such as Eigen::ThreadPoolDevice), which must outlive this object's use.
  // Loops touching fewer than min_bytes stay on the calling thread.
  template <typename Device>
  explicit Parallel(const Device& device, double min_bytes = default_min_bytes)
      : threads_(device.numThreads()),
        min_bytes_(min_bytes),
        run_([&device](Index n, double bytes_per_item, const Range& f) {
          device.parallelFor(n, Eigen::TensorOpCost(bytes_per_item, bytes_per_item, bytes_per_item),
                             f);
        }) {}

  int num_threads() const noexcept { return threads_; }

  // The threads a loop touching `bytes` in all runs on: 1 below min_bytes
  // (or without a device), else num_threads().
  int threads_for(double bytes) const noexcept {
    return !run_ || bytes < min_bytes_ ? 1 : threads_;
  }

  // Calls f(first, last) over ranges that cover [0, n) once, possibly
  // concurrently. Items must be independent; `bytes_per_item` (memory an item
  // touches) guides how finely the work is cut.
  template <typename F>
  void for_ranges(Index n, double bytes_per_item, F&& f) const {
    if (n <= 0) return;
    if (n == 1 || threads_for(double(n) * bytes_per_item) <= 1) {
      f(Index(0), n);
      return;
    }
    run_(n, bytes_per_item, Range(std::ref(f)));
  }

 private:
  int threads_ = 1;
  double min_bytes_ = default_min_bytes;
  std::function<void(Index, double, const Range&)> run_;
};

}  // namespace normlayers
