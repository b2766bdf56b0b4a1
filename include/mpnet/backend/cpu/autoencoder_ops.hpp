// The kernels of the latent autoencoder (vae/autoencoder_kl.hpp) on the CPU, forward only:
// group normalisation (optionally followed by SiLU), per-channel bias, nearest 2x
// upsampling, the odd-pixel subsampling that turns a "same" convolution into the encoder's
// strided one, and plain softmax attention.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/eigen.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"
#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/ops/autoencoder_checks.hpp"

namespace mpnet::cpu {

// y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c] over each group of channels of each
// image (biased variance, as torch.nn.GroupNorm), then x sigmoid(x) if `silu`. Statistics
// are summed in double; x and y may be the same tensor.
template <Scalar T>
void group_norm_forward(CpuBackend, const CpuTensor<T>& x, int64_t groups, double eps, const CpuTensor<T>& gamma,
                        const CpuTensor<T>& beta, bool silu, CpuTensor<T>& y) {
    ops::check_group_norm(x.shape(), groups, gamma.shape(), beta.shape(), y.shape());
    const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3), per = c / groups;
    const int64_t count = per * hw;
    using P = packet::Packet<T>;
#pragma omp parallel for schedule(dynamic) if (n * c * hw > 65536)
    for (int64_t ng = 0; ng < n * groups; ++ng) {
        const T* px = x.data() + ng * count;
        T* py = y.data() + ng * count;
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < count; ++i) s += double(px[i]);
        const double mean = s / double(count);
        for (int64_t i = 0; i < count; ++i) s2 += (double(px[i]) - mean) * (double(px[i]) - mean);
        const double rstd = 1 / std::sqrt(s2 / double(count) + eps);
        for (int64_t k = 0; k < per; ++k) {
            const int64_t ch = (ng % groups) * per + k;
            const T a = T(rstd * double(gamma.data()[ch])), b = T(double(beta.data()[ch]) - mean * rstd * double(gamma.data()[ch]));
            using namespace Eigen::internal;
            const P pa = pset1<P>(a), pb = pset1<P>(b);
            if (silu)
                packet::transform(hw, py + k * hw, [&](P v) { const P u = pmadd(v, pa, pb); return pmul(u, detail::sigmoid(u)); },
                                  px + k * hw);
            else
                packet::transform(hw, py + k * hw, [&](P v) { return pmadd(v, pa, pb); }, px + k * hw);
        }
    }
}

// y[n, c, :, :] += bias[c]
template <Scalar T>
void add_channel_bias(CpuBackend, const CpuTensor<T>& bias, CpuTensor<T>& y) {
    ops::check_channel_bias(bias.shape(), y.shape());
    const int64_t planes = y.size(0) * y.size(1), hw = y.size(2) * y.size(3);
#pragma omp parallel for schedule(static) if (planes * hw > 65536)
    for (int64_t p = 0; p < planes; ++p) {
        const T b = bias.data()[p % y.size(1)];
        T* py = y.data() + p * hw;
        for (int64_t i = 0; i < hw; ++i) py[i] += b;
    }
}

// y[n, c, 2i + a, 2j + b] = x[n, c, i, j]: nearest-neighbour 2x upsampling.
template <Scalar T>
void upsample_nearest2x(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    ops::check_doubled(x.shape(), y.shape(), "upsample_nearest2x");
    const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
#pragma omp parallel for schedule(static) if (planes * h * w > 16384)
    for (int64_t p = 0; p < planes; ++p)
        for (int64_t i = 0; i < h; ++i) {
            const T* src = x.data() + (p * h + i) * w;
            T* row = y.data() + (p * 2 * h + 2 * i) * 2 * w;
            for (int64_t j = 0; j < w; ++j) row[2 * j] = row[2 * j + 1] = src[j];
            std::copy(row, row + 2 * w, row + 2 * w);
        }
}

// y[n, c, i, j] = x[n, c, 2i + 1, 2j + 1]. A 3x3 "same" convolution read at the odd pixels is
// the stride-2 convolution of the input padded by one row and column at the bottom and right
// (the encoder's downsampling).
template <Scalar T>
void take_odd_pixels(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    ops::check_doubled(y.shape(), x.shape(), "take_odd_pixels");
    const int64_t planes = y.size(0) * y.size(1), h = y.size(2), w = y.size(3);
#pragma omp parallel for schedule(static) if (planes * h * w > 16384)
    for (int64_t p = 0; p < planes; ++p)
        for (int64_t i = 0; i < h; ++i) {
            const T* src = x.data() + (p * 2 * h + 2 * i + 1) * 2 * w;
            T* dst = y.data() + (p * h + i) * w;
            for (int64_t j = 0; j < w; ++j) dst[j] = src[2 * j + 1];
        }
}

// Single-head softmax attention over the pixels: for each image, with q, k, v [C, HW],
// y = v softmax_keys(k^T q / sqrt(C)) laid out [C, HW]. Queries go in blocks so that the
// score matrix stays at 1024 x HW.
template <Scalar T>
void softmax_attention_forward(CpuBackend, const CpuTensor<T>& q, const CpuTensor<T>& k, const CpuTensor<T>& v,
                               CpuTensor<T>& y) {
    ops::check_softmax_attention(q.shape(), k.shape(), v.shape(), y.shape());
    const int64_t n = q.size(0), c = q.size(1), hw = q.size(2) * q.size(3);
    constexpr int64_t block = 1024;
    const T scale = T(1 / std::sqrt(double(c)));
    RowMatrix<T> scores(std::min(block, hw), hw), qt;
    for (int64_t img = 0; img < n; ++img) {
        const ConstMatMap<T> Q(q.data() + img * c * hw, c, hw), K(k.data() + img * c * hw, c, hw),
            V(v.data() + img * c * hw, c, hw);
        MatMap<T> Y(y.data() + img * c * hw, c, hw);
        for (int64_t q0 = 0; q0 < hw; q0 += block) {
            const int64_t rows = std::min(block, hw - q0);
            qt = Q.middleCols(q0, rows).transpose() * scale;
            auto S = scores.topRows(rows);
            S.noalias() = qt * K;  // [rows, hw]
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < rows; ++r) {
                auto row = S.row(r);
                const T m = row.maxCoeff();
                row = (row.array() - m).exp();
                row /= row.sum();
            }
            Y.middleCols(q0, rows).noalias() = V * S.transpose();
        }
    }
}

}  // namespace mpnet::cpu
