// normalize(x, dims) = x / (eps + ||x||_dims / sqrt(M)) on the CPU, forward and backward.
//
// Forward saves one denominator per group (eps + rms), so backward needs only x and those:
//   dx = dy / s - y * sum(dy * y) / (M * rms),   s = eps + rms, y = x / s.
#pragma once
#include <cmath>
#include <span>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/reduce_dims.hpp"

namespace mpnet::cpu {

namespace detail {
// Calls f(group, element_offset) for each element of each group: contiguous layouts walk
// [outer, reduced, inner] directly, general layouts go through group_of.
template <class F>
void for_each_in_group(const ops::ReductionLayout& L, int64_t o, F&& f) {
    for (int64_t r = 0; r < L.reduced; ++r)
        for (int64_t i = 0; i < L.inner; ++i) f(o * L.inner + i, (o * L.reduced + r) * L.inner + i);
}
}  // namespace detail

// y = normalize(x); `scale` (optional, one per group) receives eps + rms for backward.
template <Scalar T>
void normalize_forward(CpuBackend, const CpuTensor<T>& x, ops::Dims dims, CpuTensor<T>& y,
                       CpuTensor<T>* scale = nullptr) {
    check_same_shape(x, y, "normalize_forward");
    const auto L = ops::reduction_layout(x.shape(), dims);
    std::vector<double> s(static_cast<std::size_t>(L.groups()), 0.0);
    const T* px = x.data();
    T* py = y.data();
    if (L.contiguous()) {
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
        for (int64_t o = 0; o < L.outer; ++o)
            detail::for_each_in_group(L, o, [&](int64_t g, int64_t e) { s[size_t(g)] += double(px[e]) * px[e]; });
    } else {
        for (int64_t e = 0; e < x.numel(); ++e) s[size_t(L.group_of[size_t(e)])] += double(px[e]) * px[e];
    }
    for (double& v : s) v = ops::normalize_eps + std::sqrt(v / double(L.reduced));
    if (L.contiguous()) {
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
        for (int64_t o = 0; o < L.outer; ++o)
            detail::for_each_in_group(L, o, [&](int64_t g, int64_t e) { py[e] = T(px[e] / s[size_t(g)]); });
    } else {
        for (int64_t e = 0; e < x.numel(); ++e) py[e] = T(px[e] / s[size_t(L.group_of[size_t(e)])]);
    }
    if (scale) {
        *scale = CpuTensor<T>(Shape{L.groups()});
        for (size_t g = 0; g < s.size(); ++g) scale->data()[g] = T(s[g]);
    }
}

// dx from x, the upstream dy and the per-group scale saved by forward.
template <Scalar T>
void normalize_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, ops::Dims dims,
                        const CpuTensor<T>& scale_tensor, CpuTensor<T>& dx) {
    const auto L = ops::reduction_layout(x.shape(), dims);
    const std::span<const T> scale(scale_tensor.data(), size_t(scale_tensor.numel()));
    check(scale.size() == size_t(L.groups()), "normalize_backward: ", scale.size(), " saved scales for ",
          L.groups(), " groups");
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    const auto M = double(L.reduced);
    // coef[g] = sum(dy * y) / (M * rms); y = x / s
    std::vector<double> coef(scale.size(), 0.0);
    auto group = [&](int64_t e) { return L.contiguous() ? -1 : L.group_of[size_t(e)]; };
    if (L.contiguous()) {
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
        for (int64_t o = 0; o < L.outer; ++o)
            detail::for_each_in_group(L, o, [&](int64_t g, int64_t e) { coef[size_t(g)] += double(pdy[e]) * px[e]; });
    } else {
        for (int64_t e = 0; e < x.numel(); ++e) coef[size_t(group(e))] += double(pdy[e]) * px[e];
    }
    for (size_t g = 0; g < coef.size(); ++g) {
        const double s = scale[g], rms = s - ops::normalize_eps;
        coef[g] = rms > 0 ? coef[g] / s / (M * rms) : 0.0;  // sum(dy*y)/(M rms)
    }
    auto apply = [&](int64_t g, int64_t e) {
        const double s = scale[size_t(g)];
        pdx[e] = T(pdy[e] / s - (px[e] / s) * coef[size_t(g)]);
    };
    if (L.contiguous()) {
#pragma omp parallel for schedule(static) if (x.numel() > parallel_grain)
        for (int64_t o = 0; o < L.outer; ++o) detail::for_each_in_group(L, o, apply);
    } else {
        for (int64_t e = 0; e < x.numel(); ++e) apply(group(e), e);
    }
}

}  // namespace mpnet::cpu
