// Elementwise MP primitives on the CPU: mp_silu, mp_sum, mp_cat, clip, dropout and the
// small arithmetic the layers and the optimizer need. Each forward has its backward
// beside it.
#pragma once
#include <algorithm>
#include <cmath>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/ops/constants.hpp"

namespace mpnet::cpu {

namespace detail {
template <class T>
inline T sigmoid(T x) {
    return T(1) / (T(1) + std::exp(-x));
}
template <class F>
inline void for_each_index(int64_t n, F&& f) {
#pragma omp parallel for schedule(static) if (n > parallel_grain)
    for (int64_t i = 0; i < n; ++i) f(i);
}
}  // namespace detail

// ---- mp_silu -------------------------------------------------------------------------
template <Scalar T>
void mp_silu_forward(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    check_same_shape(x, y, "mp_silu_forward");
    const T* px = x.data();
    T* py = y.data();
    const T inv = T(1 / ops::silu_scale);
    detail::for_each_index(x.numel(), [&](int64_t i) { py[i] = px[i] * detail::sigmoid(px[i]) * inv; });
}

template <Scalar T>
void mp_silu_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, CpuTensor<T>& dx) {
    check_same_shape(x, dy, "mp_silu_backward");
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    const T inv = T(1 / ops::silu_scale);
    detail::for_each_index(x.numel(), [&](int64_t i) {
        const T s = detail::sigmoid(px[i]);
        pdx[i] = pdy[i] * s * (T(1) + px[i] * (T(1) - s)) * inv;
    });
}

// ---- mp_sum --------------------------------------------------------------------------
template <Scalar T>
void mp_sum_forward(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b, double t, CpuTensor<T>& y) {
    check_same_shape(a, b, "mp_sum_forward");
    const auto w = ops::mp_sum_weights(t);
    const T wa = T(w.wa), wb = T(w.wb);
    const T *pa = a.data(), *pb = b.data();
    T* py = y.data();
    detail::for_each_index(a.numel(), [&](int64_t i) { py[i] = wa * pa[i] + wb * pb[i]; });
}

// da and db may be empty when that gradient is not wanted.
template <Scalar T>
void mp_sum_backward(CpuBackend, const CpuTensor<T>& dy, double t, CpuTensor<T>& da, CpuTensor<T>& db) {
    const auto w = ops::mp_sum_weights(t);
    const T wa = T(w.wa), wb = T(w.wb);
    const T* pdy = dy.data();
    T *pda = da.data(), *pdb = db.data();
    detail::for_each_index(dy.numel(), [&](int64_t i) {
        if (pda) pda[i] = wa * pdy[i];
        if (pdb) pdb[i] = wb * pdy[i];
    });
}

// ---- mp_cat along channels (dim 1) ---------------------------------------------------
template <Scalar T>
void mp_cat_forward(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b, double t, CpuTensor<T>& y) {
    const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), inner = a.shape().numel_from(2);
    check(b.size(0) == n && b.shape().numel_from(2) == inner && y.size(1) == ca + cb, "mp_cat_forward: shapes ",
          a.shape().str(), " + ", b.shape().str(), " -> ", y.shape().str());
    const auto w = ops::mp_cat_weights(t, double(ca), double(cb));
    const T wa = T(w.wa), wb = T(w.wb);
    const int64_t sa = ca * inner, sb = cb * inner;
#pragma omp parallel for schedule(static) if (n * (sa + sb) > parallel_grain)
    for (int64_t i = 0; i < n; ++i) {
        const T* pa = a.data() + i * sa;
        const T* pb = b.data() + i * sb;
        T* py = y.data() + i * (sa + sb);
        for (int64_t j = 0; j < sa; ++j) py[j] = wa * pa[j];
        for (int64_t j = 0; j < sb; ++j) py[sa + j] = wb * pb[j];
    }
}

template <Scalar T>
void mp_cat_backward(CpuBackend, const CpuTensor<T>& dy, double t, CpuTensor<T>& da, CpuTensor<T>& db) {
    const int64_t n = da.size(0), ca = da.size(1), cb = db.size(1), inner = da.shape().numel_from(2);
    const auto w = ops::mp_cat_weights(t, double(ca), double(cb));
    const T wa = T(w.wa), wb = T(w.wb);
    const int64_t sa = ca * inner, sb = cb * inner;
#pragma omp parallel for schedule(static) if (n * (sa + sb) > parallel_grain)
    for (int64_t i = 0; i < n; ++i) {
        const T* pdy = dy.data() + i * (sa + sb);
        T* pa = da.data() + i * sa;
        T* pb = db.data() + i * sb;
        for (int64_t j = 0; j < sa; ++j) pa[j] = wa * pdy[j];
        for (int64_t j = 0; j < sb; ++j) pb[j] = wb * pdy[sa + j];
    }
}

// ---- clip ----------------------------------------------------------------------------
template <Scalar T>
void clip_forward(CpuBackend, const CpuTensor<T>& x, double limit, CpuTensor<T>& y) {
    const T lo = T(-limit), hi = T(limit);
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_index(x.numel(), [&](int64_t i) { py[i] = std::clamp(px[i], lo, hi); });
}

// The gradient passes where the input lies inside [-limit, limit] (ends included).
template <Scalar T>
void clip_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, double limit, CpuTensor<T>& dx) {
    const T lo = T(-limit), hi = T(limit);
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    detail::for_each_index(x.numel(),
                           [&](int64_t i) { pdx[i] = (px[i] >= lo && px[i] <= hi) ? pdy[i] : T(0); });
}

