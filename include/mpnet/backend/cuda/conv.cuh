// Convolution (odd k x k, stride 1, zero "same" padding, no bias) and the linear layer on
// the GPU, forward and backward, as cuBLAS matrix products (tensor cores under the
// fp16/bf16/tf32 math modes).
//
// A k x k convolution of image i is W[Cout, P] cols_i[P, HW] with P = Cin k k and cols the
// im2col unfolding; a 1x1 convolution multiplies the image itself. Batches are unfolded a
// chunk of images at a time so that the scratch stays bounded:
//   forward  y_i = W cols_i                       (strided batched, W shared)
//   dx       dcols_i = W^T dy_i, then col2im       (strided batched)
//   dW       dY[Cout, chunk HW] cols[P, chunk HW]^T (one product per chunk, accumulated)
// where the dW operands are unfolded channel-major, so one long product covers the chunk.
#pragma once
#include <algorithm>

#include "mpnet/backend/cuda/gemm.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/conv_geometry.hpp"

namespace mpnet::cuda {

namespace detail {

using ops::ConvGeometry;

// Unfolds `images` images of `channels` channels: element (i, p, pix), p = (c k + ky) k + kx,
// is img[i, c, y + ky - k/2, x + kx - k/2] (zero outside) and goes to
// cols[i * stride_image + p * stride_row + pix]. With k = 1 this is a layout permutation.
template <class T>
struct Im2col {
    const T* img;
    int64_t channels, h, w, k;
    int64_t stride_image, stride_row;
    T* cols;
    __device__ void operator()(int64_t e) const {
        const int64_t hw = h * w, rows = channels * k * k;
        const int64_t pix = e % hw, p = (e / hw) % rows, i = e / (hw * rows);
        const int64_t kx = p % k, ky = (p / k) % k, c = p / (k * k);
        const int64_t sy = pix / w + ky - k / 2, sx = pix % w + kx - k / 2;
        const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
        cols[i * stride_image + p * stride_row + pix] = inside ? img[((i * channels + c) * h + sy) * w + sx] : T(0);
    }
};

// The adjoint of an image-major im2col, as a gather: each image element sums the k x k
// unfolded entries that read it (in the CPU's ky, kx order).
template <class T>
struct Col2im {
    const T* cols;
    int64_t channels, h, w, k;
    T* img;
    __device__ void operator()(int64_t e) const {
        const int64_t hw = h * w, pix = e % hw, c = (e / hw) % channels, i = e / (hw * channels);
        const int64_t y = pix / w, x = pix % w, p = k / 2;
        const T* base = cols + (i * channels + c) * k * k * hw;
        T acc = 0;
        for (int64_t ky = 0; ky < k; ++ky) {
            const int64_t oy = y - ky + p;
            if (oy < 0 || oy >= h) continue;
            for (int64_t kx = 0; kx < k; ++kx) {
                const int64_t ox = x - kx + p;
                if (ox >= 0 && ox < w) acc += base[(ky * k + kx) * hw + oy * w + ox];
            }
        }
        img[e] = acc;
    }
};

// Images per chunk so that `per_image` scratch elements each stay within the backend's limit.
inline int64_t images_per_chunk(int64_t n, int64_t per_image, std::size_t elem) {
    const auto fit =
        static_cast<int64_t>(CudaBackend::scratch_limit() / std::max<std::size_t>(1, size_t(per_image) * elem));
    return std::clamp<int64_t>(fit, 1, std::max<int64_t>(n, 1));
}

template <class T>
void unfold(const T* img, int64_t images, int64_t channels, const ConvGeometry& g, int64_t k, bool channel_major,
            T* cols, const char* what) {
    const int64_t rows = channels * k * k;
    const Im2col<T> op{img, channels, g.h, g.w, k, channel_major ? g.hw() : rows * g.hw(),
                       channel_major ? images * g.hw() : g.hw(), cols};
    for_each(images * rows * g.hw(), op, what, ": im2col of ", images, " images [", channels, ",", g.h, ",", g.w,
             "], k=", k);
}

}  // namespace detail

template <Scalar T>
void conv2d_forward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& weight, CudaTensor<T>& y) {
    const auto g = ops::conv_geometry(x.shape(), weight.shape(), y.shape(), "conv2d_forward");
    const detail::Operand<T> w{weight.data(), g.patch()};
    if (g.k == 1) {
        detail::gemm<T>(g.cout, g.hw(), g.cin, 1, w, {x.data(), g.hw(), g.cin * g.hw()}, 0, y.data(), g.hw(),
                        g.cout * g.hw(), g.n, "conv2d_forward (1x1)");
        return;
    }
    const int64_t chunk = detail::images_per_chunk(g.n, g.patch() * g.hw(), sizeof(T));
    CudaTensor<T> cols(Shape{chunk, g.patch(), g.hw()});
    for (int64_t i0 = 0; i0 < g.n; i0 += chunk) {
        const int64_t cn = std::min(chunk, g.n - i0);
        detail::unfold(x.data() + i0 * g.cin * g.hw(), cn, g.cin, g, g.k, false, cols.data(), "conv2d_forward");
        detail::gemm<T>(g.cout, g.hw(), g.patch(), 1, w, {cols.data(), g.hw(), g.patch() * g.hw()}, 0,
                        y.data() + i0 * g.cout * g.hw(), g.hw(), g.cout * g.hw(), cn, "conv2d_forward");
    }
}

