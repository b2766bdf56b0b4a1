// The kernels of the feature networks (metrics/inception_v3.hpp, metrics/dinov2.hpp) on the
// CPU, forward only: a convolution of any kernel shape, stride and padding with bias and
// optional ReLU, max and average pooling, window copies (concatenation, tokens), layer
// normalisation over channels and GELU.
#pragma once
#include <omp.h>

#include <unsupported/Eigen/SpecialFunctions>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/conv.hpp"
#include "mpnet/backend/cpu/eigen.hpp"
#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/ops/feature_checks.hpp"

namespace mpnet::cpu {

namespace detail {

// cols[(c, i, j), (oy, ox)] = x[c, oy s_h - p_h + i, ox s_w - p_w + j], zero outside the image.
template <Scalar T>
void im2col(const T* x, const ops::Conv2dExtents& e, const ops::Conv2dStep& s, T* cols) {
    const int64_t rows = e.cin * e.kh * e.kw, p = e.ho * e.wo;
#pragma omp parallel for schedule(static) if (rows * p > 65536)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t c = r / (e.kh * e.kw), i = r / e.kw % e.kh, j = r % e.kw;
        const T* plane = x + c * e.h * e.w;
        T* out = cols + r * p;
        for (int64_t oy = 0; oy < e.ho; ++oy) {
            const int64_t iy = oy * s.stride_h - s.pad_h + i;
            T* row = out + oy * e.wo;
            if (iy < 0 || iy >= e.h) {
                std::fill(row, row + e.wo, T(0));
                continue;
            }
            for (int64_t ox = 0; ox < e.wo; ++ox) {
                const int64_t ix = ox * s.stride_w - s.pad_w + j;
                row[ox] = ix < 0 || ix >= e.w ? T(0) : plane[iy * e.w + ix];
            }
        }
    }
}

}  // namespace detail

// y = conv(x, weight) + bias[c], then max(y, 0) if `relu`. A stride-1 "same" convolution
// with an odd square kernel larger than 1x1 goes to the network's packed kernel (conv.hpp);
// any other shape unfolds each image (im2col) and multiplies with Eigen, one image per
// thread: Eigen's blocking (and so the order of its sums) depends on how many threads share
// a product, so giving each product one thread keeps every image's features independent of
// the batch it came in. (Inception's 17 x 17 and 8 x 8 products are too small to split
// well anyway.)
template <Scalar T>
void conv2d_bias_forward(CpuBackend b, const CpuTensor<T>& x, const CpuTensor<T>& weight, const CpuTensor<T>& bias,
                         ops::Conv2dStep s, bool relu, CpuTensor<T>& y) {
    const auto e = ops::conv2d_bias_extents(x.shape(), weight.shape(), bias.shape(), s, y.shape());
    const bool same = e.kh == e.kw && e.kh % 2 == 1 && e.kh > 1 && s.stride_h == 1 && s.stride_w == 1 &&
                      s.pad_h == e.kh / 2 && s.pad_w == e.kw / 2;
    const int64_t k = e.cin * e.kh * e.kw, p = e.ho * e.wo;
    if (same) {
        conv2d_forward(b, x, weight, y);
    } else {
        const bool pointwise = e.kh == 1 && e.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
        const ConstMatMap<T> W(weight.data(), e.cout, k);
        // The whole team runs the loop, even for one image: inside a region of several
        // threads Eigen multiplies on the calling thread alone.
        CpuTensor<T> cols(pointwise ? Shape{1} : Shape{int64_t(omp_get_max_threads()), k, p});
#pragma omp parallel for schedule(dynamic)
        for (int64_t img = 0; img < e.n; ++img) {
            const T* xi = x.data() + img * e.cin * e.h * e.w;
            T* scratch = cols.data() + (pointwise ? 0 : int64_t(omp_get_thread_num()) * k * p);
            if (!pointwise) detail::im2col(xi, e, s, scratch);
            MatMap<T>(y.data() + img * e.cout * p, e.cout, p).noalias() =
                W * ConstMatMap<T>(pointwise ? xi : scratch, k, p);
        }
    }
    const int64_t planes = e.n * e.cout;
#pragma omp parallel for schedule(static) if (planes * p > 65536)
    for (int64_t q = 0; q < planes; ++q) {
        const T bq = bias.data()[q % e.cout];
        T* py = y.data() + q * p;
        if (relu)
            for (int64_t i = 0; i < p; ++i) py[i] = std::max(py[i] + bq, T(0));
        else
            for (int64_t i = 0; i < p; ++i) py[i] += bq;
    }
}

namespace detail {

// One plane pooled separably: each row reduced over the window's columns, then each output
// row reduced over the window's rows (the window is a rectangle clipped to the image, so
// the valid count is its row count times its column count).
template <bool is_max, class T>
void pool_plane(const T* px, int64_t h, int64_t w, const ops::PoolStep& p, int64_t ho, int64_t wo, T* rows, T* py) {
    const T start = is_max ? -std::numeric_limits<T>::infinity() : T(0);
    auto first = [&](int64_t o) { return std::max<int64_t>(o * p.stride - p.pad, 0); };
    auto last = [&](int64_t o, int64_t extent) { return std::min(o * p.stride - p.pad + p.size, extent); };
    for (int64_t iy = 0; iy < h; ++iy)
        for (int64_t ox = 0; ox < wo; ++ox) {
            T acc = start;
            for (int64_t ix = first(ox); ix < last(ox, w); ++ix)
                acc = is_max ? std::max(acc, px[iy * w + ix]) : acc + px[iy * w + ix];
            rows[iy * wo + ox] = acc;
        }
    for (int64_t oy = 0; oy < ho; ++oy) {
        T* out = py + oy * wo;
        std::fill(out, out + wo, start);
        for (int64_t iy = first(oy); iy < last(oy, h); ++iy)
            for (int64_t ox = 0; ox < wo; ++ox) out[ox] = is_max ? std::max(out[ox], rows[iy * wo + ox]) : out[ox] + rows[iy * wo + ox];
        if (!is_max) {
            const int64_t count_y = last(oy, h) - first(oy);
            for (int64_t ox = 0; ox < wo; ++ox) out[ox] /= T(count_y * (last(ox, w) - first(ox)));
        }
    }
}

}  // namespace detail

