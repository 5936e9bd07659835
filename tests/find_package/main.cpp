// SPDX-License-Identifier: MIT
// Consumes the installed package: LayerNorm over the last dim of a 4x8 tensor must give rows
// of mean ~0 and (biased) variance ~1, i.e. var(x) / (var(x) + eps) with the default eps 1e-5.
#include <normlayers/normlayers.hpp>

#include <cmath>
#include <cstdio>

namespace {
// Mean and biased variance of row r, in double.
template <typename Tensor>
void row_moments(const Tensor& t, Eigen::Index r, double& mean, double& var) {
  const Eigen::Index n = t.dimension(1);
  mean = 0.0;
  for (Eigen::Index c = 0; c < n; ++c) mean += static_cast<double>(t(r, c));
  mean /= static_cast<double>(n);
  var = 0.0;
  for (Eigen::Index c = 0; c < n; ++c) {
    const double d = static_cast<double>(t(r, c)) - mean;
    var += d * d;
  }
  var /= static_cast<double>(n);
}
}  // namespace

int main() {
  normlayers::LayerNorm<float> ln({8});
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(4, 8);
  x.setRandom();
  Eigen::Tensor<float, 2, Eigen::RowMajor> y = ln.forward(x);

  bool ok = y.dimension(0) == 4 && y.dimension(1) == 8;
  for (Eigen::Index r = 0; ok && r < y.dimension(0); ++r) {
    double x_mean = 0.0, x_var = 0.0, mean = 0.0, var = 0.0;
    row_moments(x, r, x_mean, x_var);
    row_moments(y, r, mean, var);
    const double expected_var = x_var / (x_var + 1e-5);
    const bool row_ok = std::abs(mean) < 1e-5 && std::abs(var - expected_var) < 1e-4;
    std::printf("row %ld: mean % .2e  var %.6f (expected %.6f)  %s\n", static_cast<long>(r), mean,
                var, expected_var, row_ok ? "ok" : "FAIL");
    ok = ok && row_ok;
  }
  std::printf("normlayers consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
