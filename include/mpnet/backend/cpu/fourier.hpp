// MPFourier on the CPU: y[n, c] = sqrt(2) cos(x[n] freqs[c] + phases[c]); in float, the
// sines and cosines a packet at a time.
#pragma once
#include <cmath>
#include <type_traits>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cpu {

namespace detail {
// The angles x f[j] + p[j], formed in double and reduced to [-pi, pi] there, then rounded to
// float. Float's vectorised sine and cosine of the reduced angle are within two ulps of the
// double-precision function of the exact angle (the reference takes float32 cosines of
// float32 angles); without the reduction in double, angles of tens of radians would lose
// bits to float rounding before the cosine is taken.
inline void fourier_angles(float x, const float* f, const float* p, int64_t c, float* r) {
    constexpr double two_pi = 6.283185307179586476925286766559, inv_two_pi = 1 / two_pi;
    for (int64_t j = 0; j < c; ++j) {
        const double a = double(x) * f[j] + p[j];
        r[j] = float(a - two_pi * std::nearbyint(a * inv_two_pi));
    }
}
}  // namespace detail

template <Scalar T>
void mp_fourier_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& freqs, const CpuTensor<T>& phases,
                        CpuTensor<T>& y) {
    const int64_t n = x.numel(), c = ops::fourier_channels(x.shape(), freqs.shape(), phases.shape(), y.shape(),
                                                           "mp_fourier_forward");
    if constexpr (std::is_same_v<T, float>) {
        float* r = detail::thread_scratch<float>(std::size_t(c));
        for (int64_t i = 0; i < n; ++i) {
            detail::fourier_angles(x.data()[i], freqs.data(), phases.data(), c, r);
            packet::transform(c, y.data() + i * c, [](const auto& v) {
                using P = std::decay_t<decltype(v)>;
                return Eigen::internal::pmul(Eigen::internal::pset1<P>(float(ops::sqrt2)), Eigen::internal::pcos(v));
            }, static_cast<const float*>(r));
        }
    } else {
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < c; ++j)
                y.data()[i * c + j] = T(ops::sqrt2 * std::cos(double(x.data()[i]) * freqs.data()[j] + phases.data()[j]));
    }
}

// dx[n] = sum_c dy[n, c] * -sqrt(2) sin(x[n] freqs[c] + phases[c]) freqs[c]; the buffers get no gradient.
template <Scalar T>
void mp_fourier_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& freqs, const CpuTensor<T>& phases,
                         const CpuTensor<T>& dy, CpuTensor<T>& dx) {
    const int64_t n = x.numel(), c = ops::fourier_channels(x.shape(), freqs.shape(), phases.shape(), dy.shape(),
                                                           "mp_fourier_backward");
    check_same_size(x, dx, "mp_fourier_backward");
    if constexpr (std::is_same_v<T, float>) {
        float* r = detail::thread_scratch<float>(std::size_t(2 * c));
        for (int64_t i = 0; i < n; ++i) {
            detail::fourier_angles(x.data()[i], freqs.data(), phases.data(), c, r);
            packet::transform(c, r + c, [](const auto& v) { return Eigen::internal::psin(v); }, static_cast<const float*>(r));
            double acc = 0;
            for (int64_t j = 0; j < c; ++j) acc -= double(dy.data()[i * c + j]) * r[c + j] * freqs.data()[j];
            dx.data()[i] = float(ops::sqrt2 * acc);
        }
    } else {
        for (int64_t i = 0; i < n; ++i) {
            double acc = 0;
            for (int64_t j = 0; j < c; ++j)
                acc -= double(dy.data()[i * c + j]) * std::sin(double(x.data()[i]) * freqs.data()[j] + phases.data()[j]) *
                       freqs.data()[j];
            dx.data()[i] = T(ops::sqrt2 * acc);
        }
    }
}

}  // namespace mpnet::cpu