// Max or average over size x size windows; padding counts as -inf for the maximum and is
// left out of the average (ops::Pooling::average_valid).
template <Scalar T>
void pool2d_forward(CpuBackend, const CpuTensor<T>& x, ops::PoolStep p, CpuTensor<T>& y) {
    ops::check_pool(x.shape(), p, y.shape());
    const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3), ho = y.size(2), wo = y.size(3);
#pragma omp parallel if (planes * h * w > 16384)
    {
        std::vector<T> rows(std::size_t(h * wo));
#pragma omp for schedule(static)
        for (int64_t q = 0; q < planes; ++q) {
            if (p.mode == ops::Pooling::max)
                detail::pool_plane<true>(x.data() + q * h * w, h, w, p, ho, wo, rows.data(), y.data() + q * ho * wo);
            else
                detail::pool_plane<false>(x.data() + q * h * w, h, w, p, ho, wo, rows.data(), y.data() + q * ho * wo);
        }
    }
}

// y[n, y_channel + c, y_position + t] = x[n, x_channel + c, x_position + t].
template <Scalar T>
void copy_window(CpuBackend, const CpuTensor<T>& x, ops::CopyWindow w, CpuTensor<T>& y) {
    ops::check_copy_window(x.shape(), w, y.shape());
    const int64_t n = x.size(0), tx = ops::positions_of(x.shape()), ty = ops::positions_of(y.shape());
#pragma omp parallel for schedule(static) if (n * w.channels * w.positions > 65536)
    for (int64_t q = 0; q < n * w.channels; ++q) {
        const int64_t img = q / w.channels, c = q % w.channels;
        std::memcpy(y.data() + (img * y.size(1) + w.y_channel + c) * ty + w.y_position,
                    x.data() + (img * x.size(1) + w.x_channel + c) * tx + w.x_position, std::size_t(w.positions) * sizeof(T));
    }
}

// Layer normalisation of each position's channel vector: x [N, C, T] (T the product of the
// remaining extents), y = (x - mean) / sqrt(var + eps) gamma[c] + beta[c] with the biased
// variance, as torch.nn.LayerNorm over the channels of [N, T, C]. Sums in double.
template <Scalar T>
void layer_norm_channels_forward(CpuBackend, const CpuTensor<T>& x, double eps, const CpuTensor<T>& gamma,
                                 const CpuTensor<T>& beta, CpuTensor<T>& y) {
    ops::check_layer_norm_channels(x.shape(), gamma.shape(), beta.shape(), y.shape());
    const int64_t n = x.size(0), c = x.size(1), t = x.numel() / std::max<int64_t>(n * c, 1);
    constexpr int64_t chunk = 64;  // positions per task: rows of channels stay contiguous
    const int64_t chunks = (t + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (x.numel() > 65536)
    for (int64_t task = 0; task < n * chunks; ++task) {
        const int64_t img = task / chunks, t0 = task % chunks * chunk, len = std::min(chunk, t - t0);
        const T* px = x.data() + img * c * t + t0;
        T* py = y.data() + img * c * t + t0;
        double mean[chunk] = {}, var[chunk] = {};
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t i = 0; i < len; ++i) mean[i] += double(px[ch * t + i]);
        for (int64_t i = 0; i < len; ++i) mean[i] /= double(c);
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t i = 0; i < len; ++i) {
                const double d = double(px[ch * t + i]) - mean[i];
                var[i] += d * d;
            }
        for (int64_t i = 0; i < len; ++i) var[i] = 1 / std::sqrt(var[i] / double(c) + eps);
        for (int64_t ch = 0; ch < c; ++ch) {
            const double g = double(gamma.data()[ch]), bb = double(beta.data()[ch]);
            for (int64_t i = 0; i < len; ++i) py[ch * t + i] = T((double(px[ch * t + i]) - mean[i]) * var[i] * g + bb);
        }
    }
}

// y = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, the exact GELU (torch.nn.GELU()). In float,
// erf is Eigen's vectorised rational approximation (a few ulp, the one TensorFlow uses);
// in double, std::erf.
template <Scalar T>
void gelu_forward(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    check_same_shape(x, y, "gelu_forward");
    const int64_t n = x.numel();
    const T* px = x.data();
    T* py = y.data();
    constexpr int64_t chunk = 4096;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t first = 0; first < n; first += chunk) {
        const int64_t len = std::min(chunk, n - first);
        if constexpr (std::is_same_v<T, float>) {
            using namespace Eigen::internal;
            using P = packet::Packet<float>;
            const P half = pset1<P>(0.5f), one = pset1<P>(1.0f), root_half = pset1<P>(float(M_SQRT1_2));
            packet::transform(len, py + first,
                              [&](P v) { return pmul(pmul(v, half), padd(one, generic_fast_erf_float(pmul(v, root_half)))); },
                              px + first);
        } else {
            for (int64_t i = first; i < first + len; ++i) py[i] = px[i] * T(0.5) * (T(1) + std::erf(px[i] * T(M_SQRT1_2)));
        }
    }
}

}  // namespace mpnet::cpu
