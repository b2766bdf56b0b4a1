// Convolution (odd k x k, stride 1, zero "same" padding, no bias) and the linear layer on
// the CPU, forward and backward.
//
// A k x k convolution of one image is W[Cout, Cin k k] * cols[Cin k k, H W], where cols
// is the im2col unfolding. Float runs on the packed SIMD products of conv_gemm.hpp
// wherever the compiler targets AVX2/FMA or AVX-512; double (and float elsewhere) runs
// these products through Eigen, images split across the threads, each thread with its own
// unfolding buffer and, in backward, its own partial weight gradient. In float32 math the
// 3x3 products of 32 or more channels (forward, input gradient and, on images of even size,
// weight gradient) run as Winograd's F(2x2, 3x3) (conv_winograd.hpp), 1.3-1.9x faster on the
// networks' shapes; the forward and input gradient on images four vectors wide as F(4x4,
// 3x3), 1.2-1.5x faster again at 32x32.
#pragma once
#include <omp.h>

#include <type_traits>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/conv_gemm.hpp"
#include "mpnet/backend/cpu/conv_narrow.hpp"
#include "mpnet/backend/cpu/conv_winograd.hpp"
#include "mpnet/backend/cpu/convert.hpp"
#include "mpnet/backend/cpu/eigen.hpp"
#include "mpnet/backend/half_storage.hpp"
#include "mpnet/ops/conv_geometry.hpp"

namespace mpnet::cpu {

namespace detail {

using ops::ConvGeometry;

// cols[(c k + ky) k + kx, y W + x] = img[c, y + ky - k/2, x + kx - k/2], zero outside.
template <class T>
void im2col(const T* img, const ConvGeometry& g, T* cols) {
    const int64_t p = g.k / 2;
    for (int64_t c = 0; c < g.cin; ++c)
        for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
                T* row = cols + ((c * g.k + ky) * g.k + kx) * g.hw();
                const T* src = img + c * g.hw();
                for (int64_t y = 0; y < g.h; ++y) {
                    const int64_t sy = y + ky - p;
                    T* dst = row + y * g.w;
                    if (sy < 0 || sy >= g.h) {
                        std::fill(dst, dst + g.w, T(0));
                        continue;
                    }
                    const int64_t x0 = std::max<int64_t>(0, p - kx), x1 = std::min<int64_t>(g.w, g.w + p - kx);
                    std::fill(dst, dst + x0, T(0));
                    std::copy(src + sy * g.w + x0 + kx - p, src + sy * g.w + x1 + kx - p, dst + x0);
                    std::fill(dst + x1, dst + g.w, T(0));
                }
            }
}

// The adjoint of im2col: img[c, y + ky - p, x + kx - p] += cols[...].
template <class T>
void col2im(const T* cols, const ConvGeometry& g, T* img) {
    const int64_t p = g.k / 2;
    std::fill(img, img + g.cin * g.hw(), T(0));
    for (int64_t c = 0; c < g.cin; ++c)
        for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
                const T* row = cols + ((c * g.k + ky) * g.k + kx) * g.hw();
                T* dst = img + c * g.hw();
                for (int64_t y = 0; y < g.h; ++y) {
                    const int64_t sy = y + ky - p;
                    if (sy < 0 || sy >= g.h) continue;
                    const int64_t x0 = std::max<int64_t>(0, p - kx), x1 = std::min<int64_t>(g.w, g.w + p - kx);
                    for (int64_t x = x0; x < x1; ++x) dst[sy * g.w + x + kx - p] += row[y * g.w + x];
                }
            }
}

template <class T>
void eigen_conv_forward(const ConvGeometry& g, const CpuTensor<T>& x, const CpuTensor<T>& weight, CpuTensor<T>& y) {
    const ConstMatMap<T> W(weight.data(), g.cout, g.patch());
#pragma omp parallel for schedule(static) if (g.n > 1)
    for (int64_t i = 0; i < g.n; ++i) {
        const T* img = x.data() + i * g.cin * g.hw();
        MatMap<T> Y(y.data() + i * g.cout * g.hw(), g.cout, g.hw());
        if (g.k == 1) {
            Y.noalias() = W * ConstMatMap<T>(img, g.cin, g.hw());
        } else {
            T* cols = thread_scratch<T>(size_t(g.patch() * g.hw()));
            im2col(img, g, cols);
            Y.noalias() = W * ConstMatMap<T>(cols, g.patch(), g.hw());
        }
    }
}

