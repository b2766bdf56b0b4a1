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
//
// 16-bit activations (float16, bfloat16) take the same path natively: the unfoldings move
// 16-bit words, the products read them on tensor cores and accumulate in float32, and
// col2im sums in float32, each result rounded once on store.
#pragma once
#include <algorithm>
#include <limits>

#include "mpnet/backend/cuda/convert.cuh"
#include "mpnet/backend/cuda/gemm.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/conv_geometry.hpp"

namespace mpnet::cuda {

namespace detail {

using ops::ConvGeometry;

// Unfolds `images` images of `channels` channels: element (i, p, pix), p = (c k + ky) k + kx,
// is img[i, c, y + ky - k/2, x + kx - k/2] (zero outside) and goes to
// cols[i * stride_image + p * stride_row + pix]. With k = 1 this is a layout permutation.
// Blocks run over (pixels, p, image), so the index arithmetic per element is one 32-bit
// division of the pixel index; consecutive threads read and write consecutive pixels.
template <class T>
__global__ void __launch_bounds__(block_size) im2col_kernel(const T* img, int channels, int h, int w, int k,
                                                            int64_t stride_image, int64_t stride_row, int images,
                                                            T* cols) {
    const int hw = h * w, rows = channels * k * k, half = k / 2;
    for (int i = blockIdx.z; i < images; i += gridDim.z)
        for (int p = blockIdx.y; p < rows; p += gridDim.y) {
            const int kx = p % k, ky = (p / k) % k, c = p / (k * k);
            const T* src = img + (int64_t(i) * channels + c) * hw;
            T* dst = cols + i * stride_image + p * stride_row;
            for (int pix = blockIdx.x * blockDim.x + threadIdx.x; pix < hw; pix += gridDim.x * blockDim.x) {
                const int sy = pix / w + ky - half, sx = pix % w + kx - half;
                dst[pix] = sy >= 0 && sy < h && sx >= 0 && sx < w ? src[sy * w + sx] : T{};  // T{}: zero bits
            }
        }
}

// The adjoint of an image-major im2col, as a gather: each image element sums the k x k
// unfolded entries that read it (in the CPU's ky, kx order). Blocks over (pixels, channel, image).
template <class T>
__global__ void __launch_bounds__(block_size) col2im_kernel(const T* cols, int channels, int h, int w, int k,
                                                            int images, T* img) {
    const int hw = h * w, half = k / 2;
    for (int i = blockIdx.z; i < images; i += gridDim.z)
        for (int c = blockIdx.y; c < channels; c += gridDim.y) {
            const T* base = cols + (int64_t(i) * channels + c) * k * k * hw;
            T* out = img + (int64_t(i) * channels + c) * hw;
            for (int pix = blockIdx.x * blockDim.x + threadIdx.x; pix < hw; pix += gridDim.x * blockDim.x) {
                const int y = pix / w, x = pix % w;
                Compute<T> acc = 0;  // float for 16-bit storage
                for (int ky = 0; ky < k; ++ky) {
                    const int oy = y - ky + half;
                    if (oy < 0 || oy >= h) continue;
                    for (int kx = 0; kx < k; ++kx) {
                        const int ox = x - kx + half;
                        if (ox >= 0 && ox < w) acc += ld(base[(ky * k + kx) * hw + oy * w + ox]);
                    }
                }
                st(out[pix], acc);
            }
        }
}

// A grid over (pixels of one plane, planes, images), each extent within CUDA's limits (the
// kernels loop over what does not fit).
inline dim3 plane_grid(int64_t hw, int64_t planes, int64_t images) {
    constexpr int64_t max_yz = 65535;
    return dim3(static_cast<unsigned>(std::clamp<int64_t>((hw + block_size - 1) / block_size, 1, 1 << 16)),
                static_cast<unsigned>(std::clamp<int64_t>(planes, 1, max_yz)),
                static_cast<unsigned>(std::clamp<int64_t>(images, 1, max_yz)));
}

// The kernels index one image's planes in 32 bits.
inline void check_plane_extents(const ConvGeometry& g, int64_t channels, int64_t k, const char* what) {
    constexpr int64_t int_max = std::numeric_limits<int>::max();
    check(g.hw() <= int_max && channels * k * k <= int_max && g.n <= int_max, what, ": ", channels, " channels of ",
          g.h, "x", g.w, " pixels (k=", k, ") exceed the unfolding's 32-bit plane indices");
}

// Images per chunk so that `per_image` scratch elements each stay within the backend's limit.
inline int64_t images_per_chunk(int64_t n, int64_t per_image, std::size_t elem) {
    const auto fit =
        static_cast<int64_t>(CudaBackend::scratch_limit() / std::max<std::size_t>(1, size_t(per_image) * elem));
    return std::clamp<int64_t>(fit, 1, std::max<int64_t>(n, 1));
}

template <class T>
void unfold(const T* img, int64_t images, int64_t channels, const ConvGeometry& g, int64_t k, bool channel_major,
            T* cols, const char* what) {
    if (images == 0) return;
    check_plane_extents(g, channels, k, what);
    const int64_t rows = channels * k * k;
    im2col_kernel<<<plane_grid(g.hw(), rows, images), block_size, 0, current_stream()>>>(
        img, int(channels), int(g.h), int(g.w), int(k), channel_major ? g.hw() : rows * g.hw(),
        channel_major ? images * g.hw() : g.hw(), int(images), cols);
    launch_check(what, ": im2col of ", images, " images [", channels, ",", g.h, ",", g.w, "], k=", k);
}

template <class T>
void fold(const T* cols, int64_t images, int64_t channels, const ConvGeometry& g, T* img, const char* what) {
    if (images == 0) return;
    check_plane_extents(g, channels, g.k, what);
    col2im_kernel<<<plane_grid(g.hw(), channels, images), block_size, 0, current_stream()>>>(
        cols, int(channels), int(g.h), int(g.w), int(g.k), int(images), img);
    launch_check(what, ": col2im of ", images, " images [", channels, ",", g.h, ",", g.w, "], k=", g.k);
}

}  // namespace detail

template <Element T>
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

// dx (may be empty) and dweight (overwritten) from dy. With 16-bit storage, dweight is
// accumulated over the chunks in its own format, as the reference's half-precision weight
// gradient is.
template <Element T>
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
        detail::fold(dcols.data(), cn, g.cin, g, dx0, "conv2d_backward");
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
