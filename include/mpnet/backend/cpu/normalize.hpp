// normalize(x, dims) = x / (eps + ||x||_dims / sqrt(M)) on the CPU, forward and backward.
//
// Forward saves one denominator per group (eps + rms), so backward needs only x and those:
//   dx = dy / s - y * sum(dy * y) / (M * rms),   s = eps + rms, y = x / s.
//
// Activations stored in 16 bits (the Block's pixel norm) are normalised a slab at a time:
// each image's [reduced, inner] slab is widened into a per-thread float buffer (it fits in
// L2), the float code runs on it, and the results are rounded once. The scales stay float.
#pragma once
#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/convert.hpp"
#include "mpnet/backend/cpu/half_chunks.hpp"
#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/backend/half_storage.hpp"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/normalize_layout.hpp"

namespace mpnet::cpu {

namespace detail {
// Calls f(group, element_offset) for each element of each group of a general (non-contiguous)
// layout, through group_of.
template <class F>
void for_each_grouped(const ops::ReductionLayout& L, int64_t numel, F&& f) {
    for (int64_t e = 0; e < numel; ++e) f(L.group_of[size_t(e)], e);
}

// acc[i] = sum_r a[r, i] b[r, i] over a [reduced, inner] slab: vectorised across i, each
// lane its own accumulator, so no reassociation is needed.
template <class T>
void sum_products(const T* a, const T* b, int64_t reduced, int64_t inner, T* acc) {
    std::fill(acc, acc + inner, T(0));
    for (int64_t r = 0; r < reduced; ++r)
        for (int64_t i = 0; i < inner; ++i) acc[i] += a[r * inner + i] * b[r * inner + i];
}

// One [R, I] slab of a contiguous layout: yo = xo / so, with so[i] = eps + rms over r.
template <Scalar T>
void normalize_slab(const T* xo, int64_t R, int64_t I, T* yo, T* so) {
    const auto M = double(R);
    if (I == 1) {
        so[0] = T(ops::normalize_eps + std::sqrt(double(packet::dot(xo, xo, R)) / M));
        const T inv = T(1) / so[0];
        for (int64_t r = 0; r < R; ++r) yo[r] = xo[r] * inv;
        return;
    }
    T* inv = thread_scratch<T>(size_t(I));
    sum_products(xo, xo, R, I, so);
    for (int64_t i = 0; i < I; ++i) {
        so[i] = T(ops::normalize_eps + std::sqrt(double(so[i]) / M));
        inv[i] = T(1) / so[i];
    }
    for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < I; ++i) yo[r * I + i] = xo[r * I + i] * inv[i];
}

// The gradient's coefficient on x for a group of M elements with scale s = eps + rms, from
// d = sum(dy * x): d / (s M rms), as sum(dy * y) = d / s. A zero group has no gradient on it.
inline double backward_coef(double d, double s, double M) {
    const double rms = s - ops::normalize_eps;
    return rms > 0 ? d / s / (M * rms) : 0.0;
}

// dxo from xo, dyo and the scales so of one [R, I] slab.
template <Scalar T>
void normalize_backward_slab(const T* xo, const T* dyo, const T* so, int64_t R, int64_t I, T* dxo) {
    const auto M = double(R);
    if (I == 1) {
        const double s = so[0];
        const T c = T(backward_coef(double(packet::dot(dyo, xo, R)), s, M)), inv = T(1 / s);
        for (int64_t r = 0; r < R; ++r) dxo[r] = (dyo[r] - xo[r] * c) * inv;
        return;
    }
    T* c = thread_scratch<T>(size_t(2 * I));
    T* inv = c + I;
    sum_products(dyo, xo, R, I, c);
    for (int64_t i = 0; i < I; ++i) {
        const double s = so[i];
        c[i] = T(backward_coef(double(c[i]), s, M));
        inv[i] = T(1 / s);
    }
    for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < I; ++i) dxo[r * I + i] = (dyo[r * I + i] - xo[r * I + i] * c[i]) * inv[i];
}
}  // namespace detail

