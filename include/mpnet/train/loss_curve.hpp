// The training plot (loss.svg), rewritten at every status line: the loss against images
// seen, raw and smoothed, with the learning rate on a second axis. Ticks are round values
// (1, 2 or 5 times a power of ten) so the figure reads like a plotting library's.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "mpnet/io/atomic_file.hpp"

namespace mpnet::train {

// Round tick positions covering [lo, hi]: about `target` of them, steps of 1, 2 or 5 x 10^k.
struct Ticks {
    double first = 0, step = 1;
    int count = 0;

    [[nodiscard]] double at(int i) const { return first + step * i; }
    [[nodiscard]] double last() const { return at(count - 1); }
};

inline Ticks nice_ticks(double lo, double hi, int target = 5) {
    if (!(hi > lo)) hi = lo + (lo == 0 ? 1 : std::abs(lo) * 0.1);
    const double raw = (hi - lo) / target, mag = std::pow(10, std::floor(std::log10(raw)));
    const double unit = raw / mag;
    const double step = (unit < 1.5 ? 1 : unit < 3.5 ? 2 : unit < 7.5 ? 5 : 10) * mag;
    Ticks t{std::floor(lo / step) * step, step, 0};
    t.count = int(std::ceil(hi / step - 1e-9) - std::floor(lo / step)) + 1;
    return t;
}

// A tick label with no more digits than the step needs ("0.25", "1e-05", "64").
inline std::string tick_label(double v, double step) {
    if (std::abs(v) < step * 1e-6) v = 0;
    const int decimals = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
    char buf[32];
    if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e6)) std::snprintf(buf, sizeof buf, "%.3g", v);
    else std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

// An exponential moving average with the same lag whatever the number of points: the
// window is a tenth of the points shown (at least one).
inline std::vector<double> smoothed(const std::vector<double>& y) {
    std::vector<double> out(y.size(), NAN);
    const double alpha = 1.0 / std::max(1.0, double(y.size()) / 10);
    double acc = NAN;
    for (std::size_t i = 0; i < y.size(); ++i) {
        if (!std::isfinite(y[i])) continue;
        acc = std::isnan(acc) ? y[i] : acc + alpha * (y[i] - acc);
        out[i] = acc;
    }
    return out;
}

inline std::string loss_curve_svg(const std::vector<double>& kimg, const std::vector<double>& loss,
                                  const std::vector<double>& lr) {
    constexpr double W = 720, H = 400, L = 70, R = 80, T = 30, Bm = 50;
    std::ostringstream s;
    s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    std::vector<std::size_t> ok;
    for (std::size_t i = 0; i < loss.size(); ++i)
        if (std::isfinite(loss[i])) ok.push_back(i);
    if (ok.empty()) return s.str() + "<text x='20' y='30'>no finite loss yet</text></svg>\n";

    double x1 = kimg[ok.back()], y0 = loss[ok.front()], y1 = y0, lr1 = 0;
    for (std::size_t i : ok) y0 = std::min(y0, loss[i]), y1 = std::max(y1, loss[i]);
    for (double v : lr) lr1 = std::max(lr1, std::isfinite(v) ? v : 0.0);
    const Ticks xt = nice_ticks(0, x1), yt = nice_ticks(y0, y1), rt = nice_ticks(0, lr1 > 0 ? lr1 : 1);
    const double xa = xt.first, xb = xt.last(), ya = yt.first, yb = yt.last(), rb = rt.last();
    auto px = [&](double x) { return L + (x - xa) / (xb - xa) * (W - L - R); };
    auto py = [&](double y) { return T + (yb - y) / (yb - ya) * (H - T - Bm); };
    auto pr = [&](double v) { return T + (rb - v) / rb * (H - T - Bm); };

    // Grid and ticks.
    for (int i = 0; i < yt.count; ++i)
        s << "<line x1='" << L << "' x2='" << W - R << "' y1='" << py(yt.at(i)) << "' y2='" << py(yt.at(i))
          << "' stroke='#e5e5e5'/>\n<text x='" << L - 6 << "' y='" << py(yt.at(i)) + 4 << "' text-anchor='end'>"
          << tick_label(yt.at(i), yt.step) << "</text>\n";
    for (int i = 0; i < xt.count; ++i)
        s << "<line x1='" << px(xt.at(i)) << "' x2='" << px(xt.at(i)) << "' y1='" << T << "' y2='" << H - Bm
          << "' stroke='#e5e5e5'/>\n<text x='" << px(xt.at(i)) << "' y='" << H - Bm + 16
          << "' text-anchor='middle'>" << tick_label(xt.at(i), xt.step) << "</text>\n";
    for (int i = 0; i < rt.count; ++i)
        s << "<text x='" << W - R + 6 << "' y='" << pr(rt.at(i)) + 4 << "' fill='#d62728'>"
          << tick_label(rt.at(i), rt.step) << "</text>\n";
    s << "<rect x='" << L << "' y='" << T << "' width='" << W - L - R << "' height='" << H - T - Bm
      << "' fill='none' stroke='#888'/>\n";

    auto polyline = [&](const std::vector<double>& y, auto map, const char* style) {
        s << "<polyline fill='none' " << style << " points='";
        for (std::size_t i = 0; i < y.size() && i < kimg.size(); ++i)
            if (std::isfinite(y[i])) s << px(kimg[i]) << "," << map(y[i]) << " ";
        s << "'/>\n";
    };
    if (lr1 > 0) polyline(lr, pr, "stroke='#d62728' stroke-width='1' stroke-dasharray='4 3'");
    polyline(loss, py, "stroke='#9ecae1' stroke-width='1'");
    polyline(smoothed(loss), py, "stroke='#1f77b4' stroke-width='2'");

    // Axis titles and legend.
    const double mid = (T + H - Bm) / 2;
    s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 12 << "' text-anchor='middle'>images seen (kimg)</text>\n"
      << "<text x='16' y='" << mid << "' transform='rotate(-90 16 " << mid << ")' text-anchor='middle'>loss</text>\n"
      << "<text x='" << W - 14 << "' y='" << mid << "' transform='rotate(90 " << W - 14 << " " << mid
      << ")' text-anchor='middle' fill='#d62728'>learning rate</text>\n"
      << "<text x='" << L << "' y='" << T - 10 << "'><tspan fill='#9ecae1'>&#x2014; loss</tspan>"
      << "<tspan dx='12' fill='#1f77b4'>&#x2014; smoothed</tspan>"
      << "<tspan dx='12' fill='#d62728'>- - learning rate</tspan></text>\n</svg>\n";
    return s.str();
}

inline void write_loss_curve(const std::filesystem::path& path, const std::vector<double>& kimg,
                             const std::vector<double>& loss, const std::vector<double>& lr) {
    const std::string svg = loss_curve_svg(kimg, loss, lr);
    io::write_file_atomic(path, std::as_bytes(std::span(svg.data(), svg.size())));
}

}  // namespace mpnet::train
