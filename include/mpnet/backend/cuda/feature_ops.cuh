// The kernels of the feature networks on the GPU, forward only, each following its CPU
// kernel (backend/cpu/feature_ops.hpp): a general convolution (im2col into a temporary,
// then one cuBLAS product per image group), pooling, window copies, layer normalisation
// over channels and GELU.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mpnet/backend/cuda/gemm.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/feature_checks.hpp"

namespace mpnet::cuda {

namespace detail {

// cols[img][(c, i, j), (oy, ox)] over every element of a group of images.
template <class T>
struct Im2col {
    const T* x;
    T* cols;
    ops::Conv2dExtents e;
    ops::Conv2dStep s;
    __device__ void operator()(int64_t idx) const {
        const int64_t p = e.ho * e.wo, rows = e.cin * e.kh * e.kw;
        const int64_t ox = idx % e.wo, oy = idx / e.wo % e.ho, r = idx / p % rows, img = idx / (p * rows);
        const int64_t c = r / (e.kh * e.kw), i = r / e.kw % e.kh, j = r % e.kw;
        const int64_t iy = oy * s.stride_h - s.pad_h + i, ix = ox * s.stride_w - s.pad_w + j;
        cols[idx] = iy < 0 || iy >= e.h || ix < 0 || ix >= e.w ? T(0)
                                                               : x[((img * e.cin + c) * e.h + iy) * e.w + ix];
    }
};

template <class T>
struct BiasRelu {
    const T* bias;
    T* y;
    int64_t p, channels;
    bool relu;
    __device__ void operator()(int64_t i) const {
        const T v = y[i] + bias[i / p % channels];
        y[i] = relu && v < T(0) ? T(0) : v;
    }
};

template <class T>
struct Pool2d {
    const T* x;
    T* y;
    int64_t h, w, ho, wo;
    ops::PoolStep p;
    __device__ void operator()(int64_t i) const {
        const int64_t ox = i % wo, oy = i / wo % ho, q = i / (ho * wo);
        const int64_t y0 = max(oy * p.stride - p.pad, int64_t(0)), y1 = min(oy * p.stride - p.pad + p.size, h);
        const int64_t x0 = max(ox * p.stride - p.pad, int64_t(0)), x1 = min(ox * p.stride - p.pad + p.size, w);
        const bool is_max = p.mode == ops::Pooling::max;
        T acc = is_max ? T(-INFINITY) : T(0);
        for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) {
                const T v = x[(q * h + iy) * w + ix];
                acc = is_max ? (acc < v ? v : acc) : acc + v;
            }
        y[i] = is_max ? acc : acc / T((y1 - y0) * (x1 - x0));
    }
};

template <class T>
struct CopyWindow {
    const T* x;
    T* y;
    int64_t cx, tx, cy, ty;
    ops::CopyWindow w;
    __device__ void operator()(int64_t i) const {
        const int64_t t = i % w.positions, c = i / w.positions % w.channels, img = i / (w.positions * w.channels);
        y[(img * cy + w.y_channel + c) * ty + w.y_position + t] = x[(img * cx + w.x_channel + c) * tx + w.x_position + t];
    }
};

// One thread per (image, position): mean and variance over the channels in double.
template <class T>
struct LayerNormChannels {
    const T* x;
    const T* gamma;
    const T* beta;
    T* y;
    int64_t c, t;
    double eps;
    __device__ void operator()(int64_t i) const {
        const int64_t pos = i % t, img = i / t;
        const T* px = x + img * c * t + pos;
        T* py = y + img * c * t + pos;
        double mean = 0, var = 0;
        for (int64_t ch = 0; ch < c; ++ch) mean += double(px[ch * t]);
        mean /= double(c);
        for (int64_t ch = 0; ch < c; ++ch) {
            const double d = double(px[ch * t]) - mean;
            var += d * d;
        }
        const double rstd = 1 / sqrt(var / double(c) + eps);
        for (int64_t ch = 0; ch < c; ++ch)
            py[ch * t] = T((double(px[ch * t]) - mean) * rstd * double(gamma[ch]) + double(beta[ch]));
    }
};

template <class T>
struct Gelu {
    const T* x;
    T* y;
    __device__ void operator()(int64_t i) const {
        const T v = x[i];
        y[i] = v * T(0.5) * (T(1) + erf(v * T(0.70710678118654752440)));
    }
};

}  // namespace detail

