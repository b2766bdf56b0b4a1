// The multi-head cosine attention core of an EDM2 Block on the GPU, the CPU's algorithm
// with the per-head products as strided-batched cuBLAS calls over all (image, head) jobs.
//
// Input qkv [N, 3C, HW] with channel (head c_h + ch) 3 + s (s = q, k, v); each of q, k, v
// is pixel-normalised over its c_h channels; per job
//   S = q^T k / sqrt(c_h),  P = softmax_rows(S),  y = v P^T   (y: [c_h, HW]).
// Backward:
//   dv = dy P,  dP = dy^T v,  dS = P o (dP - rowsum(P o dP)) / sqrt(c_h),  dq = k dS^T,
//   dk = q dS, then through the pixel normalisation of each.
#pragma once
#include <cmath>
#include <cuda/functional>
#include <type_traits>

#include "mpnet/backend/cuda/gemm.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/attention_geometry.hpp"
#include "mpnet/ops/constants.hpp"

namespace mpnet::cuda {

namespace detail {

// Element (ch, i) of set s of head `head` of image b.
__device__ inline int64_t qkv_index(int64_t b, int64_t head, int64_t ch, int s, int64_t i, int64_t C, int64_t c,
                                    int64_t hw) {
    return b * 3 * C * hw + ((head * c + ch) * 3 + s) * hw + i;
}

// One thread per (job, set, pixel): the set's c channels at that pixel, normalised.
template <class T>
struct GatherNormalized {
    const T* qkv;
    int64_t heads, c, hw;
    T *out[3], *scale[3];
    __device__ void operator()(int64_t e) const {
        const int64_t i = e % hw, job = e / (3 * hw), b = job / heads, head = job % heads;
        const int s = int((e / hw) % 3);
        const int64_t C = heads * c;
        double ss = 0;
        for (int64_t ch = 0; ch < c; ++ch) {
            const double v = qkv[qkv_index(b, head, ch, s, i, C, c, hw)];
            ss += v * v;
        }
        const T sc = T(ops::normalize_eps + sqrt(ss / double(c)));
        scale[s][job * hw + i] = sc;
        for (int64_t ch = 0; ch < c; ++ch)
            out[s][(job * c + ch) * hw + i] = qkv[qkv_index(b, head, ch, s, i, C, c, hw)] / sc;
    }
};

// The backward of GatherNormalized: dqkv of set s from dn, the gradient of the normalised n.
template <class T>
struct ScatterNormalizedGrad {
    const T *n[3], *dn[3], *scale[3];
    int64_t heads, c, hw;
    T* dqkv;
    __device__ void operator()(int64_t e) const {
        const int64_t i = e % hw, job = e / (3 * hw), b = job / heads, head = job % heads;
        const int s = int((e / hw) % 3);
        const T *ns = n[s] + job * c * hw, *dns = dn[s] + job * c * hw;
        double dot = 0;
        for (int64_t ch = 0; ch < c; ++ch) dot += double(dns[ch * hw + i]) * ns[ch * hw + i];
        const double sc = scale[s][job * hw + i], rms = sc - ops::normalize_eps;
        const double coef = rms > 0 ? dot / (double(c) * rms) : 0.0;
        for (int64_t ch = 0; ch < c; ++ch)
            dqkv[qkv_index(b, head, ch, s, i, heads * c, c, hw)] = T(dns[ch * hw + i] / sc - ns[ch * hw + i] * coef);
    }
};

// The block-wide reduction of per-thread values with `op`, visible to every thread.
template <class T, class Op>
__device__ inline T block_reduce(T v, Op op) {
    using Reduce = cub::BlockReduce<T, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    __shared__ T total;
    const T r = Reduce(tmp).Reduce(v, op);
    if (threadIdx.x == 0) total = r;
    __syncthreads();
    const T out = total;
    __syncthreads();  // the storage may be reused by the next call
    return out;
}

// In place, row by row (one block per row): S <- softmax(S).
template <class T>
__global__ void __launch_bounds__(block_size) softmax_rows_kernel(T* s, int64_t rows, int64_t len) {
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        T* r = s + row * len;
        T m = -INFINITY;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) m = max(m, r[j]);
        m = block_reduce(m, ::cuda::maximum<>{});
        T total = 0;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
            r[j] = exp(r[j] - m);
            total += r[j];
        }
        const T inv = T(1) / block_reduce(total, ::cuda::std::plus<>{});
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) r[j] *= inv;
    }
}

// In place on dP (one block per row): dS = P o (dP - rowsum(P o dP)) * scale.
template <class T>
__global__ void __launch_bounds__(block_size)
    softmax_backward_rows_kernel(const T* p, T* d, int64_t rows, int64_t len, T scale) {
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* pr = p + row * len;
        T* dr = d + row * len;
        T acc = 0;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) acc += pr[j] * dr[j];
        const T r = block_reduce(acc, ::cuda::std::plus<>{});
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) dr[j] = pr[j] * (dr[j] - r) * scale;
    }
}

