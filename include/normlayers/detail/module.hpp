// SPDX-License-Identifier: MIT
#pragma once

// What every module shares: train/eval mode, the allocating forms of forward
// and backward (over the caller-buffer forms the layer defines), and the
// statistics saved by the last forward together with that input's dims.
// Derived defines forward(x, y) and backward(x, dy, dx) and brings these in
// with `using base::forward; using base::backward;`.

#include <utility>
#include <vector>

#include <normlayers/detail/scalar.hpp>
#include <normlayers/detail/tensor.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/mode.hpp>
#include <normlayers/parallel.hpp>

namespace normlayers::detail {

template <typename Derived, typename Scalar>
class module_base : public Trainable {
  static_assert(is_supported_scalar_v<Scalar>, "normlayers supports float and double");

 public:
  using scalar_type = Scalar;
  using param_type = param_t<Scalar>;
  using acc_type = acc_t<Scalar>;
  using stats_type = Eigen::Tensor<acc_type, 1>;

  // y = layer(x) in a new tensor of x's dims, scalar and storage order.
  template <typename X>
  typename tensor_traits<X>::tensor forward(const X& x) {
    auto y = empty_like(x);
    static_cast<Derived&>(*this).forward(x, y);
    return y;
  }
  template <typename X>
  typename tensor_traits<X>::tensor operator()(const X& x) {
    return forward(x);
  }
  // dx in a new tensor of x's dims.
  template <typename X, typename DY>
  typename tensor_traits<X>::tensor backward(const X& x, const DY& dy) {
    auto dx = empty_like(x);
    static_cast<Derived&>(*this).backward(x, dy, dx);
    return dx;
  }

  // Where forward and backward run their loops (default: the calling thread);
  // results are bitwise the same for any number of threads.
  void set_parallel(Parallel parallel) { parallel_ = std::move(parallel); }
  const Parallel& parallel() const noexcept { return parallel_; }

  // Whether a forward has saved statistics for backward.
  bool has_saved_statistics() const noexcept { return saved_; }

 protected:
  explicit module_base(const char* layer) : layer_(layer) {}

  template <typename X>
  static void check_scalar() {
    static_assert(std::is_same_v<scalar_of<X>, Scalar>, "input scalar type differs from the layer's");
  }

  // Buffers for the statistics of a forward about to run, n values each. The
  // saved statistics stay untouched until save(), so a throw in between loses
  // nothing; buffers of the right size are reused, so steady state allocates
  // nothing.
  stats_type& next_mean(Index n) {
    if (next_mean_.size() != n) next_mean_.resize(n);
    return next_mean_;
  }
  stats_type& next_rstd(Index n) {
    if (next_rstd_.size() != n) next_rstd_.resize(n);
    return next_rstd_;
  }
  // Records a finished forward: next_mean/next_rstd become the saved
  // statistics, `dims` the saved input dims (noexcept; call it last).
  void save(std::vector<Index>& dims) noexcept {
    std::swap(saved_mean_, next_mean_);
    std::swap(saved_rstd_, next_rstd_);
    saved_dims_.swap(dims);
    saved_ = true;
  }

  // Throws std::logic_error before any forward, std::invalid_argument if x's
  // dims differ from the last forward's.
  template <typename X>
  void check_backward_input(const X& x) const {
    check_scalar<X>();
    if (!saved_) throw_misuse(layer_, "backward called before forward");
    const std::vector<Index> dims = dims_of(x);
    if (dims != saved_dims_)
      throw_invalid(layer_, "input has dims ", dims_text{dims}, ", expected ",
                    dims_text{saved_dims_}, " (the dims of the last forward)");
  }

  const stats_type& saved_mean_tensor() const noexcept { return saved_mean_; }
  const stats_type& saved_rstd_tensor() const noexcept { return saved_rstd_; }

 private:
  const char* layer_;
  Parallel parallel_;
  stats_type saved_mean_, saved_rstd_, next_mean_, next_rstd_;
  std::vector<Index> saved_dims_;
  bool saved_ = false;
};

}  // namespace normlayers::detail
