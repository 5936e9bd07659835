// SPDX-License-Identifier: MIT
// Two small SVG charts, written by hand: lines over a numeric x axis, and
// grouped bars. Axes, ticks, labels and a legend; no dependencies.
#pragma once

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fmnist::svg {

struct Series {
  std::string name;
  std::vector<double> x, y;  // NaN y: no point (bars: "error")
  std::string color;
  bool dashed = false;
};

inline const std::vector<std::string>& palette() {
  static const std::vector<std::string> colors = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                                  "#9467bd", "#8c564b", "#17becf", "#7f7f7f"};
  return colors;
}

inline std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

inline std::string num(double v, int precision = 4) {
  std::ostringstream os;
  os.precision(precision);
  os << (v == 0 ? 0.0 : v);  // never "-0"
  return os.str();
}

// A y range in [0, 100] with round ends around the finite values (from 0 if
// from_zero), and a tick step.
inline void percent_range(const std::vector<Series>& series, bool from_zero, double& lo,
                          double& hi, double& step) {
  double mn = 100, mx = 0;
  for (const auto& s : series)
    for (double v : s.y)
      if (std::isfinite(v)) mn = std::min(mn, v), mx = std::max(mx, v);
  if (mn > mx) mn = 0, mx = 100;
  lo = from_zero ? 0.0 : std::max(0.0, std::floor(mn / 5.0) * 5.0 - 5.0);
  hi = std::min(100.0, std::ceil((mx + 1.0) / 5.0) * 5.0);
  if (hi - lo < 10) lo = std::max(0.0, hi - 10);
  const double span = hi - lo;
  step = span <= 10 ? 1 : span <= 25 ? 2.5 : span <= 50 ? 5 : 10;
}

class Canvas {
 public:
  static constexpr double width = 760, height = 440, left = 70, right = 210, top = 46,
                          bottom = 62;
  static constexpr double plot_w = width - left - right, plot_h = height - top - bottom;

  Canvas(const std::string& title, const std::string& xlabel, const std::string& ylabel) {
    os_ << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\""
        << height << "\" viewBox=\"0 0 " << width << ' ' << height
        << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
        << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        << text(width / 2, 24, title, "middle", 14)
        << text(left + plot_w / 2, height - 16, xlabel, "middle", 13)
        << "<text x=\"18\" y=\"" << top + plot_h / 2 << "\" text-anchor=\"middle\" font-size=\"13\""
        << " transform=\"rotate(-90 18 " << top + plot_h / 2 << ")\">" << escape(ylabel)
        << "</text>\n";
  }

  static std::string text(double x, double y, const std::string& s, const char* anchor,
                          int size = 12) {
    std::ostringstream os;
    os << "<text x=\"" << num(x, 6) << "\" y=\"" << num(y, 6) << "\" text-anchor=\"" << anchor
       << "\" font-size=\"" << size << "\">" << escape(s) << "</text>\n";
    return os.str();
  }

  // Horizontal grid lines and labels for y in [lo, hi], and the axes.
  void y_axis(double lo, double hi, double step) {
    lo_ = lo, hi_ = hi;
    for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) {
      const double y = ypos(v);
      os_ << "<line x1=\"" << left << "\" x2=\"" << left + plot_w << "\" y1=\"" << num(y, 6)
          << "\" y2=\"" << num(y, 6) << "\" stroke=\"#e0e0e0\"/>\n"
          << text(left - 6, y + 4, num(v), "end");
    }
    os_ << "<line x1=\"" << left << "\" x2=\"" << left << "\" y1=\"" << top << "\" y2=\""
        << top + plot_h << "\" stroke=\"black\"/>\n"
        << "<line x1=\"" << left << "\" x2=\"" << left + plot_w << "\" y1=\"" << top + plot_h
        << "\" y2=\"" << top + plot_h << "\" stroke=\"black\"/>\n";
  }

  double ypos(double v) const {
    return top + plot_h * (1.0 - (std::clamp(v, lo_, hi_) - lo_) / (hi_ - lo_));
  }

  void legend(const std::vector<Series>& series, bool bars) {
    double y = top + 8;
    for (const auto& s : series) {
      const double x = left + plot_w + 16;
      if (bars)
        os_ << "<rect x=\"" << x << "\" y=\"" << y - 9 << "\" width=\"22\" height=\"10\" fill=\""
            << s.color << "\"/>\n";
      else
        os_ << "<line x1=\"" << x << "\" x2=\"" << x + 22 << "\" y1=\"" << y - 4 << "\" y2=\""
            << y - 4 << "\" stroke=\"" << s.color << "\" stroke-width=\"2\""
            << (s.dashed ? " stroke-dasharray=\"5 3\"" : "") << "/>\n";
      os_ << text(x + 28, y, s.name, "start");
      y += 18;
    }
  }

  std::ostream& out() { return os_; }

  bool save(const std::string& path) {
    os_ << "</svg>\n";
    std::ofstream file(path);
    file << os_.str();
    return bool(file);
  }

 private:
  std::ostringstream os_;
  double lo_ = 0, hi_ = 100;
};