// y = conv(x, weight) + bias[c], then max(y, 0) if `relu`. Images are unfolded in groups
// whose columns stay under 256 MiB, each group one strided batched product.
template <Scalar T>
void conv2d_bias_forward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& weight, const CudaTensor<T>& bias,
                         ops::Conv2dStep s, bool relu, CudaTensor<T>& y) {
    const auto e = ops::conv2d_bias_extents(x.shape(), weight.shape(), bias.shape(), s, y.shape());
    const int64_t k = e.cin * e.kh * e.kw, p = e.ho * e.wo;
    if (e.n == 0 || p == 0 || e.cout == 0) return;
    const int64_t per_image = k * p;
    const int64_t group = std::clamp<int64_t>((int64_t(256) << 20) / int64_t(sizeof(T)) / std::max<int64_t>(per_image, 1),
                                              1, e.n);
    CudaTensor<T> cols(Shape{group, k, p});
    using detail::Operand;
    for (int64_t first = 0; first < e.n; first += group) {
        const int64_t count = std::min(group, e.n - first);
        const T* xi = x.data() + first * e.cin * e.h * e.w;
        detail::for_each(count * per_image, detail::Im2col<T>{xi, cols.data(), e, s}, "conv2d_bias_forward: im2col");
        // y[img] [cout, p] = weight [cout, k] x cols[img] [k, p]
        detail::gemm<T>(e.cout, p, k, 1, Operand<T>{weight.data(), k, 0, false}, Operand<T>{cols.data(), p, per_image, false},
                        0, y.data() + first * e.cout * p, p, e.cout * p, count, "conv2d_bias_forward");
    }
    detail::for_each(y.numel(), detail::BiasRelu<T>{bias.data(), y.data(), p, e.cout, relu}, "conv2d_bias_forward: bias");
}

template <Scalar T>
void pool2d_forward(CudaBackend, const CudaTensor<T>& x, ops::PoolStep p, CudaTensor<T>& y) {
    ops::check_pool(x.shape(), p, y.shape());
    detail::for_each(y.numel(), detail::Pool2d<T>{x.data(), y.data(), x.size(2), x.size(3), y.size(2), y.size(3), p},
                     "pool2d_forward");
}

template <Scalar T>
void copy_window(CudaBackend, const CudaTensor<T>& x, ops::CopyWindow w, CudaTensor<T>& y) {
    ops::check_copy_window(x.shape(), w, y.shape());
    detail::for_each(x.size(0) * w.channels * w.positions,
                     detail::CopyWindow<T>{x.data(), y.data(), x.size(1), ops::positions_of(x.shape()), y.size(1),
                                           ops::positions_of(y.shape()), w},
                     "copy_window");
}

template <Scalar T>
void layer_norm_channels_forward(CudaBackend, const CudaTensor<T>& x, double eps, const CudaTensor<T>& gamma,
                                 const CudaTensor<T>& beta, CudaTensor<T>& y) {
    ops::check_layer_norm_channels(x.shape(), gamma.shape(), beta.shape(), y.shape());
    const int64_t n = x.size(0), c = x.size(1);
    if (n * c == 0) return;
    const int64_t t = x.numel() / (n * c);
    detail::for_each(n * t, detail::LayerNormChannels<T>{x.data(), gamma.data(), beta.data(), y.data(), c, t, eps},
                     "layer_norm_channels_forward");
}

template <Scalar T>
void gelu_forward(CudaBackend, const CudaTensor<T>& x, CudaTensor<T>& y) {
    check_same_shape(x, y, "gelu_forward");
    detail::for_each(x.numel(), detail::Gelu<T>{x.data(), y.data()}, "gelu_forward");
}

}  // namespace mpnet::cuda