template <class T>
void eigen_conv_backward(const ConvGeometry& g, const CpuTensor<T>& x, const CpuTensor<T>& weight,
                         const CpuTensor<T>& dy, CpuTensor<T>& dx, CpuTensor<T>& dweight) {
    const ConstMatMap<T> W(weight.data(), g.cout, g.patch());
    const int threads = g.n > 1 ? omp_get_max_threads() : 1;
    std::vector<RowMatrix<T>> partial(size_t(threads), RowMatrix<T>::Zero(g.cout, g.patch()));
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < g.n; ++i) {
        const T* img = x.data() + i * g.cin * g.hw();
        const ConstMatMap<T> dY(dy.data() + i * g.cout * g.hw(), g.cout, g.hw());
        auto& dW = partial[size_t(omp_get_thread_num())];
        if (g.k == 1) {
            dW.noalias() += dY * ConstMatMap<T>(img, g.cin, g.hw()).transpose();
            if (!dx.empty()) MatMap<T>(dx.data() + i * g.cin * g.hw(), g.cin, g.hw()).noalias() = W.transpose() * dY;
            continue;
        }
        T* cols = thread_scratch<T>(size_t(g.patch() * g.hw()));
        im2col(img, g, cols);
        dW.noalias() += dY * ConstMatMap<T>(cols, g.patch(), g.hw()).transpose();
        if (!dx.empty()) {
            MatMap<T>(cols, g.patch(), g.hw()).noalias() = W.transpose() * dY;
            col2im(cols, g, dx.data() + i * g.cin * g.hw());
        }
    }
    MatMap<T> out(dweight.data(), g.cout, g.patch());
    out = partial[0];
    for (size_t t = 1; t < partial.size(); ++t) out += partial[t];
}

#if MPNET_CPU_SIMD
// y = the "same" convolution of the images g with a[m, c, k, k]: the forward, or the input
// gradient (of dy, with the flipped weight). Winograd's F(2x2, 3x3) or F(4x4, 3x3) where it pays.
template <class S, class Y>
void same_product(const conv::Images<S>& g, const float* a, int64_t m, Y* y) {
    if (conv::winograd::pays(g, m)) return conv::winograd::forward(g, a, m, y);
    conv::output_product(g, a, m, y);
}

// dweight = the weight gradient of the "same" convolution of the images g given dy[n, m, ...].
// Winograd's F(2x2, 3x3) where it pays.
template <class S, class D>
void weight_gradient(const conv::Images<S>& g, const D* dy, int64_t m, float* dweight) {
    if (conv::winograd::weight_pays(g, m)) return conv::winograd::weight(g, dy, m, dweight);
    conv::weight_product(g, dy, m, dweight);
}

// The input gradient is the convolution of dy with the weight transposed over channels
// and flipped in space: flipped[ci, co, ky, kx] = weight[co, ci, k-1-ky, k-1-kx].
inline CpuTensor<float> flipped_weight(const ConvGeometry& g, const CpuTensor<float>& weight) {
    CpuTensor<float> flipped(Shape{g.cin, g.cout, g.k, g.k});
    const int64_t kk = g.k * g.k;
    for (int64_t co = 0; co < g.cout; ++co)
        for (int64_t ci = 0; ci < g.cin; ++ci)
            for (int64_t t = 0; t < kk; ++t)
                flipped.data()[(ci * g.cout + co) * kk + t] = weight.data()[(co * g.cin + ci) * kk + kk - 1 - t];
    return flipped;
}

