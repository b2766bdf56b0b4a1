// The kernels of the latent autoencoder (vae/autoencoder_kl.hpp) on the GPU, forward only,
// each following its CPU kernel (backend/cpu/autoencoder_ops.hpp): group normalisation with
// optional SiLU, per-channel bias, nearest 2x upsampling, odd-pixel subsampling, and softmax
// attention (two cuBLAS products around a row softmax).
#pragma once
#include <cub/block/block_reduce.cuh>

#include <cmath>
#include <cstdint>

#include "mpnet/backend/cuda/gemm.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/autoencoder_checks.hpp"

namespace mpnet::cuda {

namespace detail {

// One block per (image, group): mean, then variance around it, summed in double with CUB's
// block reduction (fixed order: the same bits every run), then y = x a + b per channel.
template <class T>
__global__ void __launch_bounds__(block_size) group_norm_kernel(const T* x, int64_t count, int64_t groups, int64_t per,
                                                                int64_t hw, double eps, const T* gamma, const T* beta,
                                                                bool silu, T* y) {
    using Reduce = cub::BlockReduce<double, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    __shared__ double mean_s, rstd_s;
    const T* px = x + int64_t(blockIdx.x) * count;
    T* py = y + int64_t(blockIdx.x) * count;
    double s = 0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) s += double(px[i]);
    s = Reduce(tmp).Sum(s);
    if (threadIdx.x == 0) mean_s = s / double(count);
    __syncthreads();
    const double mean = mean_s;
    double s2 = 0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) s2 += (double(px[i]) - mean) * (double(px[i]) - mean);
    s2 = Reduce(tmp).Sum(s2);
    if (threadIdx.x == 0) rstd_s = 1 / sqrt(s2 / double(count) + eps);
    __syncthreads();
    const double rstd = rstd_s;
    const int64_t first = (int64_t(blockIdx.x) % groups) * per;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
        const int64_t ch = first + i / hw;
        const T a = T(rstd * double(gamma[ch])), b = T(double(beta[ch]) - mean * rstd * double(gamma[ch]));
        T v = fma(px[i], a, b);
        if (silu) v = v * (T(1) / (T(1) + exp(-v)));
        py[i] = v;
    }
}

template <class T>
struct MaxOf {
    __device__ T operator()(T a, T b) const { return a < b ? b : a; }
};

// One block per row: y = exp(x - max) / sum, the sum in double.
template <class T>
__global__ void __launch_bounds__(block_size) softmax_rows_kernel(T* s, int64_t cols) {
    using ReduceT = cub::BlockReduce<T, block_size>;
    using ReduceD = cub::BlockReduce<double, block_size>;
    __shared__ typename ReduceT::TempStorage tmp_t;
    __shared__ typename ReduceD::TempStorage tmp_d;
    __shared__ T max_s;
    __shared__ double sum_s;
    T* row = s + int64_t(blockIdx.x) * cols;
    T m = -INFINITY;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = MaxOf<T>{}(m, row[i]);
    m = ReduceT(tmp_t).Reduce(m, MaxOf<T>{});
    if (threadIdx.x == 0) max_s = m;
    __syncthreads();
    double sum = 0;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        row[i] = exp(row[i] - max_s);
        sum += double(row[i]);
    }
    sum = ReduceD(tmp_d).Sum(sum);
    if (threadIdx.x == 0) sum_s = sum;
    __syncthreads();
    const T inv = T(1 / sum_s);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) row[i] *= inv;
}

template <class T>
struct AddChannelBias {
    const T* bias;
    T* y;
    int64_t hw, channels;
    __device__ void operator()(int64_t i) const { y[i] += bias[i / hw % channels]; }
};
// y[p, Y, X] = x[p, Y / 2, X / 2] over output indices.
template <class T>
struct UpsampleNearest2x {
    const T* x;
    T* y;
    int64_t h, w;
    __device__ void operator()(int64_t i) const {
        const int64_t X = i % (2 * w), Y = i / (2 * w) % (2 * h), p = i / (4 * h * w);
        y[i] = x[(p * h + Y / 2) * w + X / 2];
    }
};
// y[p, r, c] = x[p, 2r + 1, 2c + 1] over output indices (y is h x w).
template <class T>
struct TakeOddPixels {
    const T* x;
    T* y;
    int64_t h, w;
    __device__ void operator()(int64_t i) const {
        const int64_t c = i % w, r = i / w % h, p = i / (h * w);
        y[i] = x[(p * 2 * h + 2 * r + 1) * 2 * w + 2 * c + 1];
    }
};

}  // namespace detail

