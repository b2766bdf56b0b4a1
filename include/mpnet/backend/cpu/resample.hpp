// Depthwise 2x resampling on the CPU with a separable filter f (normalised, even length,
// padding p = (len-1)/2):
//   down: y[o] = sum_k f[k] x[2o - p + k]            (per axis, 2-D kernel f x f)
//   up:   y[2i - p + k] += 4 f[k] f[k'] x[i]          (transposed, kernel 4 f x f)
// "up" is 4x the adjoint of "down", so two loops serve all four directions. The default
// filter [1, 1] takes the fast paths: a 2x2 average and a nearest-neighbour copy.
//
// On activations stored in 16 bits, each channel's plane is widened into a per-thread
// buffer, resampled in float and rounded once.
#pragma once
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/half_chunks.hpp"
#include "mpnet/ops/resample_mode.hpp"

namespace mpnet::cpu {

namespace detail {

// y (h/2 x w/2) = scale * down(x), one channel.
template <class T>
void down_gather(const T* x, int64_t h, int64_t w, const std::vector<double>& f, double scale, T* y) {
    const int64_t K = int64_t(f.size()), p = (K - 1) / 2, oh = h / 2, ow = w / 2;
    if (K == 2) {
        const T s = T(scale * f[0] * f[0]);  // f = [1/2, 1/2]
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
                const T* q = x + 2 * oy * w + 2 * ox;
                y[oy * ow + ox] = s * (q[0] + q[1] + q[w] + q[w + 1]);
            }
        return;
    }
    for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
            double acc = 0;
            for (int64_t ky = 0; ky < K; ++ky) {
                const int64_t sy = 2 * oy - p + ky;
                if (sy < 0 || sy >= h) continue;
                for (int64_t kx = 0; kx < K; ++kx) {
                    const int64_t sx = 2 * ox - p + kx;
                    if (sx >= 0 && sx < w) acc += f[size_t(ky)] * f[size_t(kx)] * x[sy * w + sx];
                }
            }
            y[oy * ow + ox] = T(scale * acc);
        }
}

// x (h x w) = scale * down^T(y), one channel; y is h/2 x w/2.
template <class T>
void down_scatter(const T* y, int64_t h, int64_t w, const std::vector<double>& f, double scale, T* x) {
    const int64_t K = int64_t(f.size()), p = (K - 1) / 2, oh = h / 2, ow = w / 2;
    if (K == 2) {
        const T s = T(scale * f[0] * f[0]);
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
                const T v = s * y[oy * ow + ox];
                T* q = x + 2 * oy * w + 2 * ox;
                q[0] = q[1] = q[w] = q[w + 1] = v;
            }
        return;
    }
    std::fill(x, x + h * w, T(0));
    for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
            const double v = scale * y[oy * ow + ox];
            for (int64_t ky = 0; ky < K; ++ky) {
                const int64_t sy = 2 * oy - p + ky;
                if (sy < 0 || sy >= h) continue;
                for (int64_t kx = 0; kx < K; ++kx) {
                    const int64_t sx = 2 * ox - p + kx;
                    if (sx >= 0 && sx < w) x[sy * w + sx] += T(f[size_t(ky)] * f[size_t(kx)] * v);
                }
            }
        }
}

// f(from, to) for each channel's plane, from `src` (planes of `from_size`) into `dst`: on the
// tensors' memory, or for 16-bit storage on float copies of the planes.
template <Element T, class F>
void per_channel(const CpuTensor<T>& src, int64_t from_size, CpuTensor<T>& dst, int64_t to_size, F&& f) {
    const int64_t planes = src.size(0) * src.size(1);
    const T* from = src.data();
    T* to = dst.data();
#pragma omp parallel for schedule(static) if (src.numel() > parallel_grain)
    for (int64_t c = 0; c < planes; ++c) {
        if constexpr (HalfStorage<T>) {
            float* in = widened_buffer(std::size_t(from_size + to_size));
            widen(from + c * from_size, in, from_size);
            f(static_cast<const float*>(in), in + from_size);
            narrow(in + from_size, to + c * to_size, to_size);
        } else {
            f(from + c * from_size, to + c * to_size);
        }
    }
}

}  // namespace detail

template <Element T>
void resample_forward(CpuBackend, const CpuTensor<T>& x, const std::vector<double>& filter, ops::Resample mode,
                      CpuTensor<T>& y) {
    ops::check_resampled(x.shape(), y.shape(), mode, "resample_forward");
    if (mode == ops::Resample::keep) return y.copy_from(x);
    const auto f = ops::normalized_filter(filter);
    const int64_t H = y.size(2), W = y.size(3), h = x.size(2), w = x.size(3);
    detail::per_channel(x, h * w, y, H * W, [&](const auto* from, auto* to) {
        if (mode == ops::Resample::down) detail::down_gather(from, h, w, f, 1.0, to);
        else detail::down_scatter(from, H, W, f, 4.0, to);
    });
}

template <Element T>
void resample_backward(CpuBackend, const CpuTensor<T>& dy, const std::vector<double>& filter, ops::Resample mode,
                       CpuTensor<T>& dx) {
    ops::check_resampled(dx.shape(), dy.shape(), mode, "resample_backward");
    if (mode == ops::Resample::keep) return dx.copy_from(dy);
    const auto f = ops::normalized_filter(filter);
    const int64_t H = dy.size(2), W = dy.size(3), h = dx.size(2), w = dx.size(3);
    detail::per_channel(dy, H * W, dx, h * w, [&](const auto* from, auto* to) {
        if (mode == ops::Resample::down) detail::down_scatter(from, h, w, f, 1.0, to);
        else detail::down_gather(from, H, W, f, 4.0, to);
    });
}

}  // namespace mpnet::cpu