#if defined(__AVX512F__)
// bf16 math: y[n, m] = sum over (c, tap) of a[m, c, tap] img[n, c] (shifted by tap), with
// both operands rounded to bf16 and paired over c, summed in float32.
inline void bf16_output_product(const ConvGeometry& g, const float* img, int64_t channels, const float* a, int64_t m,
                                float* y) {
    const int64_t half = (channels + 1) / 2, taps = g.k * g.k;
    CpuTensor<float> paired(Shape{g.n, half, g.h, g.w});  // pair words
    bf16::channel_pairs(img, g.n, channels, g.hw(), paired.data());
    std::vector<uint16_t> a_pairs(size_t(m * 2 * half * taps));
    bf16::weight_pairs(a, m, channels, taps, a_pairs.data());
    conv::output_product<gemm::Bf16Pairs>({paired.data(), g.n, half, g.h, g.w, g.k}, a_pairs.data(), m, y);
}
#endif

inline bool bf16_math() { return CpuBackend::math() == Math::bf16; }

// Whether an output product of m outputs over `channels` inputs gains from bf16 operands:
// pairing the input costs a pass over it, which a thin product (a 1x1 convolution to few
// outputs, or from few inputs) does not earn back. Measured on the fmnist-s shapes: 96->32
// 1x1 took 4.2 ms in bf16 against 3.0 ms in float32, 160->64 1x1 the same, 96->288 1x1 0.77
// against 1.09; 3x3 convolutions gain from 8 outputs up.
inline bool bf16_pays(const ConvGeometry& g, int64_t channels, int64_t m) {
    return channels * g.k * g.k >= 64 && m * g.k * g.k >= 96;
}

inline void simd_conv_forward(const ConvGeometry& g, const CpuTensor<float>& x, const CpuTensor<float>& weight,
                              CpuTensor<float>& y) {
#if defined(__AVX512F__)
    if (bf16_math() && bf16_pays(g, g.cin, g.cout))
        return bf16_output_product(g, x.data(), g.cin, weight.data(), g.cout, y.data());
#endif
    same_product(conv::Images<float>{x.data(), g.n, g.cin, g.h, g.w, g.k}, weight.data(), g.cout, y.data());
}

// With bf16 math the products run on bf16 operands, except thin ones (bf16_pays), the
// backward of the output layer (its plane sums are bound by memory, not arithmetic) and the
// weight gradient of images of odd width (its columns are paired along rows).
inline void simd_conv_backward(const ConvGeometry& g, const CpuTensor<float>& x, const CpuTensor<float>& weight,
                               const CpuTensor<float>& dy, CpuTensor<float>& dx, CpuTensor<float>& dweight) {
    if (g.cout >= 1 && g.cout <= conv::narrow_max_cout)
        return conv::narrow_backward(g, x.data(), weight.data(), dy.data(), dx.empty() ? nullptr : dx.data(),
                                     dweight.data());
    const conv::Images<float> images{x.data(), g.n, g.cin, g.h, g.w, g.k};
#if defined(__AVX512F__)
    const bool bf16 = bf16_math();
    if (bf16 && g.w % 2 == 0) conv::weight_product<gemm::Bf16Pairs>(images, dy.data(), g.cout, dweight.data());
    else
#endif
        weight_gradient(images, dy.data(), g.cout, dweight.data());
    if (dx.empty()) return;
    const CpuTensor<float> flipped = flipped_weight(g, weight);
#if defined(__AVX512F__)
    if (bf16 && bf16_pays(g, g.cout, g.cin))
        return bf16_output_product(g, dy.data(), g.cout, flipped.data(), g.cin, dx.data());
#endif
    same_product(conv::Images<float>{dy.data(), g.n, g.cout, g.h, g.w, g.k}, flipped.data(), g.cin, dx.data());
}
#endif

}  // namespace detail

template <Scalar T>
void conv2d_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& weight, CpuTensor<T>& y) {
    const auto g = ops::conv_geometry(x.shape(), weight.shape(), y.shape(), "conv2d_forward");
#if MPNET_CPU_SIMD
    if constexpr (std::is_same_v<T, float>) detail::simd_conv_forward(g, x, weight, y);
    else
#endif
        detail::eigen_conv_forward(g, x, weight, y);
}

