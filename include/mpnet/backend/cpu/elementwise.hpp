// Elementwise MP primitives on the CPU: mp_silu, mp_sum, mp_cat, clip, dropout and the
// small arithmetic the layers and the optimizer need. Each forward has its backward
// beside it.
//
// The kernels the network runs on activations (Element T) also take tensors stored in 16
// bits: they then compute in float on chunks widened in L1 and round each result once
// (half_chunks.hpp), reading and writing 16-bit memory once.
#pragma once
#include <algorithm>
#include <cmath>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/half_chunks.hpp"
#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/ops/channel_planes.hpp"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cpu {

namespace detail {
template <class F>
inline void for_each_index(int64_t n, F&& f) {
#pragma omp parallel for schedule(static) if (n > parallel_grain)
    for (int64_t i = 0; i < n; ++i) f(i);
}

// Calls f(begin, count) on consecutive blocks of [0, n), the blocks split among the threads.
template <class F>
inline void for_each_block(int64_t n, F&& f) {
    constexpr int64_t block = 4096;
    const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (n > parallel_grain)
    for (int64_t b = 0; b < blocks; ++b) f(b * block, std::min(block, n - b * block));
}

// 1 / (1 + exp(-x)) on a packet, as accurate as Eigen's vectorised exp (a few ulp) for
// every x; Eigen's logistic() is faster but loses relative accuracy where it is small
// (7e-4 near x = -9).
template <class P>
inline P sigmoid(const P& x) {
    using namespace Eigen::internal;
    const P one = pset1<P>(typename unpacket_traits<P>::type(1));
    return pdiv(one, padd(one, pexp(pnegate(x))));
}
}  // namespace detail

// ---- mp_silu: x sigmoid(x) / 0.596 on SIMD packets ------------------------------------
template <Element T>
void mp_silu_forward(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    check_same_shape(x, y, "mp_silu_forward");
    using namespace Eigen::internal;
    using P = packet::Packet<Compute<T>>;
    const T* px = x.data();
    T* py = y.data();
    const P inv = pset1<P>(Compute<T>(1 / ops::silu_scale));
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        packet::transform(n, py + b, [&](P v) { return pmul(pmul(v, detail::sigmoid(v)), inv); }, px + b);
    });
}

namespace detail {
// g * d mp_silu(v) / dv = g s (1 + v (1 - s)) / 0.596 with s = sigmoid(v).
template <class P>
inline P mp_silu_grad(const P& v, const P& g) {
    using namespace Eigen::internal;
    using T = typename unpacket_traits<P>::type;
    const P one = pset1<P>(T(1)), inv = pset1<P>(T(1 / ops::silu_scale));
    const P s = sigmoid(v);
    return pmul(pmul(pmul(g, s), pmadd(v, psub(one, s), one)), inv);
}
}  // namespace detail

template <Element T>
void mp_silu_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, CpuTensor<T>& dx) {
    check_same_shape(x, dy, "mp_silu_backward");
    check_same_shape(x, dx, "mp_silu_backward");
    using P = packet::Packet<Compute<T>>;
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        packet::transform(n, pdx + b, [](P v, P g) { return detail::mp_silu_grad(v, g); }, px + b, pdy + b);
    });
}

// dx += mp_silu'(x) dy: for an input that also feeds another path, without a temporary.
template <Element T>
void mp_silu_backward_add(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, CpuTensor<T>& dx) {
    check_same_shape(x, dy, "mp_silu_backward_add");
    check_same_shape(x, dx, "mp_silu_backward_add");
    using P = packet::Packet<Compute<T>>;
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        packet::transform(
            n, pdx + b, [](P v, P g, P acc) { return Eigen::internal::padd(detail::mp_silu_grad(v, g), acc); },
            px + b, pdy + b, pdx + b);
    });
}

// ---- mp_sum --------------------------------------------------------------------------
template <Element T>
void mp_sum_forward(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b, double t, CpuTensor<T>& y) {
    check_same_shape(a, b, "mp_sum_forward");
    check_same_shape(a, y, "mp_sum_forward");
    using C = Compute<T>;
    const auto w = ops::mp_sum_weights(t);
    const C wa = C(w.wa), wb = C(w.wb);
    const T *pa = a.data(), *pb = b.data();
    T* py = y.data();
    detail::for_each_block(a.numel(), [&](int64_t i, int64_t n) {
        detail::map(n, py + i, [=](C u, C v) { return wa * u + wb * v; }, pa + i, pb + i);
    });
}

