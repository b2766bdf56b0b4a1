// Helpers of the CUDA tests: moving tensors between the backends and comparing a GPU
// result with the CPU kernel's on the same inputs.
#pragma once
#include <span>
#include <type_traits>
#include <vector>

#include "golden.hpp"
#include "mpnet/backend/cuda/cuda.cuh"

namespace mpnet::test {

template <class T>
CudaTensor<T> to_gpu(const CpuTensor<T>& t) {
    return CudaTensor<T>::from_host(t.shape(), std::span<const T>(t.data(), size_t(t.numel())));
}
template <class T>
CpuTensor<T> to_cpu(const CudaTensor<T>& t) {
    const auto v = t.to_host();
    return CpuTensor<T>::from_host(t.shape(), v);
}
template <class T>
CpuTensor<T> random_cpu(Shape s, uint64_t seed, double std = 1) {
    CpuTensor<T> t(s);
    fill_normal(CpuBackend{}, t, seed, 0, 0.0, std);
    return t;
}

// GPU against CPU on identical inputs, relative to the CPU result's max-abs: only the
// summation order differs (float), or nothing beyond double rounding (double).
template <class T>
constexpr double gpu_fwd_tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
template <class T>
constexpr double gpu_grad_tol = std::is_same_v<T, float> ? 1e-4 : 1e-12;

// Runs f(tag, inputs) on the CPU, and on the GPU with copies of the inputs, and compares
// every tensor f returns. f is a generic lambda over the backend tag.
template <class T, class F>
void compare_backends(F&& f, double tol, const std::vector<CpuTensor<T>>& inputs) {
    std::vector<CudaTensor<T>> on_gpu;
    for (const auto& t : inputs) on_gpu.push_back(to_gpu(t));
    const std::vector<CpuTensor<T>> want = f(CpuBackend{}, inputs);
    const std::vector<CudaTensor<T>> got = f(CudaBackend{}, on_gpu);
    REQUIRE(want.size() == got.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        CAPTURE(i);
        MPNET_CHECK_CLOSE(to_cpu(got[i]), want[i], tol);
    }
}

}  // namespace mpnet::test

// Compares a CudaTensor with a CpuTensor reference.
#define MPNET_CHECK_GPU(gpu, cpu_ref, tol) MPNET_CHECK_CLOSE(::mpnet::test::to_cpu(gpu), (cpu_ref), (tol))
