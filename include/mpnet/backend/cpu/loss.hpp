// The EDM2 training loss with learned uncertainty on the CPU, fused with its gradient.
//
//   loss_elem = w / exp(logvar) (D - y)^2 + logvar,   w = (sigma^2 + sd^2) / (sigma sd)^2
// Gives sum(loss_elem), returned to the host or written to a one-element double tensor that
// stays on the backend, and writes the gradients of L = scale * sum(loss_elem):
//   dD = scale 2 w / exp(logvar) (D - y),   dlogvar[n] = scale sum_chw (1 - w / exp(logvar) (D - y)^2).
#pragma once
#include <cmath>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cpu {

namespace detail {
template <Scalar T>
double edm2_loss_total(const CpuTensor<T>& D, const CpuTensor<T>& y, const CpuTensor<T>& sigma,
                       const CpuTensor<T>& logvar, double sigma_data, double scale, CpuTensor<T>& dD,
                       CpuTensor<T>& dlogvar) {
    const auto e =
        ops::loss_extents(D.shape(), y.shape(), sigma.shape(), logvar.shape(), dD.shape(), dlogvar.shape());
    const int64_t n = e.n, inner = e.inner;
    std::vector<double> per_image(static_cast<std::size_t>(n));  // summed in order below: reproducible
#pragma omp parallel for schedule(static) if (D.numel() > parallel_grain)
    for (int64_t i = 0; i < n; ++i) {
        const double s = sigma.data()[i], sd = sigma_data, lv = logvar.data()[i];
        const double k = (s * s + sd * sd) / ((s * sd) * (s * sd)) / std::exp(lv);
        const T* pd = D.data() + i * inner;
        const T* py = y.data() + i * inner;
        T* g = dD.data() + i * inner;
        double sq = 0;
        for (int64_t j = 0; j < inner; ++j) {
            const double e = double(pd[j]) - double(py[j]);
            sq += e * e;
            g[j] = T(scale * 2 * k * e);
        }
        dlogvar.data()[i] = T(scale * (double(inner) - k * sq));
        per_image[static_cast<std::size_t>(i)] = k * sq + double(inner) * lv;
    }
    double total = 0;
    for (double v : per_image) total += v;
    return total;
}
}  // namespace detail

template <Scalar T>
double edm2_loss(CpuBackend, const CpuTensor<T>& D, const CpuTensor<T>& y, const CpuTensor<T>& sigma,
                 const CpuTensor<T>& logvar, double sigma_data, double scale, CpuTensor<T>& dD,
                 CpuTensor<T>& dlogvar) {
    mpnet::detail::note_host_read();
    return detail::edm2_loss_total(D, y, sigma, logvar, sigma_data, scale, dD, dlogvar);
}

template <Scalar T>
void edm2_loss(CpuBackend, const CpuTensor<T>& D, const CpuTensor<T>& y, const CpuTensor<T>& sigma,
               const CpuTensor<T>& logvar, double sigma_data, double scale, CpuTensor<T>& dD, CpuTensor<T>& dlogvar,
               CpuTensor<double>& total) {
    check(total.numel() == 1, "edm2_loss: the total must have one element, got ", total.shape());
    total.data()[0] = detail::edm2_loss_total(D, y, sigma, logvar, sigma_data, scale, dD, dlogvar);
}

}  // namespace mpnet::cpu