template <Scalar T>
void group_norm_forward(CudaBackend, const CudaTensor<T>& x, int64_t groups, double eps, const CudaTensor<T>& gamma,
                        const CudaTensor<T>& beta, bool silu, CudaTensor<T>& y) {
    ops::check_group_norm(x.shape(), groups, gamma.shape(), beta.shape(), y.shape());
    const int64_t hw = x.size(2) * x.size(3), per = x.size(1) / groups, blocks = x.size(0) * groups;
    if (blocks == 0 || hw == 0) return;
    detail::group_norm_kernel<<<unsigned(blocks), detail::block_size, 0, current_stream()>>>(
        x.data(), per * hw, groups, per, hw, eps, gamma.data(), beta.data(), silu, y.data());
    launch_check("group_norm_forward");
}

template <Scalar T>
void add_channel_bias(CudaBackend, const CudaTensor<T>& bias, CudaTensor<T>& y) {
    ops::check_channel_bias(bias.shape(), y.shape());
    detail::for_each(y.numel(), detail::AddChannelBias<T>{bias.data(), y.data(), y.size(2) * y.size(3), y.size(1)},
                     "add_channel_bias");
}

template <Scalar T>
void upsample_nearest2x(CudaBackend, const CudaTensor<T>& x, CudaTensor<T>& y) {
    ops::check_doubled(x.shape(), y.shape(), "upsample_nearest2x");
    detail::for_each(y.numel(), detail::UpsampleNearest2x<T>{x.data(), y.data(), x.size(2), x.size(3)},
                     "upsample_nearest2x");
}

template <Scalar T>
void take_odd_pixels(CudaBackend, const CudaTensor<T>& x, CudaTensor<T>& y) {
    ops::check_doubled(y.shape(), x.shape(), "take_odd_pixels");
    detail::for_each(y.numel(), detail::TakeOddPixels<T>{x.data(), y.data(), y.size(2), y.size(3)}, "take_odd_pixels");
}

// y = v softmax_keys(k^T q / sqrt(C)) per image, q, k, v, y [N, C, H, W]; the scores
// [N, HW, HW] live in one temporary.
template <Scalar T>
void softmax_attention_forward(CudaBackend, const CudaTensor<T>& q, const CudaTensor<T>& k, const CudaTensor<T>& v,
                               CudaTensor<T>& y) {
    ops::check_softmax_attention(q.shape(), k.shape(), v.shape(), y.shape());
    const int64_t n = q.size(0), c = q.size(1), hw = q.size(2) * q.size(3);
    if (n == 0 || hw == 0) return;
    CudaTensor<T> scores(Shape{n, hw, hw});
    using detail::Operand;
    // scores[b] = q[b]^T k[b] / sqrt(C): [hw, c] x [c, hw].
    detail::gemm<T>(hw, hw, c, 1 / std::sqrt(double(c)), Operand<T>{q.data(), hw, c * hw, true},
                    Operand<T>{k.data(), hw, c * hw, false}, 0, scores.data(), hw, hw * hw, n, "softmax_attention_forward");
    detail::softmax_rows_kernel<<<unsigned(n * hw), detail::block_size, 0, current_stream()>>>(scores.data(), hw);
    launch_check("softmax_attention_forward: softmax");
    // y[b] = v[b] scores[b]^T: [c, hw] x [hw, hw].
    detail::gemm<T>(c, hw, hw, 1, Operand<T>{v.data(), hw, c * hw, false}, Operand<T>{scores.data(), hw, hw * hw, true},
                    0, y.data(), hw, c * hw, n, "softmax_attention_forward");
}

}  // namespace mpnet::cuda
