// SPDX-License-Identifier: MIT
#pragma once

// Running statistics (BatchNorm, InstanceNorm with track_running_stats):
// running_mean, running_var and num_batches_tracked with PyTorch's names,
// semantics and update rule:
//   factor = momentum, or 1 / num_batches_tracked when momentum is unset
//   running_mean = (1 - factor) * running_mean + factor * batch_mean
//   running_var  = (1 - factor) * running_var  + factor * batch_var_unbiased

#include <cstdint>
#include <optional>
#include <string_view>

#include <normlayers/detail/scalar.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/span.hpp>

namespace normlayers::detail {

inline void check_momentum(const char* layer, const std::optional<double>& momentum) {
  if (momentum && !(*momentum >= 0.0 && *momentum <= 1.0))
    throw_invalid(layer, "momentum is ", *momentum, ", expected a value in [0, 1] or unset");
}

// running = (1 - factor) * running + factor * batch, for n channels.
template <typename P, typename Acc>
void blend_running_stats(P* running_mean, P* running_var, Index n, const Acc* batch_mean,
                         const Acc* batch_var_unbiased, double factor) noexcept {
  for (Index c = 0; c < n; ++c) {
    running_mean[c] = static_cast<P>((1.0 - factor) * double(running_mean[c]) +
                                     factor * double(batch_mean[c]));
    running_var[c] = static_cast<P>((1.0 - factor) * double(running_var[c]) +
                                    factor * double(batch_var_unbiased[c]));
  }
}

template <typename P>
class running_stats {
 public:
  using vector_type = Eigen::Tensor<P, 1>;

  bool tracks_running_stats() const noexcept { return track_; }
  // Throw std::logic_error when the layer does not track running statistics.
  vector_type& running_mean() { return tracked(running_mean_, "running_mean"); }
  const vector_type& running_mean() const { return tracked(running_mean_, "running_mean"); }
  vector_type& running_var() { return tracked(running_var_, "running_var"); }
  const vector_type& running_var() const { return tracked(running_var_, "running_var"); }
  std::int64_t& num_batches_tracked() {
    return tracked(num_batches_tracked_, "num_batches_tracked");
  }
  std::int64_t num_batches_tracked() const {
    return tracked(num_batches_tracked_, "num_batches_tracked");
  }

  // running_mean to 0, running_var to 1, num_batches_tracked to 0.
  void reset_running_stats() {
    running_mean_.setZero();
    running_var_.setConstant(P(1));
    num_batches_tracked_ = 0;
  }

  // f(std::string_view name, buffer&) for "running_mean", "running_var"
  // (vector_type) and "num_batches_tracked" (std::int64_t), when tracked.
  template <typename F>
  void for_each_buffer(F&& f) {
    if (!track_) return;
    f(std::string_view("running_mean"), running_mean_);
    f(std::string_view("running_var"), running_var_);
    f(std::string_view("num_batches_tracked"), num_batches_tracked_);
  }

 protected:
  running_stats(const char* layer, Index n, bool track, std::optional<double> momentum)
      : layer_(layer), track_(track), momentum_(momentum) {
    check_momentum(layer, momentum);
    if (track_) running_mean_.resize(n), running_var_.resize(n);
    reset_running_stats();
  }

  // One training step: counts the batch and blends in its statistics.
  template <typename Acc>
  void update_running_stats(const Acc* batch_mean, const Acc* batch_var_unbiased) noexcept {
    ++num_batches_tracked_;
    const double factor = momentum_ ? *momentum_ : 1.0 / double(num_batches_tracked_);
    blend_running_stats(running_mean_.data(), running_var_.data(), running_mean_.size(),
                        batch_mean, batch_var_unbiased, factor);
  }

  // InstanceNorm's step: blends per-channel batch statistics with factor
  // momentum, or 0 when it is unset (as PyTorch); no batch count.
  template <typename Acc>
  void blend_without_count(const Acc* batch_mean, const Acc* batch_var_unbiased) noexcept {
    blend_running_stats(running_mean_.data(), running_var_.data(), running_mean_.size(),
                        batch_mean, batch_var_unbiased, momentum_.value_or(0.0));
  }

  span<const P> running_mean_span() const {
    return track_ ? span<const P>(running_mean_) : span<const P>();
  }
  span<const P> running_var_span() const {
    return track_ ? span<const P>(running_var_) : span<const P>();
  }

 private:
  template <typename V>
  V& tracked(V& v, const char* what) const {
    if (!track_)
      throw_misuse(layer_, what, " requested, but track_running_stats is false");
    return v;
  }
  const char* layer_;
  bool track_;
  std::optional<double> momentum_;
  vector_type running_mean_, running_var_;
  std::int64_t num_batches_tracked_ = 0;
};

}  // namespace normlayers::detail