// da and db may be empty when that gradient is not wanted.
template <Element T>
void mp_sum_backward(CpuBackend, const CpuTensor<T>& dy, double t, CpuTensor<T>& da, CpuTensor<T>& db) {
    ops::check_mp_sum_backward(dy, da, db);
    using C = Compute<T>;
    const auto w = ops::mp_sum_weights(t);
    const C wa = C(w.wa), wb = C(w.wb);
    const T* pdy = dy.data();
    T *pda = da.data(), *pdb = db.data();
    detail::for_each_block(dy.numel(), [&](int64_t b, int64_t n) {  // one loop per output keeps both vectorised
        if (pda) detail::map(n, pda + b, [=](C g) { return wa * g; }, pdy + b);
        if (pdb) detail::map(n, pdb + b, [=](C g) { return wb * g; }, pdy + b);
    });
}

// ---- mp_cat along channels (dim 1) ---------------------------------------------------
template <Element T>
void mp_cat_forward(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b, double t, CpuTensor<T>& y) {
    const auto e = ops::cat_extents(a.shape(), b.shape(), y.shape(), "mp_cat_forward");
    const int64_t n = e.n, ca = e.ca, cb = e.cb, inner = e.inner;
    using C = Compute<T>;
    const auto w = ops::mp_cat_weights(t, double(ca), double(cb));
    const C wa = C(w.wa), wb = C(w.wb);
    const int64_t sa = ca * inner, sb = cb * inner;
#pragma omp parallel for schedule(static) if (n * (sa + sb) > parallel_grain)
    for (int64_t i = 0; i < n; ++i) {
        const T* pa = a.data() + i * sa;
        const T* pb = b.data() + i * sb;
        T* py = y.data() + i * (sa + sb);
        detail::map(sa, py, [=](C v) { return wa * v; }, pa);
        detail::map(sb, py + sa, [=](C v) { return wb * v; }, pb);
    }
}

template <Element T>
void mp_cat_backward(CpuBackend, const CpuTensor<T>& dy, double t, CpuTensor<T>& da, CpuTensor<T>& db) {
    const auto e = ops::cat_extents(da.shape(), db.shape(), dy.shape(), "mp_cat_backward");
    const int64_t n = e.n, ca = e.ca, cb = e.cb, inner = e.inner;
    using C = Compute<T>;
    const auto w = ops::mp_cat_weights(t, double(ca), double(cb));
    const C wa = C(w.wa), wb = C(w.wb);
    const int64_t sa = ca * inner, sb = cb * inner;
#pragma omp parallel for schedule(static) if (n * (sa + sb) > parallel_grain)
    for (int64_t i = 0; i < n; ++i) {
        const T* pdy = dy.data() + i * (sa + sb);
        T* pa = da.data() + i * sa;
        T* pb = db.data() + i * sb;
        detail::map(sa, pa, [=](C g) { return wa * g; }, pdy);
        detail::map(sb, pb, [=](C g) { return wb * g; }, pdy + sa);
    }
}

// ---- clip ----------------------------------------------------------------------------
// Written as min/max and a mask multiply so that the loops vectorise.
template <Element T>
void clip_forward(CpuBackend, const CpuTensor<T>& x, double limit, CpuTensor<T>& y) {
    check_same_shape(x, y, "clip_forward");
    using C = Compute<T>;
    const C lo = C(-limit), hi = C(limit);
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        detail::map(n, py + b, [=](C v) { return std::min(std::max(v, lo), hi); }, px + b);
    });
}

// The gradient passes where the input lies inside [-limit, limit] (ends included).
template <Element T>
void clip_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& dy, double limit, CpuTensor<T>& dx) {
    check_same_shape(x, dy, "clip_backward");
    check_same_shape(x, dx, "clip_backward");
    using C = Compute<T>;
    const C lo = C(-limit), hi = C(limit);
    const T *px = x.data(), *pdy = dy.data();
    T* pdx = dx.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        detail::map(n, pdx + b, [=](C v, C g) { return (v >= lo && v <= hi) ? g : C(0); }, px + b, pdy + b);
    });
}

// ---- dropout: element i is kept iff uniform(seed, i) >= p; kept values scale by 1/(1-p).
// The mask is recomputed from (seed) in backward, so nothing is stored.
template <Scalar T>
void dropout_apply(CpuBackend, const CpuTensor<T>& x, double p, uint64_t seed, CpuTensor<T>& y) {
    check_same_shape(x, y, "dropout_apply");
    const T keep_scale = T(1 / (1 - p));
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_index(x.numel(), [&](int64_t i) {
        py[i] = rng::uniform(seed, static_cast<uint64_t>(i)) >= p ? px[i] * keep_scale : T(0);
    });
}

