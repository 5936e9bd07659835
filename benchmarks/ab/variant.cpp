// SPDX-License-Identifier: MIT
// One build of the library for main.cpp: compiled once per tree with the
// library's namespace renamed (-Dnormlayers=nl_a ... -DAB_RUN=ab_run_a), so
// two builds link into one process. Layers are made on first use and kept.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <normlayers/normlayers.hpp>

namespace {

using Map4 = Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>>;
using Map2 = Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>>;

struct Layers {
  std::unique_ptr<normlayers::BatchNorm<float>> bn;
  std::unique_ptr<normlayers::InstanceNorm<float>> in;
  std::unique_ptr<normlayers::GroupNorm<float>> gn;
  std::unique_ptr<normlayers::LayerNorm<float>> ln;
  std::unique_ptr<normlayers::RMSNorm<float>> rms;
};

// Appends a 1-d tensor's values to `out`.
template <class V>
void append(const V& v, std::vector<float>* out) {
  for (Eigen::Index i = 0; i < v.size(); ++i) out->push_back(float(v(i)));
}

// What a layer's pass leaves besides its output, for the bitwise check: the
// statistics a forward saves (LayerNorm, RMSNorm, GroupNorm) or updates
// (running statistics of BatchNorm, reset before the call), the parameter
// gradients a backward adds (zeroed before the call). `int`/`long` pick the
// overload for layers that have the member.
template <class L>
auto saved_stats(const L& l, std::vector<float>* out, int) -> decltype(l.saved_rstd(), void()) {
  append(l.saved_mean(), out);
  append(l.saved_rstd(), out);
}
template <class L>
auto saved_stats(const L& l, std::vector<float>* out, int) -> decltype(l.saved_rrms(), void()) {
  append(l.saved_rrms(), out);  // RMSNorm
}
template <class L>
void saved_stats(const L&, std::vector<float>*, long) {}
template <class L>
auto reset_running(L& l, int) -> decltype(l.tracks_running_stats(), void()) {
  if (l.tracks_running_stats()) l.reset_running_stats();
}
template <class L>
void reset_running(L&, long) {}
template <class L>
auto running(const L& l, std::vector<float>* out, int)
    -> decltype(l.tracks_running_stats(), void()) {
  if (!l.tracks_running_stats()) return;
  append(l.running_mean(), out);
  append(l.running_var(), out);
}
template <class L>
void running(const L&, std::vector<float>*, long) {}

// The forward (training; eval for mode 2) or backward (mode 1) of the layer
// make() builds on first use; with `extra`, also what else the pass leaves.
template <class L, class Make, class M>
void step(std::unique_ptr<L>& layer, Make make, int mode, M& x, M& dy, M& y,
          std::vector<float>* extra) {
  if (!layer) {
    layer.reset(make());
    layer->forward(x, y);  // statistics for the backward, running ones for eval
    if (mode == 2) layer->eval();
  }
  if (extra && mode == 1) layer->zero_grad();
  if (extra && mode == 0) reset_running(*layer, 0);
  if (mode == 1)
    layer->backward(x, dy, y);
  else
    layer->forward(x, y);
  if (!extra) return;
  if (mode == 1) {
    if (layer->has_weight()) append(layer->weight_grad(), extra);
    if (layer->has_bias()) append(layer->bias_grad(), extra);
  } else if (mode == 0) {
    saved_stats(*layer, extra, 0);
    running(*layer, extra, 0);
  }
}

}  // namespace

// kind: bn, in, gn (32 groups), ln, rms; nhwc: channels last; d: the dims
// (4 for bn/in/gn, the first 2 for ln/rms).
void AB_RUN(const std::string& kind, bool nhwc, int mode, float* x, float* dy, float* y,
            const int* d, std::vector<float>* extra) {
  static std::map<std::string, Layers> made;
  Layers& L = made[kind + (nhwc ? "/nhwc" : "") + std::to_string(mode)];
  if (kind == "ln" || kind == "rms") {
    Map2 X(x, d[0], d[1]), DY(dy, d[0], d[1]), Y(y, d[0], d[1]);
    const Eigen::Index cols = d[1];
    if (kind == "ln")
      step(L.ln, [&] { return new normlayers::LayerNorm<float>({cols}); }, mode, X, DY, Y, extra);
    else
      step(L.rms, [&] { return new normlayers::RMSNorm<float>({cols}); }, mode, X, DY, Y, extra);
    return;
  }
  Map4 X(x, d[0], d[1], d[2], d[3]), DY(dy, d[0], d[1], d[2], d[3]), Y(y, d[0], d[1], d[2], d[3]);
  const int C = nhwc ? d[3] : d[1];
  if (kind == "bn") {
    normlayers::BatchNormOptions o;
    o.channels_last = nhwc;
    step(L.bn, [&] { return new normlayers::BatchNorm<float>(C, o); }, mode, X, DY, Y, extra);
  } else if (kind == "in") {
    normlayers::InstanceNormOptions o;
    o.affine = true;
    o.channels_last = nhwc;
    step(L.in, [&] { return new normlayers::InstanceNorm<float>(C, o); }, mode, X, DY, Y, extra);
  } else {
    normlayers::GroupNormOptions o;
    o.channels_last = nhwc;
    step(L.gn, [&] { return new normlayers::GroupNorm<float>(32, C, o); }, mode, X, DY, Y, extra);
  }
}
