// The EDM2 training loss with learned uncertainty on the GPU, fused with its gradient, as
// the CPU's edm2_loss:
//   loss_elem = w / exp(logvar) (D - y)^2 + logvar,   w = (sigma^2 + sd^2) / (sigma sd)^2
// gives sum(loss_elem) (returned to the host, or written to a one-element double tensor on the
// device) and writes the gradients of L = scale * sum(loss_elem):
//   dD = scale 2 w / exp(logvar) (D - y),   dlogvar[n] = scale sum_chw (1 - w / exp(logvar) (D - y)^2).
// One block per image; the per-image totals are summed in image order, as on the CPU.
#pragma once
#include <algorithm>

#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cuda {

namespace detail {

template <class T>
__global__ void __launch_bounds__(block_size)
    edm2_loss_kernel(const T* D, const T* y, const T* sigma, const T* logvar, double sigma_data, double scale,
                     int64_t n, int64_t inner, T* dD, T* dlogvar, double* totals) {
    using Reduce = cub::BlockReduce<double, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const double s = sigma[i], sd = sigma_data, lv = logvar[i];
        const double k = (s * s + sd * sd) / ((s * sd) * (s * sd)) / exp(lv);
        double sq = 0;
        for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
            const int64_t e = i * inner + j;
            const double d = double(D[e]) - double(y[e]);
            sq += d * d;
            dD[e] = T(scale * 2 * k * d);
        }
        sq = Reduce(tmp).Sum(sq);
        if (threadIdx.x == 0) {
            dlogvar[i] = T(scale * (double(inner) - k * sq));
            totals[i] = k * sq + double(inner) * lv;
        }
        __syncthreads();
    }
}

// The per-image totals summed in image order by one thread: the CPU's order, bit for bit.
template <class Acc>
__global__ void sum_in_order_kernel(const Acc* v, int64_t n, Acc* out) {
    Acc total = 0;
    for (int64_t i = 0; i < n; ++i) total += v[i];
    *out = total;
}

}  // namespace detail

// The total written to `total` ([1], double) on the device: nothing is read back.
template <Scalar T>
void edm2_loss(CudaBackend, const CudaTensor<T>& D, const CudaTensor<T>& y, const CudaTensor<T>& sigma,
               const CudaTensor<T>& logvar, double sigma_data, double scale, CudaTensor<T>& dD, CudaTensor<T>& dlogvar,
               CudaTensor<double>& total) {
    const auto e =
        ops::loss_extents(D.shape(), y.shape(), sigma.shape(), logvar.shape(), dD.shape(), dlogvar.shape());
    check(total.numel() == 1, "edm2_loss: the total must have one element, got ", total.shape());
    DeviceBuffer<double> totals(static_cast<std::size_t>(e.n));
    if (e.n > 0) {
        detail::edm2_loss_kernel<<<unsigned(std::min<int64_t>(e.n, int64_t{1} << 20)), detail::block_size, 0,
                                   current_stream()>>>(D.data(), y.data(), sigma.data(), logvar.data(), sigma_data,
                                                       scale, e.n, e.inner, dD.data(), dlogvar.data(), totals.data());
        launch_check("edm2_loss on ", D.shape());
    }
    detail::sum_in_order_kernel<double><<<1, 1, 0, current_stream()>>>(totals.data(), e.n, total.data());
    launch_check("edm2_loss: the total of ", D.shape());
}

// The same, the total returned to the host (synchronises the stream).
template <Scalar T>
double edm2_loss(CudaBackend, const CudaTensor<T>& D, const CudaTensor<T>& y, const CudaTensor<T>& sigma,
                 const CudaTensor<T>& logvar, double sigma_data, double scale, CudaTensor<T>& dD,
                 CudaTensor<T>& dlogvar) {
    CudaTensor<double> total(Shape{1});
    edm2_loss(CudaBackend{}, D, y, sigma, logvar, sigma_data, scale, dD, dlogvar, total);
    return total.to_host()[0];
}

}  // namespace mpnet::cuda
