// Kernel launch patterns shared by the CUDA kernels: a grid-stride loop over n indices and
// a deterministic sum (fixed grid for a given n, CUB block reductions, two passes), so
// that reductions give the same bits run after run.
#pragma once
#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>

#include "mpnet/backend/cuda/backend.cuh"

namespace mpnet::cuda::detail {

inline constexpr int block_size = 256;

inline unsigned grid_for(int64_t n, int64_t max_blocks = int64_t{1} << 20) {
    return static_cast<unsigned>(std::clamp<int64_t>((n + block_size - 1) / block_size, 1, max_blocks));
}

// f(i) for every i in [0, n). F is a trivially copyable functor with a __device__ call operator.
template <class F>
__global__ void __launch_bounds__(block_size) for_each_kernel(int64_t n, F f) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) f(i);
}

template <class F, class... Parts>
void for_each(int64_t n, F f, Parts&&... what) {
    if (n == 0) return;
    for_each_kernel<<<grid_for(n), block_size, 0, current_stream()>>>(n, f);
    launch_check(std::forward<Parts>(what)...);
}

// Pass 1: each block sums f(i) over its grid-stride share; pass 2: one block sums the partials.
inline constexpr int64_t reduce_blocks = 1024;

template <class F>
__global__ void __launch_bounds__(block_size) reduce_partial_kernel(int64_t n, F f, double* partial) {
    using Reduce = cub::BlockReduce<double, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    double acc = 0;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        acc += f(i);
    const double s = Reduce(tmp).Sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// A template, like every kernel here, so that the header may be included by many units.
template <class Acc>
__global__ void __launch_bounds__(block_size) reduce_final_kernel(int n, const Acc* partial, Acc* out) {
    using Reduce = cub::BlockReduce<Acc, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    Acc acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    const Acc s = Reduce(tmp).Sum(acc);
    if (threadIdx.x == 0) *out = s;
}

// Sum of f(i) over [0, n) in double, left on the device: the returned one-element buffer.
template <class F, class... Parts>
DeviceBuffer<double> reduce_on_device(int64_t n, F f, Parts&&... what) {
    const unsigned blocks = grid_for(n, reduce_blocks);
    DeviceBuffer<double> partial(blocks), result(1);
    if (n == 0) {
        cuda_check(cudaMemsetAsync(result.data(), 0, sizeof(double), current_stream()), "zeroing a reduction");
        return result;
    }
    reduce_partial_kernel<<<blocks, block_size, 0, current_stream()>>>(n, f, partial.data());
    launch_check(what...);
    reduce_final_kernel<double><<<1, block_size, 0, current_stream()>>>(int(blocks), partial.data(), result.data());
    launch_check(std::forward<Parts>(what)...);
    return result;
}

// Sum of f(i) over [0, n) in double, returned to the host (synchronises the stream).
template <class F, class... Parts>
double reduce_sum(int64_t n, F f, Parts&&... what) {
    mpnet::detail::note_host_read();
    if (n == 0) return 0;
    const DeviceBuffer<double> sum = reduce_on_device(n, f, std::forward<Parts>(what)...);
    double result = 0;
    cuda_check(cudaMemcpyAsync(&result, sum.data(), sizeof(double), cudaMemcpyDeviceToHost, current_stream()),
               "reading back a reduction");
    CudaBackend::synchronize();
    return result;
}

}  // namespace mpnet::cuda::detail
