// A small SVG plot of the training loss against images seen, rewritten at every status line.
#pragma once
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "mpnet/io/atomic_file.hpp"

namespace mpnet::train {

inline std::string loss_curve_svg(const std::vector<double>& kimg, const std::vector<double>& loss) {
    constexpr double W = 640, H = 360, L = 60, R = 20, T = 20, Bm = 40;
    std::ostringstream s;
    s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' "
      << "font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    std::vector<size_t> ok;
    for (size_t i = 0; i < loss.size(); ++i)
        if (std::isfinite(loss[i])) ok.push_back(i);
    if (ok.empty()) return s.str() + "<text x='20' y='30'>no finite loss yet</text></svg>\n";
    double x0 = kimg[ok.front()], x1 = kimg[ok.back()], y0 = loss[ok.front()], y1 = y0;
    for (size_t i : ok) y0 = std::min(y0, loss[i]), y1 = std::max(y1, loss[i]);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1e-3;
    auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
    auto py = [&](double y) { return T + (y1 - y) / (y1 - y0) * (H - T - Bm); };
    s << "<rect x='" << L << "' y='" << T << "' width='" << W - L - R << "' height='" << H - T - Bm
      << "' fill='none' stroke='#888'/>\n<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='";
    for (size_t i : ok) s << px(kimg[i]) << "," << py(loss[i]) << " ";
    s << "'/>\n";
    for (int k = 0; k <= 4; ++k) {
        const double yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
        s << "<text x='" << L - 6 << "' y='" << py(yv) + 4 << "' text-anchor='end'>" << yv << "</text>\n";
        s << "<text x='" << px(xv) << "' y='" << H - Bm + 16 << "' text-anchor='middle'>" << xv << "</text>\n";
    }
    s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 6 << "' text-anchor='middle'>kimg</text>\n"
      << "<text x='14' y='" << (T + H - Bm) / 2 << "' transform='rotate(-90 14 " << (T + H - Bm) / 2
      << ")' text-anchor='middle'>loss</text>\n</svg>\n";
    return s.str();
}

inline void write_loss_curve(const std::filesystem::path& path, const std::vector<double>& kimg,
                             const std::vector<double>& loss) {
    const std::string svg = loss_curve_svg(kimg, loss);
    io::write_file_atomic(path, std::as_bytes(std::span(svg.data(), svg.size())));
}

}  // namespace mpnet::train
