// normalize(x, dims) = x / (eps + ||x||_dims / sqrt(M)) on the GPU, forward and backward,
// with the CPU's formulas (sums in double; dx = dy / s - y sum(dy y) / (M rms)).
//
// Three layouts of the groups: rows (each group contiguous, e.g. a weight's output
// channel) take one block per group and a CUB block reduction; columns (a group strided
// by `inner`, e.g. pixel norm over channels) take one thread per group, so that a warp
// reads consecutive pixels; any other set of dims goes through a list of each group's
// elements built on the host, one block per group.
//
// 16-bit activations (pixel norm in the U-Net's encoder blocks) are normalised natively:
// loads widen, the sums stay in double, the scales are kept in float and results are
// rounded once on store.
#pragma once
#include <vector>

#include "mpnet/backend/cuda/convert.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/normalize_layout.hpp"

namespace mpnet::cuda {

namespace detail {

// Element r of group g when groups are contiguous rows of length R.
struct RowIndex {
    int64_t R;
    __device__ int64_t operator()(int64_t g, int64_t r) const { return g * R + r; }
};
// Element r of group g from a host-built list, R entries per group.
struct ListIndex {
    const int64_t* members;
    int64_t R;
    __device__ int64_t operator()(int64_t g, int64_t r) const { return members[g * R + r]; }
};

// The block-wide sum of per-thread partials, visible to every thread.
__device__ inline double block_sum(double v) {
    using Reduce = cub::BlockReduce<double, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    __shared__ double total;
    const double s = Reduce(tmp).Sum(v);
    if (threadIdx.x == 0) total = s;
    __syncthreads();
    return total;
}

template <class T, class S, class Index>
__global__ void __launch_bounds__(block_size)
    normalize_forward_blocks(const T* x, Index at, int64_t groups, int64_t R, T* y, S* scale) {
    for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
        double ss = 0;
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
            const double v = ld(x[at(g, r)]);
            ss += v * v;
        }
        const double s = ops::normalize_eps + sqrt(block_sum(ss) / double(R));
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) st(y[at(g, r)], Compute<T>(ld(x[at(g, r)]) / s));
        if (scale && threadIdx.x == 0) scale[g] = S(s);
        __syncthreads();  // block_sum's shared result is reused by the next group
    }
}

template <class T, class S>
struct NormalizeForwardColumns {
    const T* x;
    int64_t R, inner;
    T* y;
    S* scale;
    __device__ void operator()(int64_t g) const {
        const int64_t base = (g / inner) * R * inner + g % inner;
        double ss = 0;
        for (int64_t r = 0; r < R; ++r) {
            const double v = ld(x[base + r * inner]);
            ss += v * v;
        }
        const double s = ops::normalize_eps + sqrt(ss / double(R));
        for (int64_t r = 0; r < R; ++r) st(y[base + r * inner], Compute<T>(ld(x[base + r * inner]) / s));
        if (scale) scale[g] = S(s);
    }
};

// coef = sum(dy x) / s / (M rms), zero where rms = 0 (the CPU's guard).
__device__ inline double backward_coef(double dot, double s, double M) {
    const double rms = s - ops::normalize_eps;
    return rms > 0 ? dot / s / (M * rms) : 0.0;
}

template <class T, class S, class Index>
__global__ void __launch_bounds__(block_size) normalize_backward_blocks(const T* x, const T* dy, const S* scale,
                                                                        Index at, int64_t groups, int64_t R, T* dx) {
    for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
        double d = 0;
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) d += double(ld(dy[at(g, r)])) * ld(x[at(g, r)]);
        const double s = scale[g], coef = backward_coef(block_sum(d), s, double(R));
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
            const int64_t e = at(g, r);
            st(dx[e], Compute<T>(ld(dy[e]) / s - (ld(x[e]) / s) * coef));
        }
        __syncthreads();
    }
}

template <class T, class S>
struct NormalizeBackwardColumns {
    const T *x, *dy;
    const S* scale;
    int64_t R, inner;
    T* dx;
    __device__ void operator()(int64_t g) const {
        const int64_t base = (g / inner) * R * inner + g % inner;
        double d = 0;
        for (int64_t r = 0; r < R; ++r) d += double(ld(dy[base + r * inner])) * ld(x[base + r * inner]);
        const double s = scale[g], coef = backward_coef(d, s, double(R));
        for (int64_t r = 0; r < R; ++r) {
            const int64_t e = base + r * inner;
            st(dx[e], Compute<T>(ld(dy[e]) / s - (ld(x[e]) / s) * coef));
        }
    }
};

// Column kernels when a warp's threads read neighbouring addresses, or the groups are tiny.
inline bool use_columns(const ops::ReductionLayout& L) { return L.contiguous() && (L.inner > 1 || L.reduced <= 32); }

