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
  // Where filled: per parameter, the sum of the magnitudes of the terms
  // summed into dgamma (|dy * xhat|) and dbeta (|dy|), which bounds what
  // rounding a sum in floating point can err by (see expect_grads_close).
  Vec dgamma_terms, dbeta_terms;
};

// LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gamma * dy.
// RMSNorm:   dx = rrms * (g - xn * mean(g * xn)),               xn = x * rrms.
// dgamma = sum over rows of dy * xhat, dbeta = sum over rows of dy.
inline RowNormGrads row_norm_backward(const Vec& x, const Vec& dy, std::size_t D, const Vec& gamma,
                                      double eps, bool centered) {
  const RowNormResult f = row_norm_forward(x, D, {}, {}, eps, centered);
  const std::size_t rows = D ? x.size() / D : 0;
  RowNormGrads r{Vec(x.size()), Vec(D, 0.0), Vec(D, 0.0), {}, {}};
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

// ---- per-channel norms (BatchNorm): x is logical row-major with extents
// `dims`; statistics per index along `axis`.

inline std::vector<std::size_t> channel_of_each(const std::vector<long>& dims, std::size_t axis) {
  std::size_t n = 1, inner = 1;
  for (long d : dims) n *= std::size_t(d);
  for (std::size_t i = axis + 1; i < dims.size(); ++i) inner *= std::size_t(dims[i]);
  std::vector<std::size_t> c(n);
  for (std::size_t i = 0; i < n; ++i) c[i] = (i / inner) % std::size_t(dims[axis]);
  return c;
}

struct ChannelNormResult {
  Vec y, mean, var, rstd;  // var biased
};

// Batch statistics when fixed_mean is empty, else the fixed (running) ones.
inline ChannelNormResult batch_norm_forward(const Vec& x, const std::vector<long>& dims,
                                            std::size_t axis, const Vec& gamma, const Vec& beta,
                                            double eps, const Vec& fixed_mean = {},
                                            const Vec& fixed_var = {}) {
  const std::size_t channels = std::size_t(dims[axis]);
  const auto ch = channel_of_each(dims, axis);
  ChannelNormResult r{Vec(x.size()), Vec(channels, 0.0), Vec(channels, 0.0), Vec(channels)};
  if (fixed_mean.empty()) {
    Vec count(channels, 0.0);
    for (std::size_t i = 0; i < x.size(); ++i) r.mean[ch[i]] += x[i], count[ch[i]] += 1;
    for (std::size_t c = 0; c < channels; ++c) r.mean[c] /= count[c];
    for (std::size_t i = 0; i < x.size(); ++i)
      r.var[ch[i]] += (x[i] - r.mean[ch[i]]) * (x[i] - r.mean[ch[i]]);
    for (std::size_t c = 0; c < channels; ++c) r.var[c] /= count[c];
  } else {
    r.mean = fixed_mean;
    r.var = fixed_var;
  }
  for (std::size_t c = 0; c < channels; ++c) r.rstd[c] = 1.0 / std::sqrt(r.var[c] + eps);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t c = ch[i];
    r.y[i] = (x[i] - r.mean[c]) * r.rstd[c] * (gamma.empty() ? 1.0 : gamma[c]) +
             (beta.empty() ? 0.0 : beta[c]);
  }
  return r;
}

// Through the batch statistics (fixed_mean empty):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gamma * dy;
// with fixed statistics: dx = gamma * rstd * dy.
inline RowNormGrads batch_norm_backward(const Vec& x, const Vec& dy, const std::vector<long>& dims,
                                        std::size_t axis, const Vec& gamma, double eps,
                                        const Vec& fixed_mean = {}, const Vec& fixed_var = {}) {
  const std::size_t channels = std::size_t(dims[axis]);
  const auto ch = channel_of_each(dims, axis);
  const auto f = batch_norm_forward(x, dims, axis, {}, {}, eps, fixed_mean, fixed_var);
  RowNormGrads r{Vec(x.size()), Vec(channels, 0.0), Vec(channels, 0.0), Vec(channels, 0.0),
                 Vec(channels, 0.0)};
  Vec mean_g(channels, 0.0), mean_gx(channels, 0.0), count(channels, 0.0);
  auto g_at = [&](std::size_t i) { return dy[i] * (gamma.empty() ? 1.0 : gamma[ch[i]]); };
  for (std::size_t i = 0; i < x.size(); ++i) {
    mean_g[ch[i]] += g_at(i);
    mean_gx[ch[i]] += g_at(i) * f.y[i];
    count[ch[i]] += 1;
    r.dgamma[ch[i]] += dy[i] * f.y[i];
    r.dbeta[ch[i]] += dy[i];
    r.dgamma_terms[ch[i]] += std::abs(dy[i] * f.y[i]);
    r.dbeta_terms[ch[i]] += std::abs(dy[i]);
  }
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t c = ch[i];
    r.dx[i] = fixed_mean.empty()
                  ? f.rstd[c] * (g_at(i) - mean_g[c] / count[c] - f.y[i] * mean_gx[c] / count[c])
                  : f.rstd[c] * g_at(i);
  }
  return r;
}