// ---- dropout: element i is kept iff uniform(seed, i) >= p; kept values scale by 1/(1-p).
// The mask is recomputed from (seed) in backward, so nothing is stored.
template <Scalar T>
void dropout_apply(CpuBackend, const CpuTensor<T>& x, double p, uint64_t seed, CpuTensor<T>& y) {
    const T keep_scale = T(1 / (1 - p));
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_index(x.numel(), [&](int64_t i) {
        py[i] = rng::uniform(seed, static_cast<uint64_t>(i)) >= p ? px[i] * keep_scale : T(0);
    });
}

// ---- modulation: y[n, c, ...] = x[n, c, ...] * s[n, c] --------------------------------
template <Scalar T>
void scale_channels_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, CpuTensor<T>& y) {
    const int64_t nc = x.size(0) * x.size(1), inner = x.shape().numel_from(2);
    check(s.numel() == nc, "scale_channels_forward: scale ", s.shape().str(), " for ", x.shape().str());
#pragma omp parallel for schedule(static) if (nc * inner > parallel_grain)
    for (int64_t i = 0; i < nc; ++i) {
        const T k = s.data()[i];
        for (int64_t j = 0; j < inner; ++j) y.data()[i * inner + j] = x.data()[i * inner + j] * k;
    }
}

template <Scalar T>
void scale_channels_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, const CpuTensor<T>& dy,
                             CpuTensor<T>& dx, CpuTensor<T>& ds) {
    const int64_t nc = x.size(0) * x.size(1), inner = x.shape().numel_from(2);
#pragma omp parallel for schedule(static) if (nc * inner > parallel_grain)
    for (int64_t i = 0; i < nc; ++i) {
        const T k = s.data()[i];
        double acc = 0;
        for (int64_t j = 0; j < inner; ++j) {
            acc += double(dy.data()[i * inner + j]) * x.data()[i * inner + j];
            dx.data()[i * inner + j] = dy.data()[i * inner + j] * k;
        }
        ds.data()[i] = T(acc);
    }
}

// ---- y = [x, 1]: appends a constant-one channel (the U-Net's input) ---------------------
template <Scalar T>
void append_ones_channel(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    const int64_t n = x.size(0), sx = x.shape().numel_from(1), plane = x.shape().numel_from(2);
    check(y.size(1) == x.size(1) + 1 && y.numel() == n * (sx + plane), "append_ones_channel: ", x.shape().str(),
          " -> ", y.shape().str());
    for (int64_t i = 0; i < n; ++i) {
        std::copy(x.data() + i * sx, x.data() + (i + 1) * sx, y.data() + i * (sx + plane));
        std::fill(y.data() + i * (sx + plane) + sx, y.data() + (i + 1) * (sx + plane), T(1));
    }
}

// ---- arithmetic ----------------------------------------------------------------------
// y = alpha * x + beta * y
template <Scalar T>
void axpby(CpuBackend, T alpha, const CpuTensor<T>& x, T beta, CpuTensor<T>& y) {
    check_same_shape(x, y, "axpby");
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_index(x.numel(), [&](int64_t i) { py[i] = alpha * px[i] + beta * py[i]; });
}

// y = alpha * x + beta (elementwise affine)
template <Scalar T>
void affine(CpuBackend, const CpuTensor<T>& x, T alpha, T beta, CpuTensor<T>& y) {
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_index(x.numel(), [&](int64_t i) { py[i] = alpha * px[i] + beta; });
}

// Sum over all elements, accumulated in double.
template <Scalar T>
double sum(CpuBackend, const CpuTensor<T>& x) {
    double s = 0;
    const T* px = x.data();
    const int64_t n = x.numel();
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > parallel_grain)
    for (int64_t i = 0; i < n; ++i) s += px[i];
    return s;
}

template <Scalar T>
double dot(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b) {
    check_same_shape(a, b, "dot");
    double s = 0;
    const T *pa = a.data(), *pb = b.data();
    const int64_t n = a.numel();
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > parallel_grain)
    for (int64_t i = 0; i < n; ++i) s += double(pa[i]) * pb[i];
    return s;
}

// Replaces NaN and +-inf by zero; returns how many were replaced.
template <Scalar T>
int64_t zero_nonfinite(CpuBackend, CpuTensor<T>& x) {
    int64_t count = 0;
    T* px = x.data();
    const int64_t n = x.numel();
#pragma omp parallel for reduction(+ : count) schedule(static) if (n > parallel_grain)
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(px[i])) {
            px[i] = T(0);
            ++count;
        }
    return count;
}

// Fills x with N(mean, std^2) samples: element i is normal(seed, offset + i).
template <Scalar T>
void fill_normal(CpuBackend, CpuTensor<T>& x, uint64_t seed, uint64_t offset, double mean = 0, double std = 1) {
    T* px = x.data();
    detail::for_each_index(x.numel(), [&](int64_t i) {
        px[i] = T(mean + std * rng::normal(seed, offset + static_cast<uint64_t>(i)));
    });
}

template <Scalar T>
void fill_uniform(CpuBackend, CpuTensor<T>& x, uint64_t seed, uint64_t offset) {
    T* px = x.data();
    detail::for_each_index(x.numel(),
                           [&](int64_t i) { px[i] = T(rng::uniform(seed, offset + static_cast<uint64_t>(i))); });
}

template <Scalar T>
void fill(CpuBackend, CpuTensor<T>& x, T value) {
    std::fill(x.data(), x.data() + x.numel(), value);
}

}  // namespace mpnet::cpu