// The same, with the mask's seed rng::substream(seed, stream), where the seed is read from
// `seed_words` (rng::to_words) on the backend: a replayed CUDA graph changes it by kernels.
template <Scalar T>
void dropout_apply(CpuBackend, const CpuTensor<T>& x, double p, const CpuTensor<double>& seed_words, uint64_t stream,
                   CpuTensor<T>& y) {
    check(seed_words.numel() == 2, "dropout_apply: the seed is 2 words, not ", seed_words.shape());
    const double* w = seed_words.data();
    dropout_apply(CpuBackend{}, x, p, rng::substream(rng::from_words(w[0], w[1]), stream), y);
}

// ---- modulation: y[n, c, ...] = x[n, c, ...] * s[n, c] --------------------------------
template <Scalar T>
void scale_channels_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, CpuTensor<T>& y) {
    const auto p = ops::channel_planes(x.shape(), s.shape(), y.shape(), "scale_channels_forward");
    const int64_t nc = p.planes, inner = p.inner;
#pragma omp parallel for schedule(static) if (nc * inner > parallel_grain)
    for (int64_t i = 0; i < nc; ++i) {
        const T k = s.data()[i];
        for (int64_t j = 0; j < inner; ++j) y.data()[i * inner + j] = x.data()[i * inner + j] * k;
    }
}

template <Scalar T>
void scale_channels_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, const CpuTensor<T>& dy,
                             CpuTensor<T>& dx, CpuTensor<T>& ds) {
    const auto p =
        ops::channel_planes(x.shape(), s.shape(), dy.shape(), dx.shape(), ds.shape(), "scale_channels_backward");
    const int64_t nc = p.planes, inner = p.inner;
#pragma omp parallel for schedule(static) if (nc * inner > parallel_grain)
    for (int64_t i = 0; i < nc; ++i) {
        const T *pdy = dy.data() + i * inner, *px = x.data() + i * inner;
        ds.data()[i] = packet::dot(pdy, px, inner);  // before dx is written: dx may alias dy
        const T k = s.data()[i];
        T* pdx = dx.data() + i * inner;
        for (int64_t j = 0; j < inner; ++j) pdx[j] = pdy[j] * k;
    }
}

// ---- y = mp_silu(x * s[n, c]): the Block's modulation and activation in one pass -------
// Backward recomputes x * s, so the product is never stored.
template <Element T>
void modulated_silu_forward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, CpuTensor<T>& y) {
    const auto p = ops::channel_planes(x.shape(), s.shape(), y.shape(), "modulated_silu_forward");
    const int64_t nc = p.planes, inner = p.inner;
    using namespace Eigen::internal;
    using P = packet::Packet<Compute<T>>;
    const P inv = pset1<P>(Compute<T>(1 / ops::silu_scale));
#pragma omp parallel for schedule(static) if (nc * inner > parallel_grain)
    for (int64_t i = 0; i < nc; ++i) {
        const P k = pset1<P>(widened(s.data()[i]));
        packet::transform(
            inner, y.data() + i * inner,
            [&](P v) {
                const P m = pmul(v, k);
                return pmul(pmul(m, detail::sigmoid(m)), inv);
            },
            x.data() + i * inner);
    }
}

// With g = mp_silu'(x s) dy: dx = g s and ds[n, c] = sum over the plane of g x. dx may alias dy.
template <Element T>
void modulated_silu_backward(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, const CpuTensor<T>& dy,
                             CpuTensor<T>& dx, CpuTensor<T>& ds) {
    const auto p =
        ops::channel_planes(x.shape(), s.shape(), dy.shape(), dx.shape(), ds.shape(), "modulated_silu_backward");
    const int64_t nc = p.planes, inner = p.inner;
    using namespace Eigen::internal;
    using P = packet::Packet<Compute<T>>;
#pragma omp parallel for schedule(static) if (nc * inner > parallel_grain)
    for (int64_t i = 0; i < nc; ++i) {
        const T *px = x.data() + i * inner, *pdy = dy.data() + i * inner;
        T* pdx = dx.data() + i * inner;
        const P k = pset1<P>(widened(s.data()[i]));
        P acc = pset1<P>(Compute<T>(0));
        packet::transform(
            inner, pdx,
            [&](P v, P d) {
                const P g = detail::mp_silu_grad(pmul(v, k), d);
                acc = pmadd(g, v, acc);  // the zero-padded tail adds nothing
                return pmul(g, k);
            },
            px, pdy);
        ds.data()[i] = stored<T>(predux(acc));
    }
}

