// The multi-head cosine attention core of an EDM2 Block on the CPU.
//
// Input qkv [N, 3C, HW] with channel (head c_h + ch) 3 + s (s = q, k, v); each of q, k, v
// is pixel-normalised over its c_h channels; per head
//   S = q^T k / sqrt(c_h),  P = softmax_rows(S),  y = v P^T   (y: [c_h, HW]).
// Backward:
//   dv = dy P,  dP = dy^T v,  dS = P o (dP - rowsum(P o dP)),  dq = k dS^T / sqrt(c_h),
//   dk = q dS / sqrt(c_h), then through the pixel normalisation of each.
#pragma once
#include <cmath>
#include <type_traits>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/eigen.hpp"
#include "mpnet/ops/attention_geometry.hpp"
#include "mpnet/ops/constants.hpp"

namespace mpnet::cpu {

namespace detail {

// Gathers channel set s of one head and normalises each pixel over the c channels.
template <class T>
void gather_normalized(const T* qkv, int64_t head, int64_t c, int64_t hw, int s, T* out, T* scale) {
    for (int64_t i = 0; i < hw; ++i) {
        double ss = 0;
        for (int64_t ch = 0; ch < c; ++ch) {
            const double v = qkv[((head * c + ch) * 3 + s) * hw + i];
            ss += v * v;
        }
        scale[i] = T(ops::normalize_eps + std::sqrt(ss / double(c)));
    }
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t i = 0; i < hw; ++i) out[ch * hw + i] = qkv[((head * c + ch) * 3 + s) * hw + i] / scale[i];
}

// Backward of gather_normalized: writes channel set s of dqkv from the gradient dn of the
// normalised values n (c x hw) and their scales.
template <class T>
void scatter_normalized_grad(const T* n, const T* scale, const T* dn, int64_t head, int64_t c, int64_t hw, int s,
                             T* dqkv) {
    for (int64_t i = 0; i < hw; ++i) {
        double dot = 0;
        for (int64_t ch = 0; ch < c; ++ch) dot += double(dn[ch * hw + i]) * n[ch * hw + i];
        const double sc = scale[i], rms = sc - ops::normalize_eps;
        const double coef = rms > 0 ? dot / (double(c) * rms) : 0.0;
        for (int64_t ch = 0; ch < c; ++ch)
            dqkv[((head * c + ch) * 3 + s) * hw + i] = T(dn[ch * hw + i] / sc - n[ch * hw + i] * coef);
    }
}

}  // namespace detail

template <Scalar T>
void attention_forward(CpuBackend, const CpuTensor<T>& qkv, int64_t heads, CpuTensor<T>& y,
                       std::type_identity_t<ops::AttentionContext<T, CpuBackend>>* ctx) {
    const auto g = ops::attention_geometry(qkv.shape(), heads, y.shape(), "attention_forward");
    const int64_t n = g.n, C = g.channels, hw = g.hw, c = g.head_channels;
    ops::AttentionContext<T, CpuBackend> local;
    auto& s = ctx ? *ctx : local;
    const bool keep = ctx != nullptr;
    // Inference keeps one head's buffers per thread instead of every head's.
    const int64_t jobs = keep ? n * heads : omp_get_max_threads();
    s.q = CpuTensor<T>(Shape{jobs, c, hw}), s.k = CpuTensor<T>(Shape{jobs, c, hw}), s.v = CpuTensor<T>(Shape{jobs, c, hw});
    s.q_scale = CpuTensor<T>(Shape{jobs, hw}), s.k_scale = CpuTensor<T>(Shape{jobs, hw}),
    s.v_scale = CpuTensor<T>(Shape{jobs, hw});
    s.weights = CpuTensor<T>(Shape{jobs, hw, hw});
    const T inv_sqrt_c = T(1 / std::sqrt(double(c)));
#pragma omp parallel for schedule(static) if (n * heads > 1)
    for (int64_t job = 0; job < n * heads; ++job) {
        const int64_t b = job / heads, head = job % heads, slot = keep ? job : omp_get_thread_num();
        const T* src = qkv.data() + b * 3 * C * hw;
        T *q = s.q.data() + slot * c * hw, *k = s.k.data() + slot * c * hw, *v = s.v.data() + slot * c * hw;
        detail::gather_normalized(src, head, c, hw, 0, q, s.q_scale.data() + slot * hw);
        detail::gather_normalized(src, head, c, hw, 1, k, s.k_scale.data() + slot * hw);
        detail::gather_normalized(src, head, c, hw, 2, v, s.v_scale.data() + slot * hw);
        MatMap<T> P(s.weights.data() + slot * hw * hw, hw, hw);
        P.noalias() = ConstMatMap<T>(q, c, hw).transpose() * ConstMatMap<T>(k, c, hw);
        P *= inv_sqrt_c;
        for (int64_t i = 0; i < hw; ++i) {
            auto row = P.row(i);
            row = (row.array() - row.maxCoeff()).exp();
            row /= row.sum();
        }
        MatMap<T>(y.data() + (b * C + head * c) * hw, c, hw).noalias() = ConstMatMap<T>(v, c, hw) * P.transpose();
    }
}

template <Scalar T>
void attention_backward(CpuBackend, const ops::AttentionContext<T, CpuBackend>& s, int64_t heads,
                        const CpuTensor<T>& dy, CpuTensor<T>& dqkv) {
    const auto g = ops::attention_backward_geometry(s, heads, dy.shape(), dqkv.shape());
    const int64_t n = g.n, C = g.channels, hw = g.hw, c = g.head_channels;
    const T inv_sqrt_c = T(1 / std::sqrt(double(c)));
#pragma omp parallel for schedule(static) if (n * heads > 1)
    for (int64_t job = 0; job < n * heads; ++job) {
        const int64_t b = job / heads, head = job % heads;
        const ConstMatMap<T> q(s.q.data() + job * c * hw, c, hw), k(s.k.data() + job * c * hw, c, hw),
            v(s.v.data() + job * c * hw, c, hw), P(s.weights.data() + job * hw * hw, hw, hw),
            dY(dy.data() + (b * C + head * c) * hw, c, hw);
        T* scratch = detail::thread_scratch<T>(size_t(hw * hw + 3 * c * hw));
        MatMap<T> dS(scratch, hw, hw), dq(scratch + hw * hw, c, hw), dk(scratch + hw * hw + c * hw, c, hw),
            dv(scratch + hw * hw + 2 * c * hw, c, hw);
        dv.noalias() = dY * P;
        dS.noalias() = dY.transpose() * v;  // dP
        for (int64_t i = 0; i < hw; ++i) {
            const T r = P.row(i).dot(dS.row(i));
            dS.row(i) = (P.row(i).array() * (dS.row(i).array() - r)).matrix();
        }
        dS *= inv_sqrt_c;
        dq.noalias() = k * dS.transpose();
        dk.noalias() = q * dS;
        T* out = dqkv.data() + b * 3 * C * hw;
        detail::scatter_normalized_grad(q.data(), s.q_scale.data() + job * hw, dq.data(), head, c, hw, 0, out);
        detail::scatter_normalized_grad(k.data(), s.k_scale.data() + job * hw, dk.data(), head, c, hw, 1, out);
        detail::scatter_normalized_grad(v.data(), s.v_scale.data() + job * hw, dv.data(), head, c, hw, 2, out);
    }
}

}  // namespace mpnet::cpu