inline unsigned row_grid(int64_t rows) { return unsigned(std::clamp<int64_t>(rows, 1, int64_t{1} << 20)); }

}  // namespace detail

template <Scalar T>
void attention_forward(CudaBackend, const CudaTensor<T>& qkv, int64_t heads, CudaTensor<T>& y,
                       std::type_identity_t<ops::AttentionContext<T, CudaBackend>>* ctx) {
    const auto g = ops::attention_geometry(qkv.shape(), heads, y.shape(), "attention_forward");
    const int64_t c = g.head_channels, hw = g.hw, jobs = g.jobs();
    ops::AttentionContext<T, CudaBackend> local;
    auto& s = ctx ? *ctx : local;
    s.q = CudaTensor<T>(Shape{jobs, c, hw}), s.k = CudaTensor<T>(Shape{jobs, c, hw});
    s.v = CudaTensor<T>(Shape{jobs, c, hw});
    s.q_scale = CudaTensor<T>(Shape{jobs, hw}), s.k_scale = CudaTensor<T>(Shape{jobs, hw});
    s.v_scale = CudaTensor<T>(Shape{jobs, hw});
    s.weights = CudaTensor<T>(Shape{jobs, hw, hw});
    if (jobs == 0 || hw == 0) return;
    detail::for_each(jobs * 3 * hw,
                     detail::GatherNormalized<T>{qkv.data(), heads, c, hw, {s.q.data(), s.k.data(), s.v.data()},
                                                 {s.q_scale.data(), s.k_scale.data(), s.v_scale.data()}},
                     "attention_forward: normalising ", qkv.shape());
    const double inv_sqrt_c = 1 / std::sqrt(double(c));
    detail::gemm<T>(hw, hw, c, inv_sqrt_c, {s.q.data(), hw, c * hw, true}, {s.k.data(), hw, c * hw}, 0,
                    s.weights.data(), hw, hw * hw, jobs, "attention_forward (scores)");
    detail::softmax_rows_kernel<<<detail::row_grid(jobs * hw), detail::block_size, 0, current_stream()>>>(
        s.weights.data(), jobs * hw, hw);
    launch_check("attention_forward: softmax of ", jobs * hw, " rows of ", hw);
    detail::gemm<T>(c, hw, hw, 1, {s.v.data(), hw, c * hw}, {s.weights.data(), hw, hw * hw, true}, 0, y.data(), hw,
                    c * hw, jobs, "attention_forward (values)");
}

template <Scalar T>
void attention_backward(CudaBackend, const ops::AttentionContext<T, CudaBackend>& s, int64_t heads,
                        const CudaTensor<T>& dy, CudaTensor<T>& dqkv) {
    const auto g = ops::attention_backward_geometry(s, heads, dy.shape(), dqkv.shape());
    const int64_t c = g.head_channels, hw = g.hw, jobs = g.jobs();
    if (jobs == 0 || hw == 0) return;
    CudaTensor<T> dS(Shape{jobs, hw, hw}), dq(Shape{jobs, c, hw}), dk(Shape{jobs, c, hw}), dv(Shape{jobs, c, hw});
    const int64_t chw = c * hw, hw2 = hw * hw;
    detail::gemm<T>(c, hw, hw, 1, {dy.data(), hw, chw}, {s.weights.data(), hw, hw2}, 0, dv.data(), hw, chw, jobs,
                    "attention_backward (dv)");
    detail::gemm<T>(hw, hw, c, 1, {dy.data(), hw, chw, true}, {s.v.data(), hw, chw}, 0, dS.data(), hw, hw2, jobs,
                    "attention_backward (dP)");
    detail::softmax_backward_rows_kernel<<<detail::row_grid(jobs * hw), detail::block_size, 0, current_stream()>>>(
        s.weights.data(), dS.data(), jobs * hw, hw, T(1 / std::sqrt(double(c))));
    launch_check("attention_backward: softmax backward of ", jobs * hw, " rows of ", hw);
    detail::gemm<T>(c, hw, hw, 1, {s.k.data(), hw, chw}, {dS.data(), hw, hw2, true}, 0, dq.data(), hw, chw, jobs,
                    "attention_backward (dq)");
    detail::gemm<T>(c, hw, hw, 1, {s.q.data(), hw, chw}, {dS.data(), hw, hw2}, 0, dk.data(), hw, chw, jobs,
                    "attention_backward (dk)");
    detail::for_each(jobs * 3 * hw,
                     detail::ScatterNormalizedGrad<T>{{s.q.data(), s.k.data(), s.v.data()},
                                                      {dq.data(), dk.data(), dv.data()},
                                                      {s.q_scale.data(), s.k_scale.data(), s.v_scale.data()},
                                                      heads,
                                                      c,
                                                      hw,
                                                      dqkv.data()},
                     "attention_backward: normalisation gradient into ", dqkv.shape());
}

}  // namespace mpnet::cuda
