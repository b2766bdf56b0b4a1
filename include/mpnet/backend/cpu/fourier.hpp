// MPFourier on the CPU: y[n, c] = sqrt(2) cos(x[n] freqs[c] + phases[c]).
#pragma once
#include <cmath>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cpu {

template <Scalar T>
void mp_fourier_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& freqs, const CpuTensor<T>& phases,
                        CpuTensor<T>& y) {
    const int64_t n = x.numel(), c = ops::fourier_channels(x.shape(), freqs.shape(), phases.shape(), y.shape(),
                                                           "mp_fourier_forward");
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < c; ++j)
            y.data()[i * c + j] = T(ops::sqrt2 * std::cos(double(x.data()[i]) * freqs.data()[j] + phases.data()[j]));
}

// dx[n] = sum_c dy[n, c] * -sqrt(2) sin(x[n] freqs[c] + phases[c]) freqs[c]; the buffers get no gradient.
template <Scalar T>
void mp_fourier_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& freqs, const CpuTensor<T>& phases,
                         const CpuTensor<T>& dy, CpuTensor<T>& dx) {
    const int64_t n = x.numel(), c = ops::fourier_channels(x.shape(), freqs.shape(), phases.shape(), dy.shape(),
                                                           "mp_fourier_backward");
    check_same_size(x, dx, "mp_fourier_backward");
    for (int64_t i = 0; i < n; ++i) {
        double acc = 0;
        for (int64_t j = 0; j < c; ++j)
            acc -= double(dy.data()[i * c + j]) * std::sin(double(x.data()[i]) * freqs.data()[j] + phases.data()[j]) *
                   freqs.data()[j];
        dx.data()[i] = T(ops::sqrt2 * acc);
    }
}

}  // namespace mpnet::cpu