// dx (may be empty) and dweight (overwritten) from dy.
template <Scalar T>
void conv2d_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& weight, const CpuTensor<T>& dy,
                     CpuTensor<T>& dx, CpuTensor<T>& dweight) {
    const auto g = ops::conv_backward_geometry(x.shape(), weight.shape(), dy.shape(), dx.shape(), dweight.shape());
#if MPNET_CPU_SIMD
    if constexpr (std::is_same_v<T, float>) detail::simd_conv_backward(g, x, weight, dy, dx, dweight);
    else
#endif
        detail::eigen_conv_backward(g, x, weight, dy, dx, dweight);
}

// ---- on 16-bit activations ----------------------------------------------------------------
// The products read the 16-bit images and dy as they stage them and round each output once
// from its float sum, so they give the float kernel's results on widened tensors, rounded
// once (backend/half_storage.hpp's semantics), without making those float copies. The
// weight (small) is widened first. With bf16 math, and for the backward of a layer with at
// most conv::narrow_max_cout outputs (conv_narrow.hpp's float kernels), half_storage.hpp's
// generic kernels widen the tensors whole and run the float kernel on them.

template <HalfStorage A>
void conv2d_forward(CpuBackend b, const CpuTensor<A>& x, const CpuTensor<A>& weight, CpuTensor<A>& y) {
#if MPNET_CPU_SIMD
    if (!detail::bf16_math()) {
        const auto g = ops::conv_geometry(x.shape(), weight.shape(), y.shape(), "conv2d_forward");
        CpuTensor<float> w(weight.shape());
        convert(b, weight, w);
        return detail::same_product(conv::Images<A>{x.data(), g.n, g.cin, g.h, g.w, g.k}, w.data(), g.cout, y.data());
    }
#endif
    mpnet::conv2d_forward<CpuBackend, A>(b, x, weight, y);
}

template <HalfStorage A>
void conv2d_backward(CpuBackend b, const CpuTensor<A>& x, const CpuTensor<A>& weight, const CpuTensor<A>& dy,
                     CpuTensor<A>& dx, CpuTensor<A>& dweight) {
#if MPNET_CPU_SIMD
    const auto g = ops::conv_backward_geometry(x.shape(), weight.shape(), dy.shape(), dx.shape(), dweight.shape());
    if (!detail::bf16_math() && g.cout > conv::narrow_max_cout) {
        CpuTensor<float> w(weight.shape()), dw(dweight.shape());
        convert(b, weight, w);
        detail::weight_gradient(conv::Images<A>{x.data(), g.n, g.cin, g.h, g.w, g.k}, dy.data(), g.cout, dw.data());
        convert(b, dw, dweight);
        if (dx.empty()) return;
        const CpuTensor<float> flipped = detail::flipped_weight(g, w);
        detail::same_product(conv::Images<A>{dy.data(), g.n, g.cout, g.h, g.w, g.k}, flipped.data(), g.cin, dx.data());
        return;
    }
#endif
    mpnet::conv2d_backward<CpuBackend, A>(b, x, weight, dy, dx, dweight);
}

// y[N, out] = x[N, in] * weight[out, in]^T
template <Scalar T>
void linear_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& weight, CpuTensor<T>& y) {
    const auto [n, in, out] = ops::linear_extents(x.shape(), weight.shape(), y.shape());
    // Row by row: Eigen picks its product kernel by the row count, so one product over the
    // whole batch would make a sample's result depend (in the last bit) on the batch size.
    const ConstMatMap<T> X(x.data(), n, in), W(weight.data(), out, in);
    MatMap<T> Y(y.data(), n, out);
    for (int64_t i = 0; i < n; ++i) Y.row(i).noalias() = X.row(i) * W.transpose();
}

template <Scalar T>
void linear_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& weight, const CpuTensor<T>& dy,
                     CpuTensor<T>& dx, CpuTensor<T>& dweight) {
    const auto [n, in, out] =
        ops::linear_backward_extents(x.shape(), weight.shape(), dy.shape(), dx.shape(), dweight.shape());
    const ConstMatMap<T> dY(dy.data(), n, out);
    MatMap<T>(dweight.data(), out, in).noalias() = dY.transpose() * ConstMatMap<T>(x.data(), n, in);
    if (!dx.empty()) MatMap<T>(dx.data(), n, in).noalias() = dY * ConstMatMap<T>(weight.data(), out, in);
}

}  // namespace mpnet::cpu