// The elements of each group in ascending order, groups one after another (a counting sort
// of the host layout's group_of).
inline DeviceBuffer<int64_t> group_members(const ops::ReductionLayout& L) {
    std::vector<int64_t> next(static_cast<std::size_t>(L.groups())), members(L.group_of.size());
    for (int64_t g = 0; g < L.groups(); ++g) next[size_t(g)] = g * L.reduced;
    for (std::size_t e = 0; e < L.group_of.size(); ++e) members[size_t(next[size_t(L.group_of[e])]++)] = int64_t(e);
    return DeviceBuffer<int64_t>::from_host(members);
}

template <class F>
void launch_blocks(int64_t groups, F&& launch) {
    if (groups == 0) return;
    launch(unsigned(std::min<int64_t>(groups, int64_t{1} << 20)));
}

}  // namespace detail

namespace detail {

// The kernels' element T and the scales' S: T itself, or float for 16-bit T.
template <class T, class S>
void normalize_forward(const CudaTensor<T>& x, ops::Dims dims, CudaTensor<T>& y, CudaTensor<S>* scale) {
    const auto L = ops::normalize_forward_layout(x.shape(), y.shape(), dims);
    S* s = nullptr;
    if (scale) {
        *scale = CudaTensor<S>(Shape{L.groups()});
        s = scale->data();
    }
    if (x.numel() == 0) return;
    const cudaStream_t stream = current_stream();
    if (detail::use_columns(L)) {
        detail::for_each(L.groups(), detail::NormalizeForwardColumns<T, S>{x.data(), L.reduced, L.inner, y.data(), s},
                         "normalize_forward on ", x.shape());
        return;
    }
    DeviceBuffer<int64_t> members;
    if (!L.contiguous()) members = detail::group_members(L);
    detail::launch_blocks(L.groups(), [&](unsigned grid) {
        if (L.contiguous())
            detail::normalize_forward_blocks<<<grid, detail::block_size, 0, stream>>>(
                x.data(), detail::RowIndex{L.reduced}, L.groups(), L.reduced, y.data(), s);
        else
            detail::normalize_forward_blocks<<<grid, detail::block_size, 0, stream>>>(
                x.data(), detail::ListIndex{members.data(), L.reduced}, L.groups(), L.reduced, y.data(), s);
    });
    launch_check("normalize_forward on ", x.shape());
}

template <class T, class S>
void normalize_backward(const CudaTensor<T>& x, const CudaTensor<T>& dy, ops::Dims dims, const CudaTensor<S>& scale,
                        CudaTensor<T>& dx) {
    const auto L = ops::normalize_backward_layout(x.shape(), dy.shape(), dx.shape(), scale.numel(), dims);
    if (x.numel() == 0) return;
    const cudaStream_t stream = current_stream();
    if (detail::use_columns(L)) {
        detail::for_each(L.groups(),
                         detail::NormalizeBackwardColumns<T, S>{x.data(), dy.data(), scale.data(), L.reduced,
                                                                L.inner, dx.data()},
                         "normalize_backward on ", x.shape());
        return;
    }
    DeviceBuffer<int64_t> members;
    if (!L.contiguous()) members = detail::group_members(L);
    detail::launch_blocks(L.groups(), [&](unsigned grid) {
        if (L.contiguous())
            detail::normalize_backward_blocks<<<grid, detail::block_size, 0, stream>>>(
                x.data(), dy.data(), scale.data(), detail::RowIndex{L.reduced}, L.groups(), L.reduced, dx.data());
        else
            detail::normalize_backward_blocks<<<grid, detail::block_size, 0, stream>>>(
                x.data(), dy.data(), scale.data(), detail::ListIndex{members.data(), L.reduced}, L.groups(),
                L.reduced, dx.data());
    });
    launch_check("normalize_backward on ", x.shape());
}

}  // namespace detail

// y = normalize(x); `scale` (optional, one per group) receives eps + rms for backward.
template <Scalar T>
void normalize_forward(CudaBackend, const CudaTensor<T>& x, ops::Dims dims, CudaTensor<T>& y,
                       CudaTensor<T>* scale = nullptr) {
    detail::normalize_forward(x, dims, y, scale);
}
// 16-bit activations, the scales in float.
template <HalfStorage A>
void normalize_forward(CudaBackend, const CudaTensor<A>& x, ops::Dims dims, CudaTensor<A>& y,
                       CudaTensor<float>* scale = nullptr) {
    detail::normalize_forward(x, dims, y, scale);
}

// dx from x, the upstream dy and the per-group scale saved by forward.
template <Scalar T>
void normalize_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& dy, ops::Dims dims,
                        const CudaTensor<T>& scale, CudaTensor<T>& dx) {
    detail::normalize_backward(x, dy, dims, scale, dx);
}
template <HalfStorage A>
void normalize_backward(CudaBackend, const CudaTensor<A>& x, const CudaTensor<A>& dy, ops::Dims dims,
                        const CudaTensor<float>& scale, CudaTensor<A>& dx) {
    detail::normalize_backward(x, dy, dims, scale, dx);
}

}  // namespace mpnet::cuda
