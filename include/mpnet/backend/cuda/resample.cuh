// Depthwise 2x resampling on the GPU with a separable filter f (normalised, even length,
// padding p = (len-1)/2), the CPU's definitions:
//   down: y[o] = sum_k f[k] x[2o - p + k]     up: 4x the adjoint of down.
// Both directions are written as gathers (one thread per output element, no atomics):
// `shrink` applies down, `grow` applies its adjoint. The filter [1, 1] takes the fast
// paths, a 2x2 average and a nearest-neighbour copy, with the CPU's float arithmetic.
// 16-bit activations are resampled natively (widened on load, rounded once on store).
#pragma once
#include <vector>

#include "mpnet/backend/cuda/convert.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/resample_mode.hpp"

namespace mpnet::cuda {

namespace detail {

// The normalised 1-D filter, passed by value to the kernels.
struct Filter {
    static constexpr int max_taps = 16;
    double f[max_taps];
    int taps;
};

inline Filter make_filter(const std::vector<double>& filter) {
    const auto f = ops::normalized_filter(filter);
    check(f.size() <= size_t(Filter::max_taps), "resample: filters longer than ", Filter::max_taps,
          " taps are not supported on the GPU (got ", f.size(), ")");
    Filter out{};
    out.taps = int(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) out.f[i] = f[i];
    return out;
}

// y (h/2 x w/2 per plane) = scale * down(x).
template <class T>
struct Shrink {
    const T* x;
    int64_t h, w;
    Filter f;
    double scale;
    T* y;
    __device__ void operator()(int64_t e) const {
        const int64_t oh = h / 2, ow = w / 2, plane = e / (oh * ow), oy = (e / ow) % oh, ox = e % ow;
        const T* src = x + plane * h * w;
        if (f.taps == 2) {
            const auto s = Compute<T>(scale * f.f[0] * f.f[0]);
            const T* q = src + 2 * oy * w + 2 * ox;
            st(y[e], s * (ld(q[0]) + ld(q[1]) + ld(q[w]) + ld(q[w + 1])));
            return;
        }
        const int64_t p = (f.taps - 1) / 2;
        double acc = 0;
        for (int ky = 0; ky < f.taps; ++ky) {
            const int64_t sy = 2 * oy - p + ky;
            if (sy < 0 || sy >= h) continue;
            for (int kx = 0; kx < f.taps; ++kx) {
                const int64_t sx = 2 * ox - p + kx;
                if (sx >= 0 && sx < w) acc += f.f[ky] * f.f[kx] * ld(src[sy * w + sx]);
            }
        }
        st(y[e], Compute<T>(scale * acc));
    }
};

// x (h x w per plane) = scale * down^T(y), y being h/2 x w/2: each x element gathers the
// y elements whose windows cover it.
template <class T>
struct Grow {
    const T* y;
    int64_t h, w;
    Filter f;
    double scale;
    T* x;
    __device__ void operator()(int64_t e) const {
        const int64_t oh = h / 2, ow = w / 2, plane = e / (h * w), sy = (e / w) % h, sx = e % w;
        const T* src = y + plane * oh * ow;
        if (f.taps == 2) {
            st(x[e], Compute<T>(scale * f.f[0] * f.f[0]) * ld(src[(sy / 2) * ow + sx / 2]));
            return;
        }
        const int64_t p = (f.taps - 1) / 2;
        double acc = 0;
        for (int ky = 0; ky < f.taps; ++ky) {
            const int64_t ty = sy + p - ky;  // = 2 oy
            if (ty < 0 || ty % 2 || ty / 2 >= oh) continue;
            for (int kx = 0; kx < f.taps; ++kx) {
                const int64_t tx = sx + p - kx;
                if (tx < 0 || tx % 2 || tx / 2 >= ow) continue;
                acc += f.f[ky] * f.f[kx] * ld(src[(ty / 2) * ow + tx / 2]);
            }
        }
        st(x[e], Compute<T>(scale * acc));
    }
};

}  // namespace detail

template <Element T>
void resample_forward(CudaBackend, const CudaTensor<T>& x, const std::vector<double>& filter, ops::Resample mode,
                      CudaTensor<T>& y) {
    ops::check_resampled(x.shape(), y.shape(), mode, "resample_forward");
    if (mode == ops::Resample::keep) return y.copy_from(x);
    const auto f = detail::make_filter(filter);
    if (mode == ops::Resample::down)
        detail::for_each(y.numel(), detail::Shrink<T>{x.data(), x.size(2), x.size(3), f, 1.0, y.data()},
                         "resample_forward (down) on ", x.shape());
    else
        detail::for_each(y.numel(), detail::Grow<T>{x.data(), y.size(2), y.size(3), f, 4.0, y.data()},
                         "resample_forward (up) on ", x.shape());
}

template <Element T>
void resample_backward(CudaBackend, const CudaTensor<T>& dy, const std::vector<double>& filter, ops::Resample mode,
                       CudaTensor<T>& dx) {
    ops::check_resampled(dx.shape(), dy.shape(), mode, "resample_backward");
    if (mode == ops::Resample::keep) return dx.copy_from(dy);
    const auto f = detail::make_filter(filter);
    if (mode == ops::Resample::down)
        detail::for_each(dx.numel(), detail::Grow<T>{dy.data(), dx.size(2), dx.size(3), f, 1.0, dx.data()},
                         "resample_backward (down) on ", dx.shape());
    else
        detail::for_each(dx.numel(), detail::Shrink<T>{dy.data(), dy.size(2), dy.size(3), f, 4.0, dx.data()},
                         "resample_backward (up) on ", dx.shape());
}

}  // namespace mpnet::cuda