// ---- general grouped norm: element i belongs to statistic stat[i] and has
// affine parameters of channel chan[i] (InstanceNorm: stat = (n, c);
// GroupNorm: stat = (n, c / D)).

struct Grouping {
  std::vector<std::size_t> stat, chan;
  std::size_t num_stats = 0;
};

// Statistics per (n, c / group_size) of a logical row-major tensor with the
// channel axis at `axis`.
inline Grouping group_by_sample_and_channel(const std::vector<long>& dims, std::size_t axis,
                                            std::size_t group_size) {
  Grouping g;
  g.chan = channel_of_each(dims, axis);
  std::size_t per_sample = 1;
  for (std::size_t i = 1; i < dims.size(); ++i) per_sample *= std::size_t(dims[i]);
  const std::size_t groups = std::size_t(dims[axis]) / group_size;
  g.num_stats = std::size_t(dims[0]) * groups;
  g.stat.resize(g.chan.size());
  for (std::size_t i = 0; i < g.stat.size(); ++i)
    g.stat[i] = (i / per_sample) * groups + g.chan[i] / group_size;
  return g;
}

// fixed_mean/fixed_var per statistic, or empty for the statistics of the data.
inline ChannelNormResult grouped_norm_forward(const Vec& x, const Grouping& g, const Vec& gamma,
                                              const Vec& beta, double eps,
                                              const Vec& fixed_mean = {},
                                              const Vec& fixed_var = {}) {
  ChannelNormResult r{Vec(x.size()), Vec(g.num_stats, 0.0), Vec(g.num_stats, 0.0),
                      Vec(g.num_stats)};
  if (fixed_mean.empty()) {
    Vec count(g.num_stats, 0.0);
    for (std::size_t i = 0; i < x.size(); ++i) r.mean[g.stat[i]] += x[i], count[g.stat[i]] += 1;
    for (std::size_t s = 0; s < g.num_stats; ++s) r.mean[s] /= count[s];
    for (std::size_t i = 0; i < x.size(); ++i)
      r.var[g.stat[i]] += (x[i] - r.mean[g.stat[i]]) * (x[i] - r.mean[g.stat[i]]);
    for (std::size_t s = 0; s < g.num_stats; ++s) r.var[s] /= count[s];
  } else {
    r.mean = fixed_mean;
    r.var = fixed_var;
  }
  for (std::size_t s = 0; s < g.num_stats; ++s) r.rstd[s] = 1.0 / std::sqrt(r.var[s] + eps);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t s = g.stat[i], c = g.chan[i];
    r.y[i] = (x[i] - r.mean[s]) * r.rstd[s] * (gamma.empty() ? 1.0 : gamma[c]) +
             (beta.empty() ? 0.0 : beta[c]);
  }
  return r;
}

inline RowNormGrads grouped_norm_backward(const Vec& x, const Vec& dy, const Grouping& g,
                                          std::size_t channels, const Vec& gamma, double eps,
                                          const Vec& fixed_mean = {}, const Vec& fixed_var = {}) {
  const auto f = grouped_norm_forward(x, g, {}, {}, eps, fixed_mean, fixed_var);
  RowNormGrads r{Vec(x.size()), Vec(channels, 0.0), Vec(channels, 0.0), {}, {}};
  Vec mean_g(g.num_stats, 0.0), mean_gx(g.num_stats, 0.0), count(g.num_stats, 0.0);
  auto g_at = [&](std::size_t i) { return dy[i] * (gamma.empty() ? 1.0 : gamma[g.chan[i]]); };
  for (std::size_t i = 0; i < x.size(); ++i) {
    mean_g[g.stat[i]] += g_at(i);
    mean_gx[g.stat[i]] += g_at(i) * f.y[i];
    count[g.stat[i]] += 1;
    r.dgamma[g.chan[i]] += dy[i] * f.y[i];
    r.dbeta[g.chan[i]] += dy[i];
  }
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t s = g.stat[i];
    r.dx[i] = fixed_mean.empty()
                  ? f.rstd[s] * (g_at(i) - mean_g[s] / count[s] - f.y[i] * mean_gx[s] / count[s])
                  : f.rstd[s] * g_at(i);
  }
  return r;
}

}  // namespace reference
