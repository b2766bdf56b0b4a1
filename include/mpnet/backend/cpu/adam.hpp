// One Adam step on the CPU (no weight decay), fused over the parameter, its gradient and
// both moments. The step's learning rate and bias corrections come as a tensor on the
// backend (train/adam.hpp stages them), as the CUDA kernel reads them inside a replayed graph.
#pragma once
#include <cmath>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cpu {

// coefficients = [lr, 1 - beta1^t, 1 - beta2^t] for step t.
template <Scalar T>
void adam_step(CpuBackend, CpuTensor<T>& param, const CpuTensor<T>& grad, CpuTensor<T>& m, CpuTensor<T>& v,
               const CpuTensor<double>& coefficients, double beta1, double beta2, double eps) {
    ops::check_adam(param.shape(), grad.shape(), m.shape(), v.shape(), coefficients.shape());
    const double lr = coefficients.data()[0], c1 = coefficients.data()[1], c2 = coefficients.data()[2];
    T *p = param.data(), *pm = m.data(), *pv = v.data();
    const T* g = grad.data();
    const int64_t n = param.numel();
#pragma omp parallel for schedule(static) if (n > parallel_grain)
    for (int64_t i = 0; i < n; ++i) {
        const double gi = g[i];
        const double mi = beta1 * pm[i] + (1 - beta1) * gi, vi = beta2 * pv[i] + (1 - beta2) * gi * gi;
        pm[i] = T(mi);
        pv[i] = T(vi);
        p[i] = T(p[i] - lr * (mi / c1) / (std::sqrt(vi / c2) + eps));
    }
}

}  // namespace mpnet::cpu
