// SPDX-License-Identifier: MIT
// Fashion-MNIST with an MLP 784-256-256-10 whose hidden layers are
//   Linear -> norm (none, BatchNorm, LayerNorm, GroupNorm or RMSNorm) -> ReLU,
// softmax cross-entropy, SGD with momentum and a cosine learning-rate schedule.
// The linear layers and the loss are plain Eigen matrices; the norms are
// normlayers modules, run on TensorMaps over the matrices' memory. Fixed seed,
// one thread: every run is bitwise reproducible.
//
//   fashion_mnist train --norm batchnorm --epochs 10 --lr 0.1 --batch 64
//   fashion_mnist lr-sweep | batch-sweep | eval-mode | all  [--quick] [--out DIR]
//
// See usage() below for every option.
#include <normlayers/normlayers.hpp>

#include "idx.hpp"
#include "svg.hpp"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace nl = normlayers;
using fmnist::Dataset;
using fmnist::Matrix;
using Index = Eigen::Index;
using RowVector = Eigen::RowVectorXf;
using TensorMap2 = Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>>;

namespace {

constexpr int exit_missing_data = 2;
constexpr int exit_usage = 64;

// ---------------------------------------------------------------- randomness
// std::mt19937's sequence is fixed by the standard; the distributions below
// are ours, so results do not depend on the standard library.
struct Rng {
  std::mt19937 engine;
  explicit Rng(std::uint32_t seed) : engine(seed) {}
  float uniform(float lo, float hi) {  // [lo, hi)
    return lo + (hi - lo) * float(engine() >> 8) * (1.0f / 16777216.0f);
  }
  std::size_t below(std::size_t n) {  // [0, n), n < 2^32
    return std::size_t((std::uint64_t(engine()) * std::uint64_t(n)) >> 32);
  }
  void shuffle(std::vector<Index>& v) {  // Fisher-Yates
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

// ---------------------------------------------------------------- layers
// y = x W + b, with PyTorch's default initialization U(-1/sqrt(in), 1/sqrt(in)).
struct Linear {
  Matrix w, grad_w, vel_w;
  RowVector b, grad_b, vel_b;

  Linear(Index in, Index out, Rng& rng)
      : w(in, out), grad_w(Matrix::Zero(in, out)), vel_w(Matrix::Zero(in, out)), b(out),
        grad_b(RowVector::Zero(out)), vel_b(RowVector::Zero(out)) {
    const float bound = 1.0f / std::sqrt(float(in));
    for (Index i = 0; i < w.size(); ++i) w.data()[i] = rng.uniform(-bound, bound);
    for (Index i = 0; i < b.size(); ++i) b(i) = rng.uniform(-bound, bound);
  }
  void forward(const Matrix& x, Matrix& y) const {
    y.noalias() = x * w;
    y.rowwise() += b;
  }
  // Parameter gradients, and dx unless it is null (the first layer needs none).
  void backward(const Matrix& x, const Matrix& dy, Matrix* dx) {
    grad_w.noalias() = x.transpose() * dy;
    grad_b = dy.colwise().sum();
    if (dx != nullptr) dx->noalias() = dy * w.transpose();
  }
  // SGD with momentum as torch.optim.SGD: v = mu v + g + wd p; p -= lr v.
  void step(float lr, float momentum, float weight_decay) {
    vel_w = momentum * vel_w + grad_w + weight_decay * w;
    w -= lr * vel_w;
    vel_b = momentum * vel_b + grad_b;
    b -= lr * vel_b;
  }
};

// A normalization over (batch, features) matrices; `none` copies.
struct Norm {
  virtual ~Norm() = default;
  virtual void forward(Matrix& x, Matrix& y) = 0;
  virtual void backward(Matrix& x, Matrix& dy, Matrix& dx) = 0;
  virtual void step(float lr, float momentum) = 0;
  virtual void set_training(bool training) = 0;
};

struct NoNorm final : Norm {
  void forward(Matrix& x, Matrix& y) override { y = x; }
  void backward(Matrix&, Matrix& dy, Matrix& dx) override { dx = dy; }
  void step(float, float) override {}
  void set_training(bool) override {}
};

// Any normlayers module: forward/backward on TensorMaps over the matrices, and
// the same SGD with momentum on its weight/bias from weight_grad()/bias_grad().
template <typename Layer>
struct LibraryNorm final : Norm {
  Layer layer;
  std::vector<Eigen::VectorXf> velocity;  // one per parameter, in for_each_parameter order

  template <typename... Args>
  explicit LibraryNorm(Args&&... args) : layer(std::forward<Args>(args)...) {}

  static TensorMap2 map(Matrix& m) { return TensorMap2(m.data(), m.rows(), m.cols()); }
  void forward(Matrix& x, Matrix& y) override { layer.forward(map(x), map(y)); }
  void backward(Matrix& x, Matrix& dy, Matrix& dx) override {
    layer.backward(map(x), map(dy), map(dx));
  }
  void step(float lr, float momentum) override {
    std::size_t k = 0;
    layer.for_each_parameter([&](std::string_view name, Eigen::Tensor<float, 1>& p) {
      auto& grad = name == "weight" ? layer.weight_grad() : layer.bias_grad();
      if (velocity.size() <= k) velocity.push_back(Eigen::VectorXf::Zero(p.size()));
      Eigen::Map<Eigen::VectorXf> param(p.data(), p.size());
      Eigen::Map<Eigen::VectorXf> g(grad.data(), grad.size());
      velocity[k] = momentum * velocity[k] + g;
      param -= lr * velocity[k];
      ++k;
    });
    layer.zero_grad();
  }
  void set_training(bool training) override { layer.train(training); }
};

const std::vector<std::string> norm_names = {"none", "batchnorm", "layernorm", "groupnorm",
                                             "rmsnorm"};

std::unique_ptr<Norm> make_norm(const std::string& name, Index features, Index groups) {
  if (name == "none") return std::make_unique<NoNorm>();
  if (name == "batchnorm") return std::make_unique<LibraryNorm<nl::BatchNorm<float>>>(features);
  if (name == "layernorm")
    return std::make_unique<LibraryNorm<nl::LayerNorm<float>>>(nl::Shape{features});
  if (name == "groupnorm")
    return std::make_unique<LibraryNorm<nl::GroupNorm<float>>>(groups, features);
  if (name == "rmsnorm")
    return std::make_unique<LibraryNorm<nl::RMSNorm<float>>>(nl::Shape{features});
  throw std::invalid_argument("unknown norm '" + name + "'");
}

// ---------------------------------------------------------------- the network
struct Net {
  static constexpr Index hidden = 256;
  Linear fc1, fc2, fc3;
  std::unique_ptr<Norm> norm1, norm2;
  // Activations of the last forward, kept for backward.
  Matrix z1, n1, a1, z2, n2, a2, logits;
  Matrix d_logits, da, dn, dz;

  Net(const std::string& norm, Index groups, Rng& rng)
      : fc1(784, hidden, rng), fc2(hidden, hidden, rng), fc3(hidden, 10, rng),
        norm1(make_norm(norm, hidden, groups)), norm2(make_norm(norm, hidden, groups)) {}

  void set_training(bool training) {
    norm1->set_training(training);
    norm2->set_training(training);
  }

  const Matrix& forward(const Matrix& x) {
    fc1.forward(x, z1);
    n1.resize(z1.rows(), z1.cols());
    norm1->forward(z1, n1);
    a1 = n1.cwiseMax(0.0f);
    fc2.forward(a1, z2);
    n2.resize(z2.rows(), z2.cols());
    norm2->forward(z2, n2);
    a2 = n2.cwiseMax(0.0f);
    fc3.forward(a2, logits);
    return logits;
  }

  // From d_logits (set by the loss) to every parameter gradient.
  void backward(const Matrix& x) {
    fc3.backward(a2, d_logits, &da);
    dn = (n2.array() > 0.0f).select(da, 0.0f);
    dz.resize(dn.rows(), dn.cols());
    norm2->backward(z2, dn, dz);
    fc2.backward(a1, dz, &da);
    dn = (n1.array() > 0.0f).select(da, 0.0f);
    norm1->backward(z1, dn, dz);
    fc1.backward(x, dz, nullptr);
  }

  void step(float lr, float momentum, float weight_decay) {
    fc1.step(lr, momentum, weight_decay);
    fc2.step(lr, momentum, weight_decay);
    fc3.step(lr, momentum, weight_decay);
    norm1->step(lr, momentum);
    norm2->step(lr, momentum);
  }
};

// Mean softmax cross-entropy of the rows; its gradient into d_logits; adds the
// number of rows whose argmax is the label to `correct`.
double softmax_cross_entropy(const Matrix& logits, const int* labels, Matrix& d_logits,
                             Index& correct) {
  const Index n = logits.rows();
  d_logits.resize(n, logits.cols());
  double loss = 0;
  for (Index i = 0; i < n; ++i) {
    Index arg;
    const float mx = logits.row(i).maxCoeff(&arg);
    correct += arg == labels[i];
    auto e = (logits.row(i).array() - mx).exp();
    const float sum = e.sum();
    d_logits.row(i) = e / (sum * float(n));
    d_logits(i, labels[i]) -= 1.0f / float(n);
    loss += std::log(double(sum)) - double(logits(i, labels[i]) - mx);
  }
  return loss / double(n);
}

void gather(const Dataset& d, const std::vector<Index>& order, std::size_t first, Index n,
            Matrix& x, std::vector<int>& y) {
  x.resize(n, d.images.cols());
  y.resize(std::size_t(n));
  for (Index i = 0; i < n; ++i) {
    const Index src = order[first + std::size_t(i)];
    x.row(i) = d.images.row(src);
    y[std::size_t(i)] = d.labels[std::size_t(src)];
  }
}

// Accuracy in percent over `d` in batches of `batch`, in eval or (for the
// eval-mode experiment) train mode. Throws what the network throws.
double accuracy(Net& net, const Dataset& d, Index batch, bool training) {
  net.set_training(training);
  Index correct = 0;
  for (Index first = 0; first < d.size(); first += batch) {
    const Index n = std::min(batch, d.size() - first);
    const Matrix& logits = net.forward(d.images.middleRows(first, n));
    for (Index i = 0; i < n; ++i) {
      Index arg;
      logits.row(i).maxCoeff(&arg);
      correct += arg == d.labels[std::size_t(first + i)];
    }
  }
  net.set_training(true);
  return 100.0 * double(correct) / double(d.size());
}

// ---------------------------------------------------------------- training
struct Config {
  std::string norm = "batchnorm";
  int epochs = 10;
  float lr = 0.1f;
  float momentum = 0.9f;
  float weight_decay = 5e-4f;
  Index batch = 64;
  Index groups = 32;
  std::uint32_t seed = 1;
  bool cosine = true;
};

struct Epoch {
  int epoch;
  double loss, train_acc, test_acc, seconds;
};

std::string label(const Config& c) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s lr=%g batch=%ld", c.norm.c_str(), double(c.lr),
                static_cast<long>(c.batch));
  return buf;
}

// Trains a fresh network; prints one line per epoch. The last incomplete
// batch of each epoch is dropped (as drop_last=True), so BatchNorm never sees
// a batch of one.
std::vector<Epoch> train(const Config& c, const Dataset& train_set, const Dataset& test_set,
                         Net& net, bool verbose = true) {
  Rng rng(c.seed + 1000);  // shuffling; the network's initialization used c.seed
  std::vector<Index> order(std::size_t(train_set.size()));
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = Index(i);
  const Index steps_per_epoch = train_set.size() / c.batch;
  const double total_steps = double(steps_per_epoch) * c.epochs;
  const double pi = std::acos(-1.0);
  Matrix x;
  std::vector<int> y;
  std::vector<Epoch> history;
  double step_count = 0;
  for (int epoch = 1; epoch <= c.epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    rng.shuffle(order);
    double loss_sum = 0;
    Index correct = 0;
    for (Index s = 0; s < steps_per_epoch; ++s) {
      gather(train_set, order, std::size_t(s * c.batch), c.batch, x, y);
      net.forward(x);
      loss_sum += softmax_cross_entropy(net.logits, y.data(), net.d_logits, correct);
      net.backward(x);
      const double scale = c.cosine ? 0.5 * (1.0 + std::cos(pi * step_count / total_steps)) : 1.0;
      net.step(float(c.lr * scale), c.momentum, c.weight_decay);
      ++step_count;
    }
    Epoch e;
    e.epoch = epoch;
    e.loss = loss_sum / double(steps_per_epoch);
    e.train_acc = 100.0 * double(correct) / double(steps_per_epoch * c.batch);
    e.test_acc = accuracy(net, test_set, 1000, false);
    e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    history.push_back(e);
    if (verbose)
      std::printf("[%s] epoch %2d/%d  loss %.4f  train acc %6.2f%%  test acc %6.2f%%  %6.2f s\n",
                  label(c).c_str(), epoch, c.epochs, e.loss, e.train_acc, e.test_acc, e.seconds);
    std::fflush(stdout);
  }
  return history;
}

std::vector<Epoch> train_fresh(const Config& c, const Dataset& tr, const Dataset& te) {
  Rng rng(c.seed);
  Net net(c.norm, c.groups, rng);
  return train(c, tr, te, net);
}

// ---------------------------------------------------------------- experiments
struct Options {
  std::string command;
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string out = "fashion_mnist_results";
  bool quick = false;
  bool check = false;
  int missing_data_status = exit_missing_data;
  int epochs = 0;  // 0: the command's default
  Index train_limit = 0, test_limit = 0;
  Config config;
};

struct Checks {
  std::vector<std::string> failures;
  const std::filesystem::file_time_type start = std::filesystem::file_time_type::clock::now();
  void expect(bool ok, const std::string& what) {
    std::printf("check: %s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) failures.push_back(what);
  }
  void file(const std::string& path) {
    std::error_code ec, ec_time;
    const auto size = std::filesystem::file_size(path, ec);
    const auto written = std::filesystem::last_write_time(path, ec_time);
    // Written by this run, not left over from an earlier one (1 s of timestamp slack).
    expect(!ec && !ec_time && size > 0 && written + std::chrono::seconds(1) >= start,
           path + " written");
  }
};

std::string percent(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// none vs batchnorm at four learning rates: test accuracy per epoch.
void lr_sweep(const Options& o, const Dataset& tr, const Dataset& te, Checks& checks) {
  const int epochs = o.epochs > 0 ? o.epochs : o.quick ? 3 : 10;
  const std::vector<float> rates = {0.01f, 0.05f, 0.2f, 0.5f};
  const std::string csv_path = o.out + "/lr_sweep.csv", svg_path = o.out + "/lr_sweep.svg";
  std::ofstream csv(csv_path);
  csv << "norm,lr,batch,epoch,train_loss,train_acc,test_acc,seconds\n";
  std::vector<fmnist::svg::Series> series;
  double best_bn = 0;
  for (const std::string norm : {"none", "batchnorm"}) {
    for (std::size_t r = 0; r < rates.size(); ++r) {
      Config c = o.config;
      c.norm = norm;
      c.lr = rates[r];
      c.epochs = epochs;
      const auto history = train_fresh(c, tr, te);
      fmnist::svg::Series s;
      s.name = norm + " lr " + fmnist::svg::num(double(rates[r]));
      s.color = fmnist::svg::palette()[r];
      s.dashed = norm == "none";
      for (const Epoch& e : history) {
        csv << norm << ',' << rates[r] << ',' << c.batch << ',' << e.epoch << ',' << e.loss << ','
            << e.train_acc << ',' << e.test_acc << ',' << e.seconds << '\n';
        s.x.push_back(e.epoch);
        s.y.push_back(e.test_acc);
      }
      if (!std::isfinite(history.back().loss)) s.name += " (diverged)";
      if (norm == "batchnorm") best_bn = std::max(best_bn, history.back().test_acc);
      series.push_back(s);
    }
  }
  csv.close();
  std::vector<double> ticks;
  for (int e = 1; e <= epochs; ++e) ticks.push_back(e);
  fmnist::svg::line_chart(svg_path,
                          "Fashion-MNIST MLP, test accuracy per epoch (batch " +
                              std::to_string(o.config.batch) + ", momentum " +
                              fmnist::svg::num(double(o.config.momentum)) +
                              (o.config.cosine ? ", cosine lr)" : ")"),
                          "epoch", "test accuracy (%)", series, ticks);
  checks.expect(best_bn > 60.0, "lr-sweep: best BatchNorm test accuracy " + percent(best_bn) +
                                    "% > 60%");
  checks.file(csv_path);
  checks.file(svg_path);
}

// batchnorm vs groupnorm vs layernorm at batch sizes 2..32: final test
// accuracy. The learning rate scales linearly with the batch size
// (lr = --lr * batch / 64), the same number of epochs for every batch size.
void batch_sweep(const Options& o, const Dataset& tr, const Dataset& te, Checks& checks) {
  const int epochs = o.epochs > 0 ? o.epochs : o.quick ? 2 : 3;
  const std::vector<Index> batches = {2, 4, 8, 16, 32};
  const std::vector<std::string> norms = {"batchnorm", "groupnorm", "layernorm"};
  const std::string csv_path = o.out + "/batch_sweep.csv", svg_path = o.out + "/batch_sweep.svg";
  std::ofstream csv(csv_path);
  csv << "norm,batch,lr,epochs,train_loss,train_acc,test_acc,seconds\n";
  std::vector<fmnist::svg::Series> series;
  for (std::size_t k = 0; k < norms.size(); ++k) {
    fmnist::svg::Series s;
    s.name = norms[k] == "groupnorm" ? "groupnorm (" + std::to_string(o.config.groups) + " groups)"
                                     : norms[k];
    s.color = fmnist::svg::palette()[k];
    for (Index batch : batches) {
      Config c = o.config;
      c.norm = norms[k];
      c.batch = batch;
      c.lr = o.config.lr * float(batch) / 64.0f;
      c.epochs = epochs;
      const auto history = train_fresh(c, tr, te);
      double seconds = 0;
      for (const Epoch& e : history) seconds += e.seconds;
      const Epoch& last = history.back();
      csv << c.norm << ',' << batch << ',' << c.lr << ',' << epochs << ',' << last.loss << ','
          << last.train_acc << ',' << last.test_acc << ',' << seconds << '\n';
      s.x.push_back(double(batch));
      s.y.push_back(last.test_acc);
      if (batch == 32)
        checks.expect(last.test_acc > 60.0, "batch-sweep: " + c.norm + " at batch 32: " +
                                                percent(last.test_acc) + "% > 60%");
    }
    series.push_back(s);
  }
  csv.close();
  std::vector<std::string> groups;
  for (Index b : batches) groups.push_back(std::to_string(b));
  fmnist::svg::bar_chart(svg_path,
                         "Test accuracy after " + std::to_string(epochs) +
                             " epochs by batch size (lr = " +
                             fmnist::svg::num(double(o.config.lr)) + " x batch/64)",
                         "training batch size", "test accuracy (%)", groups, series);
  checks.file(csv_path);
  checks.file(svg_path);
}

// One trained BatchNorm network evaluated in eval mode (running statistics)
// and, wrongly, in train mode (statistics of each test batch).
void eval_mode(const Options& o, const Dataset& tr, const Dataset& te, Checks& checks) {
  Config c = o.config;
  c.norm = "batchnorm";
  c.epochs = o.epochs > 0 ? o.epochs : o.quick ? 2 : 5;
  Rng rng(c.seed);
  Net net(c.norm, c.groups, rng);
  train(c, tr, te, net);
  const std::string csv_path = o.out + "/eval_mode.csv", svg_path = o.out + "/eval_mode.svg";
  std::ofstream csv(csv_path);
  csv << "mode,test_batch,test_acc,error\n";
  const std::vector<Index> batches = {1, 2, 8, 1000};
  fmnist::svg::Series eval_series{"eval mode (running stats)", {}, {}, "#1f77b4", false};
  fmnist::svg::Series train_series{"train mode (batch stats)", {}, {}, "#d62728", false};
  // Eval mode first: train-mode forwards move the running statistics (the
  // train-mode accuracy itself does not depend on them).
  for (Index b : batches) {
    const double acc = accuracy(net, te, b, false);
    std::printf("eval mode,  test batch %4ld: test acc %6.2f%%\n", static_cast<long>(b), acc);
    csv << "eval," << b << ',' << acc << ",\n";
    eval_series.y.push_back(acc);
  }
  std::string error;
  for (Index b : batches) {
    double acc = std::nan("");
    try {
      acc = accuracy(net, te, b, true);
      std::printf("train mode, test batch %4ld: test acc %6.2f%%\n", static_cast<long>(b), acc);
      csv << "train," << b << ',' << acc << ",\n";
    } catch (const std::invalid_argument& e) {
      net.set_training(true);
      error = e.what();
      std::printf("train mode, test batch %4ld: error: %s\n", static_cast<long>(b), e.what());
      csv << "train," << b << ",,\"" << e.what() << "\"\n";
    }
    train_series.y.push_back(acc);
  }
  csv.close();
  std::vector<std::string> groups;
  for (Index b : batches) groups.push_back("test batch " + std::to_string(b));
  fmnist::svg::bar_chart(svg_path,
                         "BatchNorm MLP after " + std::to_string(c.epochs) +
                             " epochs: test accuracy by mode and test batch",
                         "test batch size", "test accuracy (%)", groups,
                         {eval_series, train_series});
  checks.expect(eval_series.y.back() > 60.0,
                "eval-mode: BatchNorm eval-mode accuracy " + percent(eval_series.y.back()) +
                    "% > 60%");
  checks.expect(error.find("expected more than 1 value per channel when training") !=
                    std::string::npos,
                "eval-mode: a train-mode batch of 1 throws std::invalid_argument");
  checks.file(csv_path);
  checks.file(svg_path);
}

// A single run, with a CSV and a chart of its learning curves.
void train_command(const Options& o, const Dataset& tr, const Dataset& te, Checks& checks) {
  Config c = o.config;
  if (o.epochs > 0) c.epochs = o.epochs;
  else if (o.quick) c.epochs = 2;
  const auto history = train_fresh(c, tr, te);
  const std::string stem = o.out + "/train_" + c.norm;
  std::ofstream csv(stem + ".csv");
  csv << "norm,lr,momentum,weight_decay,batch,epoch,train_loss,train_acc,test_acc,seconds\n";
  fmnist::svg::Series train_s{"train (running, train mode)", {}, {}, "#7f7f7f", true};
  fmnist::svg::Series test_s{"test (eval mode)", {}, {}, "#1f77b4", false};
  double seconds = 0;
  std::vector<double> ticks;
  for (const Epoch& e : history) {
    csv << c.norm << ',' << c.lr << ',' << c.momentum << ',' << c.weight_decay << ',' << c.batch
        << ',' << e.epoch << ',' << e.loss << ',' << e.train_acc << ',' << e.test_acc << ','
        << e.seconds << '\n';
    train_s.x.push_back(e.epoch), train_s.y.push_back(e.train_acc);
    test_s.x.push_back(e.epoch), test_s.y.push_back(e.test_acc);
    ticks.push_back(e.epoch);
    seconds += e.seconds;
  }
  csv.close();
  fmnist::svg::line_chart(stem + ".svg", "Fashion-MNIST MLP, " + label(c), "epoch",
                          "accuracy (%)", {train_s, test_s}, ticks);
  std::printf("%s: final test accuracy %.2f%% after %d epochs, %.1f s\n", label(c).c_str(),
              history.back().test_acc, c.epochs, seconds);
  checks.file(stem + ".csv");
  checks.file(stem + ".svg");
}

// ---------------------------------------------------------------- command line
void usage(std::FILE* to) {
  std::fprintf(to,
      "usage: fashion_mnist COMMAND [options]\n"
      "commands:\n"
      "  train         one run (--norm, --epochs, --lr, --batch, ...)\n"
      "  lr-sweep      none vs batchnorm at lr 0.01, 0.05, 0.2, 0.5: test accuracy per epoch\n"
      "  batch-sweep   batchnorm vs groupnorm vs layernorm at batch 2..32 (lr = --lr * batch/64)\n"
      "  eval-mode     a BatchNorm net evaluated in eval mode and in train mode\n"
      "  all           lr-sweep, batch-sweep and eval-mode\n"
      "options:\n"
      "  --data DIR        the four IDX files (.gz or plain); default %s\n"
      "  --out DIR         CSV and SVG output; default ./fashion_mnist_results\n"
      "  --quick           6000 training / 2000 test images and fewer epochs (< 60 s)\n"
      "  --norm NAME       none | batchnorm | layernorm | groupnorm | rmsnorm (train; default batchnorm)\n"
      "  --epochs N        default: train 10, lr-sweep 10, batch-sweep 3, eval-mode 5 (quick: 2-3)\n"
      "  --lr X            default 0.1 (cosine decay to 0 over the run)\n"
      "  --constant-lr     no cosine decay\n"
      "  --momentum X      default 0.9\n"
      "  --weight-decay X  on the linear weights; default 5e-4\n"
      "  --batch N         default 64\n"
      "  --groups N        GroupNorm groups; default 32\n"
      "  --seed N          default 1\n"
      "  --train-limit N, --test-limit N   use the first N images\n"
      "  --check           exit 1 unless accuracies are well above chance and files were written\n"
      "  --missing-data-status N   exit status when the dataset is absent (default 2; ctest: 77)\n",
      Options().data.c_str());
}

bool parse(int argc, char** argv, Options& o) {
  if (argc < 2) return false;
  o.command = argv[1];
  if (o.command == "-h" || o.command == "--help") return false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--data") o.data = value();
    else if (a == "--out") o.out = value();
    else if (a == "--quick") o.quick = true;
    else if (a == "--check") o.check = true;
    else if (a == "--missing-data-status") o.missing_data_status = std::stoi(value());
    else if (a == "--norm") o.config.norm = value();
    else if (a == "--epochs") o.epochs = std::stoi(value());
    else if (a == "--lr") o.config.lr = std::stof(value());
    else if (a == "--constant-lr") o.config.cosine = false;
    else if (a == "--momentum") o.config.momentum = std::stof(value());
    else if (a == "--weight-decay") o.config.weight_decay = std::stof(value());
    else if (a == "--batch") o.config.batch = std::stol(value());
    else if (a == "--groups") o.config.groups = std::stol(value());
    else if (a == "--seed") o.config.seed = std::uint32_t(std::stoul(value()));
    else if (a == "--train-limit") o.train_limit = std::stol(value());
    else if (a == "--test-limit") o.test_limit = std::stol(value());
    else throw std::invalid_argument("unknown option " + a);
  }
  bool known = false;
  for (const auto& n : norm_names) known = known || n == o.config.norm;
  if (!known) throw std::invalid_argument("unknown norm " + o.config.norm);
  if (o.config.batch < 2 || o.epochs < 0)
    throw std::invalid_argument("--batch must be >= 2 and --epochs >= 1");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    if (!parse(argc, argv, o)) {
      usage(argc < 2 ? stderr : stdout);
      return argc < 2 ? exit_usage : 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    usage(stderr);
    return exit_usage;
  }
  const std::vector<std::string> commands = {"train", "lr-sweep", "batch-sweep", "eval-mode",
                                             "all"};
  if (std::find(commands.begin(), commands.end(), o.command) == commands.end()) {
    std::fprintf(stderr, "fashion_mnist: unknown command '%s'\n", o.command.c_str());
    usage(stderr);
    return exit_usage;
  }

  Dataset train_set, test_set;
  try {
    std::string missing;
    if (!fmnist::load_split(o.data, "train", train_set, missing) ||
        !fmnist::load_split(o.data, "t10k", test_set, missing)) {
      std::fprintf(stderr,
                   "fashion_mnist: Fashion-MNIST not found: no %s (nor without .gz).\n"
                   "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it "
                   "puts the files in /usr/share/datasets/fashion-mnist),\nor pass --data DIR, a "
                   "directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] from\n"
                   "https://github.com/zalandoresearch/fashion-mnist.\n",
                   missing.c_str());
      return o.missing_data_status;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    return 1;
  }
  fmnist::truncate(train_set, o.train_limit > 0 ? o.train_limit : o.quick ? 6000 : 0);
  fmnist::truncate(test_set, o.test_limit > 0 ? o.test_limit : o.quick ? 2000 : 0);
  std::printf("Fashion-MNIST from %s: %ld training, %ld test images%s\n", o.data.c_str(),
              static_cast<long>(train_set.size()), static_cast<long>(test_set.size()),
              o.quick ? " (--quick)" : "");

  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) {
    std::fprintf(stderr, "fashion_mnist: cannot create %s: %s\n", o.out.c_str(),
                 ec.message().c_str());
    return 1;
  }

  Checks checks;
  const auto start = std::chrono::steady_clock::now();
  try {
    if (o.command == "train") train_command(o, train_set, test_set, checks);
    if (o.command == "lr-sweep" || o.command == "all") lr_sweep(o, train_set, test_set, checks);
    if (o.command == "batch-sweep" || o.command == "all")
      batch_sweep(o, train_set, test_set, checks);
    if (o.command == "eval-mode" || o.command == "all") eval_mode(o, train_set, test_set, checks);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    return 1;
  }
  std::printf("%s: %.1f s; results in %s\n", o.command.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
              o.out.c_str());
  if (o.check && !checks.failures.empty()) {
    std::fprintf(stderr, "fashion_mnist: %zu check(s) failed\n", checks.failures.size());
    return 1;
  }
  return 0;
}
