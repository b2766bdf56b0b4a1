// MPFourier on the GPU: y[n, c] = sqrt(2) cos(x[n] freqs[c] + phases[c]), computed in
// double like the CPU kernel.
#pragma once
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cuda {

namespace detail {

template <class T>
struct FourierForward {
    const T *x, *freqs, *phases;
    int64_t c;
    T* y;
    __device__ void operator()(int64_t e) const {
        const int64_t i = e / c, j = e % c;
        y[e] = T(ops::sqrt2 * cos(double(x[i]) * freqs[j] + phases[j]));
    }
};

// dx[i] = -sqrt(2) sum_j dy[i, j] sin(x[i] freqs[j] + phases[j]) freqs[j], one block per i.
template <class T>
__global__ void __launch_bounds__(block_size)
    fourier_backward_kernel(const T* x, const T* freqs, const T* phases, const T* dy, int64_t n, int64_t c, T* dx) {
    using Reduce = cub::BlockReduce<double, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        double acc = 0;
        for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
            acc -= double(dy[i * c + j]) * sin(double(x[i]) * freqs[j] + phases[j]) * freqs[j];
        const double total = Reduce(tmp).Sum(acc);
        if (threadIdx.x == 0) dx[i] = T(ops::sqrt2 * total);
        __syncthreads();
    }
}

}  // namespace detail

template <Scalar T>
void mp_fourier_forward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& freqs, const CudaTensor<T>& phases,
                        CudaTensor<T>& y) {
    const int64_t n = x.numel(), c = ops::fourier_channels(x.shape(), freqs.shape(), phases.shape(), y.shape(),
                                                           "mp_fourier_forward");
    detail::for_each(n * c, detail::FourierForward<T>{x.data(), freqs.data(), phases.data(), c, y.data()},
                     "mp_fourier_forward on ", x.shape(), " x ", c, " channels");
}

// The buffers get no gradient.
template <Scalar T>
void mp_fourier_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& freqs,
                         const CudaTensor<T>& phases, const CudaTensor<T>& dy, CudaTensor<T>& dx) {
    const int64_t n = x.numel(), c = ops::fourier_channels(x.shape(), freqs.shape(), phases.shape(), dy.shape(),
                                                           "mp_fourier_backward");
    check_same_size(x, dx, "mp_fourier_backward");
    if (n == 0) return;
    detail::fourier_backward_kernel<<<unsigned(std::min<int64_t>(n, int64_t{1} << 20)), detail::block_size, 0,
                                      current_stream()>>>(x.data(), freqs.data(), phases.data(), dy.data(), n, c,
                                                          dx.data());
    launch_check("mp_fourier_backward on ", x.shape(), " x ", c, " channels");
}

}  // namespace mpnet::cuda
