// What the feature networks see: 8-bit RGB images [N, 3, H, W] (one channel is repeated to
// three) turned into each network's input, on the host in double precision, as the EDM2
// authors' detectors (calculate_metrics.py) do it.
//
//   Inception-v3: TensorFlow's legacy bilinear resize to 299 x 299 (source coordinate
//     dst * in / out, no half-pixel offset, edges clamped; the TorchScript detector builds
//     it from affine_grid and grid_sample), then (x - 128) / 128.
//   DINOv2: torch.nn.functional.interpolate(x, 224 x 224, mode='bicubic', antialias=True)
//     on 0..255 floats, then x / 255 normalised by ImageNet's mean and std.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::metrics {

inline constexpr int64_t dinov2_size = 224;

// A batch of 8-bit images, channel-major: [count, channels, height, width], channels 1 or 3.
struct ImageBatch {
    std::span<const uint8_t> pixels;
    int64_t count = 0, channels = 3, height = 0, width = 0;

    [[nodiscard]] uint8_t at(int64_t n, int64_t c, int64_t y, int64_t x) const {
        const int64_t ch = channels == 1 ? 0 : c;
        return pixels[std::size_t(((n * channels + ch) * height + y) * width + x)];
    }
    void check_valid(const char* what) const {
        check((channels == 1 || channels == 3) && height > 0 && width > 0 &&
                  pixels.size() == std::size_t(count * channels * height * width),
              what, ": images must be 8-bit with 1 or 3 channels, got ", count, " x ", channels, " x ", height, " x ",
              width, " (", pixels.size(), " bytes)");
    }
};

namespace detail {

// One output coordinate of a separable resampling: input indices first..first+weights.size()-1.
struct Taps {
    int64_t first = 0;
    std::vector<double> weights;
};

// TensorFlow's legacy bilinear resize along one axis.
inline std::vector<Taps> legacy_bilinear_taps(int64_t in, int64_t out) {
    std::vector<Taps> taps(static_cast<std::size_t>(out));
    for (int64_t i = 0; i < out; ++i) {
        const double src = std::min(double(i) * double(in) / double(out), double(in - 1));
        const int64_t lo = int64_t(std::floor(src));
        const double f = src - double(lo);
        taps[std::size_t(i)] = lo + 1 < in ? Taps{lo, {1 - f, f}} : Taps{lo, {1.0}};
    }
    return taps;
}

// Keys' cubic with a = -0.5, torch's antialiasing filter (as Pillow's).
inline double cubic_half(double x) {
    constexpr double a = -0.5;
    x = std::abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

// torch's antialiased bicubic interpolation along one axis (align_corners=False): each
// output's window of the filter stretched by the reduction factor, weights normalised.
inline std::vector<Taps> antialiased_bicubic_taps(int64_t in, int64_t out) {
    const double scale = double(in) / double(out);
    const double support = scale >= 1 ? 2 * scale : 2.0, inv = scale >= 1 ? 1 / scale : 1.0;
    std::vector<Taps> taps(static_cast<std::size_t>(out));
    for (int64_t i = 0; i < out; ++i) {
        const double center = scale * (double(i) + 0.5);
        const int64_t lo = std::max<int64_t>(int64_t(center - support + 0.5), 0);
        const int64_t hi = std::min<int64_t>(int64_t(center + support + 0.5), in);
        Taps t{lo, {}};
        double total = 0;
        for (int64_t j = lo; j < hi; ++j) {
            t.weights.push_back(cubic_half((double(j) - center + 0.5) * inv));
            total += t.weights.back();
        }
        for (auto& w : t.weights) w = total != 0 ? w / total : 0;
        taps[std::size_t(i)] = std::move(t);
    }
    return taps;
}

// out[n, c, y, x] = affine(sum over taps of image pixels), as float.
inline std::vector<float> resample(const ImageBatch& images, const std::vector<Taps>& rows,
                                   const std::vector<Taps>& cols, double scale, double shift) {
    const int64_t oh = int64_t(rows.size()), ow = int64_t(cols.size());
    std::vector<float> out(std::size_t(images.count * 3 * oh * ow));
    std::vector<double> horizontal(std::size_t(images.height * ow));
    for (int64_t n = 0; n < images.count; ++n)
        for (int64_t c = 0; c < 3; ++c) {
            for (int64_t y = 0; y < images.height; ++y)
                for (int64_t x = 0; x < ow; ++x) {
                    const auto& t = cols[std::size_t(x)];
                    double s = 0;
                    for (std::size_t k = 0; k < t.weights.size(); ++k)
                        s += t.weights[k] * images.at(n, c, y, t.first + int64_t(k));
                    horizontal[std::size_t(y * ow + x)] = s;
                }
            float* plane = out.data() + (n * 3 + c) * oh * ow;
            for (int64_t y = 0; y < oh; ++y) {
                const auto& t = rows[std::size_t(y)];
                for (int64_t x = 0; x < ow; ++x) {
                    double s = 0;
                    for (std::size_t k = 0; k < t.weights.size(); ++k)
                        s += t.weights[k] * horizontal[std::size_t((t.first + int64_t(k)) * ow + x)];
                    plane[y * ow + x] = float(s * scale + shift);
                }
            }
        }
    return out;
}

}  // namespace detail

// Inception-v3's input [N, 3, 299, 299].
inline std::vector<float> inception_input(const ImageBatch& images) {
    images.check_valid("inception_input");
    constexpr int64_t s = 299;
    return detail::resample(images, detail::legacy_bilinear_taps(images.height, s),
                            detail::legacy_bilinear_taps(images.width, s), 1.0 / 128, -1.0);
}

// DINOv2's input [N, 3, 224, 224]: resized, then per channel (x / 255 - mean) / std.
inline std::vector<float> dinov2_input(const ImageBatch& images) {
    images.check_valid("dinov2_input");
    constexpr double mean[3] = {0.485, 0.456, 0.406}, stdev[3] = {0.229, 0.224, 0.225};
    auto out = detail::resample(images, detail::antialiased_bicubic_taps(images.height, dinov2_size),
                                detail::antialiased_bicubic_taps(images.width, dinov2_size), 1.0, 0.0);
    const std::size_t plane = std::size_t(dinov2_size * dinov2_size);
    for (std::size_t i = 0; i < out.size(); ++i) {
        const std::size_t c = i / plane % 3;
        out[i] = float((double(out[i]) / 255 - mean[c]) / stdev[c]);
    }
    return out;
}

}  // namespace mpnet::metrics
