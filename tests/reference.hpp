// SPDX-License-Identifier: MIT
#pragma once

// Plain double-precision reference implementations, written as loops straight
// from the formulas of DESIGN.md section 3. Data is logical and row-major:
// x is [rows, D] with D the normalized elements of one statistic.

#include <cmath>
#include <cstddef>
#include <vector>

namespace reference {

using Vec = std::vector<double>;

struct RowNormResult {
  Vec y;
  Vec mean;  // per row (zero for RMSNorm)
  Vec rstd;  // per row: 1/sqrt(var + eps), or 1/sqrt(mean(x^2) + eps) for RMSNorm
};

// LayerNorm (centered = true) or RMSNorm (centered = false) over rows of D.
// gamma/beta empty = absent.
inline RowNormResult row_norm_forward(const Vec& x, std::size_t D, const Vec& gamma,
                                      const Vec& beta, double eps, bool centered) {
  const std::size_t rows = D ? x.size() / D : 0;
  RowNormResult r{Vec(x.size()), Vec(rows, 0.0), Vec(rows)};
  for (std::size_t i = 0; i < rows; ++i) {
    const double* xr = &x[i * D];
    double mean = 0;
    if (centered) {
      for (std::size_t j = 0; j < D; ++j) mean += xr[j];
      mean /= double(D);
    }
    double var = 0;
    for (std::size_t j = 0; j < D; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= double(D);
    const double rstd = 1.0 / std::sqrt(var + eps);
    r.mean[i] = mean;
    r.rstd[i] = rstd;
    for (std::size_t j = 0; j < D; ++j) {
      const double xhat = (xr[j] - mean) * rstd;
      r.y[i * D + j] = xhat * (gamma.empty() ? 1.0 : gamma[j]) + (beta.empty() ? 0.0 : beta[j]);
    }
  }
  return r;
}

struct RowNormGrads {
  Vec dx, dgamma, dbeta;
};

// LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gamma * dy.
// RMSNorm:   dx = rrms * (g - xn * mean(g * xn)),               xn = x * rrms.
// dgamma = sum over rows of dy * xhat, dbeta = sum over rows of dy.
inline RowNormGrads row_norm_backward(const Vec& x, const Vec& dy, std::size_t D, const Vec& gamma,
                                      double eps, bool centered) {
  const RowNormResult f = row_norm_forward(x, D, {}, {}, eps, centered);
  const std::size_t rows = D ? x.size() / D : 0;
  RowNormGrads r{Vec(x.size()), Vec(D, 0.0), Vec(D, 0.0)};
  for (std::size_t i = 0; i < rows; ++i) {
    double mean_g = 0, mean_gx = 0;
    for (std::size_t j = 0; j < D; ++j) {
      const double g = dy[i * D + j] * (gamma.empty() ? 1.0 : gamma[j]);
      const double xhat = f.y[i * D + j];
      mean_g += g;
      mean_gx += g * xhat;
    }
    mean_g /= double(D);
    mean_gx /= double(D);
    for (std::size_t j = 0; j < D; ++j) {
      const double g = dy[i * D + j] * (gamma.empty() ? 1.0 : gamma[j]);
      const double xhat = f.y[i * D + j];
      r.dx[i * D + j] = f.rstd[i] * (g - (centered ? mean_g : 0.0) - xhat * mean_gx);
      r.dgamma[j] += dy[i * D + j] * xhat;
      r.dbeta[j] += dy[i * D + j];
    }
  }
  return r;
}

}  // namespace reference