// ---- y = [x, 1]: appends a constant-one channel (the U-Net's input) ---------------------
template <Scalar T>
void append_ones_channel(CpuBackend, const CpuTensor<T>& x, CpuTensor<T>& y) {
    ops::check_append_ones(x.shape(), y.shape());
    const int64_t n = x.size(0), sx = x.shape().numel_from(1), plane = x.shape().numel_from(2);
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

// The same on 16-bit storage, with float coefficients as the generic kernel has them
// (backend/half_storage.hpp), which this one overrides.
template <HalfStorage A>
void axpby(CpuBackend, float alpha, const CpuTensor<A>& x, float beta, CpuTensor<A>& y) {
    check_same_shape(x, y, "axpby");
    const A* px = x.data();
    A* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        detail::map(n, py + b, [=](float u, float v) { return alpha * u + beta * v; }, px + b, py + b);
    });
}

// y = a[0] x + a[1] y with the coefficients a two-element tensor on the backend: a step's
// coefficients staged before a replayed CUDA graph runs it (train/step_runner.hpp). The
// same arithmetic as axpby, so the two agree bit for bit.
template <Scalar T>
void axpby_staged(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& x, CpuTensor<T>& y) {
    check(a.numel() == 2, "axpby_staged: the coefficients must have two elements, got ", a.shape());
    axpby(CpuBackend{}, a.data()[0], x, a.data()[1], y);
}

// y = alpha * x + beta (elementwise affine)
template <Scalar T>
void affine(CpuBackend, const CpuTensor<T>& x, T alpha, T beta, CpuTensor<T>& y) {
    check_same_size(x, y, "affine");
    const T* px = x.data();
    T* py = y.data();
    detail::for_each_index(x.numel(), [&](int64_t i) { py[i] = alpha * px[i] + beta; });
}

// y = x s[0] / divisor, with s a one-element tensor (a gain) read by the kernel rather than
// passed from the host.
template <Scalar T>
void scale_by_scalar(CpuBackend, const CpuTensor<T>& x, const CpuTensor<T>& s, double divisor, CpuTensor<T>& y) {
    check_same_size(x, y, "scale_by_scalar");
    check(s.numel() == 1, "scale_by_scalar: the scale must have one element, got ", s.shape());
    affine(CpuBackend{}, x, T(double(s.data()[0]) / divisor), T(0), y);
}

// Sum over all elements, accumulated in double.
template <Scalar T>
double sum(CpuBackend, const CpuTensor<T>& x) {
    mpnet::detail::note_host_read();
    const T* px = x.data();
    return deterministic_sum(x.numel(), [&](int64_t i) { return double(px[i]); });
}

namespace detail {
template <Scalar T>
double dot_value(const CpuTensor<T>& a, const CpuTensor<T>& b) {
    check_same_shape(a, b, "dot");
    const T *pa = a.data(), *pb = b.data();
    return deterministic_sum(a.numel(), [&](int64_t i) { return double(pa[i]) * pb[i]; });
}
}  // namespace detail

template <Scalar T>
double dot(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b) {
    mpnet::detail::note_host_read();
    return detail::dot_value(a, b);
}

// y[0] += dot(a, b) / divisor, the sum staying on the backend (a gain's gradient).
template <Scalar T>
void dot_accumulate(CpuBackend, const CpuTensor<T>& a, const CpuTensor<T>& b, double divisor, CpuTensor<T>& y) {
    check(y.numel() == 1, "dot_accumulate: the output must have one element, got ", y.shape());
    y.data()[0] += T(detail::dot_value(a, b) / divisor);
}

// Replaces NaN and +-inf by zero, reading nothing back.
template <Scalar T>
void clear_nonfinite(CpuBackend, CpuTensor<T>& x) {
    T* px = x.data();
    detail::for_each_index(x.numel(), [&](int64_t i) {
        if (!std::isfinite(px[i])) px[i] = T(0);
    });
}

// EDM2's preconditioning per image (docs/math.md): c_skip = sd^2 / (s^2 + sd^2),
// c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(sd^2 + s^2), c_noise = ln(s) / 4.
template <Scalar T>
void precond_coefficients(CpuBackend, const CpuTensor<T>& sigma, double sigma_data, CpuTensor<T>& c_skip,
                          CpuTensor<T>& c_out, CpuTensor<T>& c_in, CpuTensor<T>& c_noise) {
    for (const CpuTensor<T>* c : {&c_skip, &c_out, &c_in, &c_noise}) check_same_size(sigma, *c, "precond_coefficients");
    const double sd = sigma_data;
    for (int64_t i = 0; i < sigma.numel(); ++i) {
        const double s = sigma.data()[i];
        c_skip.data()[i] = T(sd * sd / (s * s + sd * sd));
        c_out.data()[i] = T(s * sd / std::sqrt(s * s + sd * sd));
        c_in.data()[i] = T(1 / std::sqrt(sd * sd + s * s));
        c_noise.data()[i] = T(std::log(s) / 4);
    }
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