// Lines of y (percent) over x; x ticks at the given values.
inline bool line_chart(const std::string& path, const std::string& title,
                       const std::string& xlabel, const std::string& ylabel,
                       const std::vector<Series>& series, const std::vector<double>& x_ticks) {
  Canvas c(title, xlabel, ylabel);
  double lo, hi, step;
  percent_range(series, false, lo, hi, step);
  c.y_axis(lo, hi, step);
  const double x0 = x_ticks.front(), x1 = x_ticks.back() > x0 ? x_ticks.back() : x0 + 1;
  auto xpos = [&](double x) { return Canvas::left + 10 + (Canvas::plot_w - 20) * (x - x0) / (x1 - x0); };
  for (double t : x_ticks)
    c.out() << Canvas::text(xpos(t), Canvas::top + Canvas::plot_h + 18, num(t), "middle");
  for (const auto& s : series) {
    std::ostringstream points;
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i])) points << num(xpos(s.x[i]), 6) << ',' << num(c.ypos(s.y[i]), 6) << ' ';
    c.out() << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"2\""
            << (s.dashed ? " stroke-dasharray=\"5 3\"" : "") << " points=\"" << points.str()
            << "\"/>\n";
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i]))
        c.out() << "<circle cx=\"" << num(xpos(s.x[i]), 6) << "\" cy=\"" << num(c.ypos(s.y[i]), 6)
                << "\" r=\"2.5\" fill=\"" << s.color << "\"/>\n";
  }
  c.legend(series, false);
  return c.save(path);
}

// Grouped bars: one group per category, one bar per series (series[k].y[group]),
// each labelled with its value; a NaN value shows "error" instead of a bar.
inline bool bar_chart(const std::string& path, const std::string& title,
                      const std::string& xlabel, const std::string& ylabel,
                      const std::vector<std::string>& groups, const std::vector<Series>& series) {
  Canvas c(title, xlabel, ylabel);
  double lo, hi, step;
  percent_range(series, true, lo, hi, step);
  c.y_axis(lo, hi, step);
  const double group_w = Canvas::plot_w / double(groups.size());
  const double bar_w = group_w * 0.8 / double(series.size());
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const double gx = Canvas::left + group_w * double(g);
    c.out() << Canvas::text(gx + group_w / 2, Canvas::top + Canvas::plot_h + 18, groups[g], "middle");
    for (std::size_t k = 0; k < series.size(); ++k) {
      const double x = gx + group_w * 0.1 + bar_w * double(k);
      const double v = series[k].y[g];
      if (!std::isfinite(v)) {
        c.out() << Canvas::text(x + bar_w / 2, Canvas::top + Canvas::plot_h - 6, "error", "middle", 10);
        continue;
      }
      const double y = c.ypos(v);
      c.out() << "<rect x=\"" << num(x, 6) << "\" y=\"" << num(y, 6) << "\" width=\""
              << num(bar_w - 2, 6) << "\" height=\"" << num(Canvas::top + Canvas::plot_h - y, 6)
              << "\" fill=\"" << series[k].color << "\"/>\n"
              << Canvas::text(x + bar_w / 2 - 1, y - 4, num(v, 3), "middle", 10);
    }
  }
  c.legend(series, true);
  return c.save(path);
}

}  // namespace fmnist::svg
