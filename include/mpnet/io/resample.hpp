// Resizing 8-bit images exactly as Pillow's Image.resize does (its Resample.c), so that
// datasets made by mpnet-dataset have the pixels of the reference dataset tool, which uses
// Pillow: a separable convolution, horizontal pass first, each output pixel a normalised
// window of the filter scaled by the reduction factor, coefficients in 22-bit fixed point,
// and the intermediate image rounded to 8 bits between the passes.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/io/png.hpp"

namespace mpnet::io {

enum class Filter { box, bicubic, lanczos };

namespace detail {

struct Kernel {
    double (*weight)(double);
    double support;
};

inline double box_weight(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

// Keys' cubic with a = -0.5.
inline double bicubic_weight(double x) {
    constexpr double a = -0.5;
    x = std::abs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

inline double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= std::numbers::pi;
    return std::sin(x) / x;
}

inline double lanczos_weight(double x) { return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0; }

inline Kernel kernel(Filter f) {
    switch (f) {
        case Filter::box: return {box_weight, 0.5};
        case Filter::bicubic: return {bicubic_weight, 2.0};
        case Filter::lanczos: return {lanczos_weight, 3.0};
    }
    fail("resample: unknown filter");
}

constexpr int precision_bits = 32 - 8 - 2;

// For every output position along one axis: the first input index, the count, and that many
// fixed-point weights (stride `taps`).
struct Windows {
    int taps = 0;
    std::vector<int> first, count;
    std::vector<int32_t> weights;
};

inline Windows windows(int in_size, int out_size, Filter f) {
    const Kernel k = kernel(f);
    const double scale = double(in_size) / out_size;
    const double filter_scale = std::max(scale, 1.0);
    const double support = k.support * filter_scale, reciprocal = 1.0 / filter_scale;
    Windows w;
    w.taps = int(std::ceil(support)) * 2 + 1;
    w.first.resize(std::size_t(out_size));
    w.count.resize(std::size_t(out_size));
    w.weights.assign(std::size_t(out_size) * std::size_t(w.taps), 0);
    std::vector<double> row(std::size_t(w.taps));
    for (int o = 0; o < out_size; ++o) {
        const double center = (o + 0.5) * scale;
        const int lo = std::max(int(center - support + 0.5), 0);
        const int n = std::min(int(center + support + 0.5), in_size) - lo;
        double total = 0;
        for (int i = 0; i < n; ++i) total += row[std::size_t(i)] = k.weight((i + lo - center + 0.5) * reciprocal);
        for (int i = 0; i < n; ++i) {
            const double v = total != 0.0 ? row[std::size_t(i)] / total : row[std::size_t(i)];
            // Truncation after adding +-0.5: Pillow's rounding of the coefficients.
            w.weights[std::size_t(o) * std::size_t(w.taps) + std::size_t(i)] =
                int32_t(v < 0 ? -0.5 + v * (1 << precision_bits) : 0.5 + v * (1 << precision_bits));
        }
        w.first[std::size_t(o)] = lo;
        w.count[std::size_t(o)] = n;
    }
    return w;
}

inline uint8_t clip8(int32_t sum) { return uint8_t(std::clamp(sum >> precision_bits, 0, 255)); }

// One pass along x (horizontal) or y, every channel.
inline Image resample_axis(const Image& in, int out_size, Filter f, bool horizontal) {
    const int in_size = horizontal ? in.width : in.height;
    const Windows w = windows(in_size, out_size, f);
    Image out(horizontal ? out_size : in.width, horizontal ? in.height : out_size, in.channels);
    const std::size_t C = std::size_t(in.channels);
    for (int y = 0; y < out.height; ++y)
        for (int x = 0; x < out.width; ++x) {
            const int o = horizontal ? x : y;
            const int32_t* k = &w.weights[std::size_t(o) * std::size_t(w.taps)];
            for (std::size_t c = 0; c < C; ++c) {
                int32_t sum = 1 << (precision_bits - 1);
                for (int i = 0; i < w.count[std::size_t(o)]; ++i) {
                    const int sx = horizontal ? w.first[std::size_t(o)] + i : x;
                    const int sy = horizontal ? y : w.first[std::size_t(o)] + i;
                    sum += int32_t(in.pixels[(std::size_t(sy) * std::size_t(in.width) + std::size_t(sx)) * C + c]) * k[i];
                }
                out.pixels[(std::size_t(y) * std::size_t(out.width) + std::size_t(x)) * C + c] = clip8(sum);
            }
        }
    return out;
}

}  // namespace detail

// `in` resized to width x height (HWC uint8, any channel count), bit for bit as Pillow's
// Image.resize with the same filter gives for an "L" or "RGB" image.
inline Image resize(const Image& in, int width, int height, Filter f) {
    check(in.width > 0 && in.height > 0 && width > 0 && height > 0, "resize: ", in.width, "x", in.height, " to ",
          width, "x", height);
    if (width == in.width && height == in.height) return in;
    Image tmp = width != in.width ? detail::resample_axis(in, width, f, true) : in;
    return height != in.height ? detail::resample_axis(tmp, height, f, false) : tmp;
}

}  // namespace mpnet::io
