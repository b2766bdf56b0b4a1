// One Adam step on the GPU (no weight decay), fused over the parameter, its gradient and
// both moments, with the bias corrections of step t: the CPU's adam_step, in double.
#pragma once
#include <cmath>

#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cuda {

namespace detail {

template <class T>
struct AdamStep {
    T* p;
    const T* g;
    T *m, *v;
    double lr, beta1, beta2, eps, c1, c2;
    __device__ void operator()(int64_t i) const {
        const double gi = g[i];
        const double mi = beta1 * m[i] + (1 - beta1) * gi, vi = beta2 * v[i] + (1 - beta2) * gi * gi;
        m[i] = T(mi);
        v[i] = T(vi);
        p[i] = T(p[i] - lr * (mi / c1) / (sqrt(vi / c2) + eps));
    }
};

}  // namespace detail

template <Scalar T>
void adam_step(CudaBackend, CudaTensor<T>& param, const CudaTensor<T>& grad, CudaTensor<T>& m, CudaTensor<T>& v,
               double lr, double beta1, double beta2, double eps, int64_t step) {
    ops::check_adam(param.shape(), grad.shape(), m.shape(), v.shape());
    const double c1 = 1 - std::pow(beta1, double(step)), c2 = 1 - std::pow(beta2, double(step));
    detail::for_each(param.numel(),
                     detail::AdamStep<T>{param.data(), grad.data(), m.data(), v.data(), lr, beta1, beta2, eps, c1, c2},
                     "adam_step on ", param.shape());
}

}  // namespace mpnet::cuda