// dx (may be empty) and dweight (overwritten) from dy.
template <Scalar T>
void conv2d_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& weight, const CudaTensor<T>& dy,
                     CudaTensor<T>& dx, CudaTensor<T>& dweight) {
    const auto g = ops::conv_backward_geometry(x.shape(), weight.shape(), dy.shape(), dx.shape(), dweight.shape());
    const int64_t hw = g.hw(), P = g.patch();
    // dcols (image-major) for dx, and channel-major cols and dy for dW, per chunk.
    const int64_t chunk = detail::images_per_chunk(g.n, (2 * P + g.cout) * hw, sizeof(T));
    CudaTensor<T> cols(Shape{chunk, P, hw}), dy_t(Shape{g.cout, chunk, hw});
    CudaTensor<T> dcols = g.k > 1 && !dx.empty() ? CudaTensor<T>(Shape{chunk, P, hw}) : CudaTensor<T>();
    if (g.n == 0) dweight.set_zero();
    for (int64_t i0 = 0; i0 < g.n; i0 += chunk) {
        const int64_t cn = std::min(chunk, g.n - i0);
        const T* x0 = x.data() + i0 * g.cin * hw;
        const T* dy0 = dy.data() + i0 * g.cout * hw;
        // A single image is already channel-major; otherwise unfold.
        const T* a = dy0;
        if (cn > 1) {
            detail::unfold(dy0, cn, g.cout, g, 1, true, dy_t.data(), "conv2d_backward (dy)");
            a = dy_t.data();
        }
        const T* b = x0;
        if (cn > 1 || g.k > 1) {
            detail::unfold(x0, cn, g.cin, g, g.k, true, cols.data(), "conv2d_backward (x)");
            b = cols.data();
        }
        detail::gemm<T>(g.cout, P, cn * hw, 1, {a, cn * hw}, {b, cn * hw, 0, true}, i0 == 0 ? 0 : 1, dweight.data(),
                        P, 0, 1, "conv2d_backward (weight)");
        if (dx.empty()) continue;
        T* dx0 = dx.data() + i0 * g.cin * hw;
        const detail::Operand<T> wt{weight.data(), P, 0, true};
        if (g.k == 1) {
            detail::gemm<T>(g.cin, hw, g.cout, 1, wt, {dy0, hw, g.cout * hw}, 0, dx0, hw, g.cin * hw, cn,
                            "conv2d_backward (input, 1x1)");
            continue;
        }
        detail::gemm<T>(P, hw, g.cout, 1, wt, {dy0, hw, g.cout * hw}, 0, dcols.data(), hw, P * hw, cn,
                        "conv2d_backward (input)");
        detail::for_each(cn * g.cin * hw, detail::Col2im<T>{dcols.data(), g.cin, g.h, g.w, g.k, dx0},
                         "conv2d_backward: col2im of ", cn, " images ", x.shape());
    }
}

// y[N, out] = x[N, in] * weight[out, in]^T
template <Scalar T>
void linear_forward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& weight, CudaTensor<T>& y) {
    const auto [n, in, out] = ops::linear_extents(x.shape(), weight.shape(), y.shape());
    detail::gemm<T>(n, out, in, 1, {x.data(), in}, {weight.data(), in, 0, true}, 0, y.data(), out, 0, 1,
                    "linear_forward");
}

template <Scalar T>
void linear_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& weight, const CudaTensor<T>& dy,
                     CudaTensor<T>& dx, CudaTensor<T>& dweight) {
    const auto [n, in, out] =
        ops::linear_backward_extents(x.shape(), weight.shape(), dy.shape(), dx.shape(), dweight.shape());
    detail::gemm<T>(out, in, n, 1, {dy.data(), out, 0, true}, {x.data(), in}, 0, dweight.data(), in, 0, 1,
                    "linear_backward (weight)");
    if (!dx.empty())
        detail::gemm<T>(n, in, out, 1, {dy.data(), out}, {weight.data(), in}, 0, dx.data(), in, 0, 1,
                        "linear_backward (input)");
}

}  // namespace mpnet::cuda
