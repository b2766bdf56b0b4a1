// One Adam step on the GPU (no weight decay), fused over the parameter, its gradient and
// both moments: the CPU's adam_step, in double. The step's learning rate and bias
// corrections are read on the device, so a replayed CUDA graph takes each step's own.
#pragma once
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cuda {

namespace detail {

template <class T>
struct AdamStep {
    T* p;
    const T* g;
    T *m, *v;
    const double* coefficients;  // [lr, 1 - beta1^t, 1 - beta2^t]
    double beta1, beta2, eps;
    __device__ void operator()(int64_t i) const {
        const double lr = coefficients[0], c1 = coefficients[1], c2 = coefficients[2];
        const double gi = g[i];
        const double mi = beta1 * m[i] + (1 - beta1) * gi, vi = beta2 * v[i] + (1 - beta2) * gi * gi;
        m[i] = T(mi);
        v[i] = T(vi);
        p[i] = T(p[i] - lr * (mi / c1) / (sqrt(vi / c2) + eps));
    }
};

}  // namespace detail

// coefficients = [lr, 1 - beta1^t, 1 - beta2^t] for step t, on the device.
template <Scalar T>
void adam_step(CudaBackend, CudaTensor<T>& param, const CudaTensor<T>& grad, CudaTensor<T>& m, CudaTensor<T>& v,
               const CudaTensor<double>& coefficients, double beta1, double beta2, double eps) {
    ops::check_adam(param.shape(), grad.shape(), m.shape(), v.shape(), coefficients.shape());
    detail::for_each(param.numel(),
                     detail::AdamStep<T>{param.data(), grad.data(), m.data(), v.data(), coefficients.data(), beta1,
                                         beta2, eps},
                     "adam_step on ", param.shape());
}

}  // namespace mpnet::cuda