// y = normalize(x); `scale` (optional, one per group) receives eps + rms for backward.
// Contiguous layouts [outer, reduced, inner] accumulate in T: at most a few thousand terms
// per group, well inside float's accuracy for the tolerances the golden tests hold.
template <Scalar T>
void normalize_forward(CpuBackend, const CpuTensor<T>& x, ops::Dims dims, CpuTensor<T>& y,
                       CpuTensor<T>* scale = nullptr) {
    const auto L = ops::normalize_forward_layout(x.shape(), y.shape(), dims);
    CpuTensor<T> s(Shape{L.groups()});
    const T* px = x.data();
    T *py = y.data(), *ps = s.data();
    const int64_t R = L.reduced, I = L.inner;
    const auto M = double(R);
    if (L.contiguous()) {
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
        for (int64_t o = 0; o < L.outer; ++o) detail::normalize_slab(px + o * R * I, R, I, py + o * R * I, ps + o * I);
    } else {
        std::vector<double> acc(static_cast<std::size_t>(L.groups()), 0.0);
        detail::for_each_grouped(L, x.numel(), [&](int64_t g, int64_t e) { acc[size_t(g)] += double(px[e]) * px[e]; });
        for (size_t g = 0; g < acc.size(); ++g) ps[g] = T(ops::normalize_eps + std::sqrt(acc[g] / M));
        detail::for_each_grouped(L, x.numel(), [&](int64_t g, int64_t e) { py[e] = px[e] / ps[g]; });
    }
    if (scale) *scale = s;
}

// dx from x, the upstream dy and the per-group scale saved by forward.
template <Scalar T>
void normalize_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, ops::Dims dims,
                        const CpuTensor<T>& scale_tensor, CpuTensor<T>& dx) {
    const auto L = ops::normalize_backward_layout(x.shape(), dy.shape(), dx.shape(), scale_tensor.numel(), dims);
    const std::span<const T> scale(scale_tensor.data(), size_t(scale_tensor.numel()));
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    const int64_t R = L.reduced, I = L.inner;
    const auto M = double(R);
    if (L.contiguous()) {
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
        for (int64_t o = 0; o < L.outer; ++o)
            detail::normalize_backward_slab(px + o * R * I, pdy + o * R * I, scale.data() + o * I, R, I,
                                            pdx + o * R * I);
    } else {
        std::vector<double> d(scale.size(), 0.0);
        detail::for_each_grouped(L, x.numel(), [&](int64_t g, int64_t e) { d[size_t(g)] += double(pdy[e]) * px[e]; });
        for (size_t g = 0; g < d.size(); ++g) d[g] = detail::backward_coef(d[g], scale[g], M);
        detail::for_each_grouped(L, x.numel(), [&](int64_t g, int64_t e) {
            const double s = scale[size_t(g)];
            pdx[e] = T((pdy[e] - px[e] * d[size_t(g)]) / s);
        });
    }
}

// ---- on 16-bit storage --------------------------------------------------------------------
// Layouts other than contiguous ones (none of the network's) go to half_storage.hpp's
// generic kernels, which widen the whole tensors.

template <HalfStorage A>
void normalize_forward(CpuBackend b, const CpuTensor<A>& x, ops::Dims dims, CpuTensor<A>& y,
                       CpuTensor<float>* scale = nullptr) {
    const auto L = ops::normalize_forward_layout(x.shape(), y.shape(), dims);
    const int64_t R = L.reduced, I = L.inner;
    if (!L.contiguous()) return mpnet::normalize_forward<CpuBackend, A>(b, x, dims, y, scale);
    CpuTensor<float> s(Shape{L.groups()});
    const A* px = x.data();
    A* py = y.data();
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
    for (int64_t o = 0; o < L.outer; ++o) {
        float* slab = detail::widened_buffer(size_t(R * I));  // x, then y in place
        detail::widen(px + o * R * I, slab, R * I);
        detail::normalize_slab(slab, R, I, slab, s.data() + o * I);
        detail::narrow(slab, py + o * R * I, R * I);
    }
    if (scale) *scale = s;
}

template <HalfStorage A>
void normalize_backward(CpuBackend b, const CpuTensor<A>& x, const CpuTensor<A>& dy, ops::Dims dims,
                        const CpuTensor<float>& scale, CpuTensor<A>& dx) {
    const auto L = ops::normalize_backward_layout(x.shape(), dy.shape(), dx.shape(), scale.numel(), dims);
    const int64_t R = L.reduced, I = L.inner;
    if (!L.contiguous()) return mpnet::normalize_backward<CpuBackend, A>(b, x, dy, dims, scale, dx);
    const A *px = x.data(), *pdy = dy.data();
    A* pdx = dx.data();
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
    for (int64_t o = 0; o < L.outer; ++o) {
        float *xs = detail::widened_buffer(size_t(2 * R * I)), *dys = xs + R * I;
        detail::widen(px + o * R * I, xs, R * I);
        detail::widen(pdy + o * R * I, dys, R * I);
        detail::normalize_backward_slab(xs, dys, scale.data() + o * I, R, I, dys);  // dx over dy
        detail::narrow(dys, pdx + o * R * I, R * I);
    }
}

}  // namespace mpnet::cpu
