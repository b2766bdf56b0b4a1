// Elementwise MP primitives on the GPU: mp_silu, mp_sum, mp_cat, clip, dropout, channel
// modulation, the arithmetic of the layers and optimizer, reductions and random fills.
// Each is one pass over memory and follows the CPU kernel's formula.
//
// The kernels the layers run on activations also take 16-bit tensors (float16, bfloat16)
// natively: each element is widened on load (`ld`), computed in float and rounded on store
// (`st`), one pass over 16-bit memory; for float and double `ld` and `st` are plain reads
// and writes, so those kernels compute what they always did.
#pragma once
#include <cmath>
#include <cstdint>

#include "mpnet/backend/cuda/convert.cuh"
#include "mpnet/backend/cuda/launch.cuh"
#include "mpnet/core/rng.hpp"
#include "mpnet/ops/channel_planes.hpp"
#include "mpnet/ops/constants.hpp"
#include "mpnet/ops/kernel_checks.hpp"

namespace mpnet::cuda {

namespace detail {

template <class T>
__device__ inline T sigmoid(T x) {
    return T(1) / (T(1) + exp(-x));
}

template <class T>
struct SiluForward {
    const T* x;
    T* y;
    Compute<T> inv;
    __device__ void operator()(int64_t i) const {
        const auto v = ld(x[i]);
        st(y[i], v * sigmoid(v) * inv);
    }
};
// g * d mp_silu(v) / dv, with inv = 1 / 0.596.
template <class T>
__device__ inline T mp_silu_grad(T v, T g, T inv) {
    const T s = sigmoid(v);
    return g * s * (T(1) + v * (T(1) - s)) * inv;
}
template <class T>
struct SiluBackward {
    const T *x, *dy;
    T* dx;
    Compute<T> inv;
    __device__ void operator()(int64_t i) const { st(dx[i], mp_silu_grad(ld(x[i]), ld(dy[i]), inv)); }
};
template <class T>
struct SiluBackwardAdd {
    const T *x, *dy;
    T* dx;
    Compute<T> inv;
    __device__ void operator()(int64_t i) const { st(dx[i], ld(dx[i]) + mp_silu_grad(ld(x[i]), ld(dy[i]), inv)); }
};
// y = wa a + wb b
template <class T>
struct WeightedSum {
    const T *a, *b;
    Compute<T> wa, wb;
    T* y;
    __device__ void operator()(int64_t i) const { st(y[i], wa * ld(a[i]) + wb * ld(b[i])); }
};
// da = wa dy, db = wb dy, each skipped when null.
template <class T>
struct SplitScale {
    const T* dy;
    Compute<T> wa, wb;
    T *da, *db;
    __device__ void operator()(int64_t i) const {
        const auto g = ld(dy[i]);
        if (da) st(da[i], wa * g);
        if (db) st(db[i], wb * g);
    }
};
// Channel concatenation: per sample, the first sa elements of y come from a, the next sb from b.
template <class T>
struct CatForward {
    const T *a, *b;
    Compute<T> wa, wb;
    int64_t sa, sb;
    T* y;
    __device__ void operator()(int64_t i) const {
        const int64_t n = i / (sa + sb), j = i % (sa + sb);
        st(y[i], j < sa ? wa * ld(a[n * sa + j]) : wb * ld(b[n * sb + j - sa]));
    }
};
template <class T>
struct CatBackward {
    const T* dy;
    Compute<T> wa, wb;
    int64_t sa, sb;
    T *da, *db;
    __device__ void operator()(int64_t i) const {
        const int64_t n = i / (sa + sb), j = i % (sa + sb);
        if (j < sa) st(da[n * sa + j], wa * ld(dy[i]));
        else st(db[n * sb + j - sa], wb * ld(dy[i]));
    }
};
template <class T>
struct ClipForward {
    const T* x;
    Compute<T> lo, hi;
    T* y;
    __device__ void operator()(int64_t i) const {
        const auto v = ld(x[i]);
        st(y[i], v < lo ? lo : v > hi ? hi : v);
    }
};
template <class T>
struct ClipBackward {
    const T *x, *dy;
    Compute<T> lo, hi;
    T* dx;
    __device__ void operator()(int64_t i) const {
        const auto v = ld(x[i]);
        st(dx[i], (v >= lo && v <= hi) ? ld(dy[i]) : Compute<T>(0));
    }
};
template <class T>
struct Dropout {
    const T* x;
    double p;
    uint64_t seed;
    Compute<T> keep_scale;
    T* y;
    __device__ void operator()(int64_t i) const {
        st(y[i], rng::uniform(seed, static_cast<uint64_t>(i)) >= p ? ld(x[i]) * keep_scale : Compute<T>(0));
    }
};
// Each element derives the mask's seed from the words itself: the words are read where the
// kernel runs, so that a graph replay sees the value its launch was preceded by.
template <class T>
struct DropoutSeeded {
    const T* x;
    double p;
    const double* seed_words;
    uint64_t stream;
    Compute<T> keep_scale;
    T* y;
    __device__ void operator()(int64_t i) const {
        const uint64_t seed = rng::substream(rng::from_words(seed_words[0], seed_words[1]), stream);
        st(y[i], rng::uniform(seed, static_cast<uint64_t>(i)) >= p ? ld(x[i]) * keep_scale : Compute<T>(0));
    }
};
template <class T>
struct ScaleChannels {
    const T *x, *s;
    int64_t inner;
    T* y;
    __device__ void operator()(int64_t i) const { st(y[i], ld(x[i]) * ld(s[i / inner])); }
};
// ds[nc] = sum over the plane of dy x (one block per plane), dx = dy s.
template <class T>
__global__ void __launch_bounds__(block_size)
    scale_channels_backward_kernel(const T* x, const T* s, const T* dy, int64_t inner, T* dx, T* ds) {
    using Reduce = cub::BlockReduce<double, block_size>;
    __shared__ typename Reduce::TempStorage tmp;
    const int64_t plane = blockIdx.x;
    const auto k = ld(s[plane]);
    double acc = 0;
    for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
        const int64_t e = plane * inner + j;
        const auto g = ld(dy[e]);
        acc += double(g) * ld(x[e]);
        st(dx[e], g * k);
    }
    const double total = Reduce(tmp).Sum(acc);
    if (threadIdx.x == 0) st(ds[plane], Compute<T>(total));
}
// y = [x, 1] per sample: sx elements of x, then `plane` ones.
template <class T>
struct AppendOnes {
    const T* x;
    int64_t sx, plane;
    T* y;
    __device__ void operator()(int64_t i) const {
        const int64_t n = i / (sx + plane), j = i % (sx + plane);
        st(y[i], j < sx ? ld(x[n * sx + j]) : Compute<T>(1));
    }
};
template <class T>
struct Axpby {
    Compute<T> alpha;
    const T* x;
    Compute<T> beta;
    T* y;
    __device__ void operator()(int64_t i) const { st(y[i], alpha * ld(x[i]) + beta * ld(y[i])); }
};
template <class T>
struct AxpbyStaged {
    const T* a;  // [alpha, beta], read by every thread
    const T* x;
    T* y;
    __device__ void operator()(int64_t i) const { y[i] = a[0] * x[i] + a[1] * y[i]; }
};
template <class T>
struct Affine {
    const T* x;
    T alpha, beta;
    T* y;
    __device__ void operator()(int64_t i) const { y[i] = alpha * x[i] + beta; }
};
// y = x s[0] / divisor, the scale read on the device.
template <class T>
struct ScaleByScalar {
    const T *x, *s;
    double divisor;
    T* y;
    __device__ void operator()(int64_t i) const { y[i] = T(double(*s) / divisor) * x[i] + T(0); }
};
// y[0] += T(*sum / divisor): one thread.
template <class T>
__global__ void add_quotient_kernel(const double* sum, double divisor, T* y) {
    *y += T(*sum / divisor);
}
template <class T>
struct ClearNonfinite {
    T* x;
    __device__ void operator()(int64_t i) const {
        if (!isfinite(x[i])) x[i] = T(0);
    }
};
template <class T>
struct PrecondCoefficients {
    const T* sigma;
    double sd;
    T *skip, *out, *in, *noise;
    __device__ void operator()(int64_t i) const {
        const double s = sigma[i];
        skip[i] = T(sd * sd / (s * s + sd * sd));
        out[i] = T(s * sd / sqrt(s * s + sd * sd));
        in[i] = T(1 / sqrt(sd * sd + s * s));
        noise[i] = T(log(s) / 4);
    }
};
template <class T>
struct Value {
    const T* x;
    __device__ double operator()(int64_t i) const { return double(x[i]); }
};
template <class T>
struct Product {
    const T *a, *b;
    __device__ double operator()(int64_t i) const { return double(a[i]) * double(b[i]); }
};
// mean + std * sample in double, without contraction into an FMA, then rounded to T: the
// same arithmetic as the CPU's fill_normal.
template <class T>
struct FillNormal {
    T* x;
    uint64_t seed, offset;
    double mean, std;
    __device__ void operator()(int64_t i) const {
        x[i] = T(__dadd_rn(mean, __dmul_rn(std, rng::normal(seed, offset + static_cast<uint64_t>(i)))));
    }
};
template <class T>
struct FillUniform {
    T* x;
    uint64_t seed, offset;
    __device__ void operator()(int64_t i) const { x[i] = T(rng::uniform(seed, offset + static_cast<uint64_t>(i))); }
};
template <class T>
struct Fill {
    T* x;
    T value;
    __device__ void operator()(int64_t i) const { x[i] = value; }
};

}  // namespace detail

// ---- mp_silu -------------------------------------------------------------------------
template <Element T>
void mp_silu_forward(CudaBackend, const CudaTensor<T>& x, CudaTensor<T>& y) {
    using C = detail::Compute<T>;
    check_same_shape(x, y, "mp_silu_forward");
    detail::for_each(x.numel(), detail::SiluForward<T>{x.data(), y.data(), C(1 / ops::silu_scale)},
                     "mp_silu_forward on ", x.shape());
}

template <Element T>
void mp_silu_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& dy, CudaTensor<T>& dx) {
    using C = detail::Compute<T>;
    check_same_shape(x, dy, "mp_silu_backward");
    check_same_shape(x, dx, "mp_silu_backward");
    detail::for_each(x.numel(), detail::SiluBackward<T>{x.data(), dy.data(), dx.data(), C(1 / ops::silu_scale)},
                     "mp_silu_backward on ", x.shape());
}

// dx += mp_silu'(x) dy.
template <Element T>
void mp_silu_backward_add(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& dy, CudaTensor<T>& dx) {
    using C = detail::Compute<T>;
    check_same_shape(x, dy, "mp_silu_backward_add");
    check_same_shape(x, dx, "mp_silu_backward_add");
    detail::for_each(x.numel(), detail::SiluBackwardAdd<T>{x.data(), dy.data(), dx.data(), C(1 / ops::silu_scale)},
                     "mp_silu_backward_add on ", x.shape());
}

// ---- mp_sum --------------------------------------------------------------------------
template <Element T>
void mp_sum_forward(CudaBackend, const CudaTensor<T>& a, const CudaTensor<T>& b, double t, CudaTensor<T>& y) {
    using C = detail::Compute<T>;
    check_same_shape(a, b, "mp_sum_forward");
    check_same_shape(a, y, "mp_sum_forward");
    const auto w = ops::mp_sum_weights(t);
    detail::for_each(a.numel(), detail::WeightedSum<T>{a.data(), b.data(), C(w.wa), C(w.wb), y.data()},
                     "mp_sum_forward on ", a.shape());
}

// da and db may be empty when that gradient is not wanted.
template <Element T>
void mp_sum_backward(CudaBackend, const CudaTensor<T>& dy, double t, CudaTensor<T>& da, CudaTensor<T>& db) {
    using C = detail::Compute<T>;
    ops::check_mp_sum_backward(dy, da, db);
    const auto w = ops::mp_sum_weights(t);
    detail::for_each(dy.numel(), detail::SplitScale<T>{dy.data(), C(w.wa), C(w.wb), da.data(), db.data()},
                     "mp_sum_backward on ", dy.shape());
}

// ---- mp_cat along channels (dim 1) ---------------------------------------------------
template <Element T>
void mp_cat_forward(CudaBackend, const CudaTensor<T>& a, const CudaTensor<T>& b, double t, CudaTensor<T>& y) {
    using C = detail::Compute<T>;
    const auto e = ops::cat_extents(a.shape(), b.shape(), y.shape(), "mp_cat_forward");
    const auto w = ops::mp_cat_weights(t, double(e.ca), double(e.cb));
    detail::for_each(y.numel(),
                     detail::CatForward<T>{a.data(), b.data(), C(w.wa), C(w.wb), e.ca * e.inner, e.cb * e.inner,
                                           y.data()},
                     "mp_cat_forward on ", a.shape(), " + ", b.shape());
}

template <Element T>
void mp_cat_backward(CudaBackend, const CudaTensor<T>& dy, double t, CudaTensor<T>& da, CudaTensor<T>& db) {
    using C = detail::Compute<T>;
    const auto e = ops::cat_extents(da.shape(), db.shape(), dy.shape(), "mp_cat_backward");
    const auto w = ops::mp_cat_weights(t, double(e.ca), double(e.cb));
    detail::for_each(dy.numel(),
                     detail::CatBackward<T>{dy.data(), C(w.wa), C(w.wb), e.ca * e.inner, e.cb * e.inner, da.data(),
                                            db.data()},
                     "mp_cat_backward on ", dy.shape());
}

// ---- clip ----------------------------------------------------------------------------
template <Element T>
void clip_forward(CudaBackend, const CudaTensor<T>& x, double limit, CudaTensor<T>& y) {
    using C = detail::Compute<T>;
    check_same_shape(x, y, "clip_forward");
    detail::for_each(x.numel(), detail::ClipForward<T>{x.data(), C(-limit), C(limit), y.data()}, "clip_forward on ",
                     x.shape());
}

// The gradient passes where the input lies inside [-limit, limit] (ends included).
template <Element T>
void clip_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& dy, double limit, CudaTensor<T>& dx) {
    using C = detail::Compute<T>;
    check_same_shape(x, dy, "clip_backward");
    check_same_shape(x, dx, "clip_backward");
    detail::for_each(x.numel(), detail::ClipBackward<T>{x.data(), dy.data(), C(-limit), C(limit), dx.data()},
                     "clip_backward on ", x.shape());
}

// ---- dropout: element i is kept iff uniform(seed, i) >= p; kept values scale by 1/(1-p).
template <Element T>
void dropout_apply(CudaBackend, const CudaTensor<T>& x, double p, uint64_t seed, CudaTensor<T>& y) {
    using C = detail::Compute<T>;
    check_same_shape(x, y, "dropout_apply");
    detail::for_each(x.numel(), detail::Dropout<T>{x.data(), p, seed, C(1 / (1 - p)), y.data()}, "dropout_apply on ",
                     x.shape());
}

template <Element T>
void dropout_apply(CudaBackend, const CudaTensor<T>& x, double p, const CudaTensor<double>& seed_words,
                   uint64_t stream, CudaTensor<T>& y) {
    using C = detail::Compute<T>;
    check_same_shape(x, y, "dropout_apply");
    check(seed_words.numel() == 2, "dropout_apply: the seed is 2 words, not ", seed_words.shape());
    detail::for_each(x.numel(),
                     detail::DropoutSeeded<T>{x.data(), p, seed_words.data(), stream, C(1 / (1 - p)), y.data()},
                     "dropout_apply on ", x.shape());
}

// ---- modulation: y[n, c, ...] = x[n, c, ...] * s[n, c] --------------------------------
template <Element T>
void scale_channels_forward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& s, CudaTensor<T>& y) {
    const auto p = ops::channel_planes(x.shape(), s.shape(), y.shape(), "scale_channels_forward");
    detail::for_each(x.numel(), detail::ScaleChannels<T>{x.data(), s.data(), p.inner, y.data()},
                     "scale_channels_forward on ", x.shape());
}

template <Element T>
void scale_channels_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& s, const CudaTensor<T>& dy,
                             CudaTensor<T>& dx, CudaTensor<T>& ds) {
    const auto p =
        ops::channel_planes(x.shape(), s.shape(), dy.shape(), dx.shape(), ds.shape(), "scale_channels_backward");
    if (p.planes == 0) return;
    detail::scale_channels_backward_kernel<<<unsigned(p.planes), detail::block_size, 0, current_stream()>>>(
        x.data(), s.data(), dy.data(), p.inner, dx.data(), ds.data());
    launch_check("scale_channels_backward on ", x.shape());
}

// ---- y = mp_silu(x * s[n, c]) -----------------------------------------------------------
// Composed of the modulation and mp_silu kernels (two passes; the CPU backend fuses them).
template <Element T>
void modulated_silu_forward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& s, CudaTensor<T>& y) {
    ops::channel_planes(x.shape(), s.shape(), y.shape(), "modulated_silu_forward");
    scale_channels_forward(CudaBackend{}, x, s, y);
    mp_silu_forward(CudaBackend{}, y, y);
}

// With g = mp_silu'(x s) dy: dx = g s and ds[n, c] = sum over the plane of g x. dx may alias dy.
template <Element T>
void modulated_silu_backward(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& s, const CudaTensor<T>& dy,
                             CudaTensor<T>& dx, CudaTensor<T>& ds) {
    ops::channel_planes(x.shape(), s.shape(), dy.shape(), dx.shape(), ds.shape(), "modulated_silu_backward");
    CudaTensor<T> g(x.shape());
    scale_channels_forward(CudaBackend{}, x, s, g);
    mp_silu_backward(CudaBackend{}, g, dy, g);
    scale_channels_backward(CudaBackend{}, x, s, g, dx, ds);
}

// ---- y = [x, 1]: appends a constant-one channel (the U-Net's input) ---------------------
template <Element T>
void append_ones_channel(CudaBackend, const CudaTensor<T>& x, CudaTensor<T>& y) {
    ops::check_append_ones(x.shape(), y.shape());
    const int64_t sx = x.shape().numel_from(1), plane = x.shape().numel_from(2);
    detail::for_each(y.numel(), detail::AppendOnes<T>{x.data(), sx, plane, y.data()}, "append_ones_channel on ",
                     x.shape());
}

// ---- arithmetic ----------------------------------------------------------------------
// y = alpha * x + beta * y
template <Scalar T>
void axpby(CudaBackend, T alpha, const CudaTensor<T>& x, T beta, CudaTensor<T>& y) {
    check_same_shape(x, y, "axpby");
    detail::for_each(x.numel(), detail::Axpby<T>{alpha, x.data(), beta, y.data()}, "axpby on ", x.shape());
}
// 16-bit x and y, the coefficients in float.
template <HalfStorage A>
void axpby(CudaBackend, float alpha, const CudaTensor<A>& x, float beta, CudaTensor<A>& y) {
    check_same_shape(x, y, "axpby");
    detail::for_each(x.numel(), detail::Axpby<A>{alpha, x.data(), beta, y.data()}, "axpby on ", x.shape());
}

// y = a[0] x + a[1] y with the coefficients a two-element tensor on the device, so that a
// replayed graph reads the ones staged for its step (train/step_runner.hpp).
template <Scalar T>
void axpby_staged(CudaBackend, const CudaTensor<T>& a, const CudaTensor<T>& x, CudaTensor<T>& y) {
    check(a.numel() == 2, "axpby_staged: the coefficients must have two elements, got ", a.shape());
    check_same_shape(x, y, "axpby_staged");
    detail::for_each(x.numel(), detail::AxpbyStaged<T>{a.data(), x.data(), y.data()}, "axpby_staged on ", x.shape());
}

// y = alpha * x + beta (elementwise affine)
template <Scalar T>
void affine(CudaBackend, const CudaTensor<T>& x, T alpha, T beta, CudaTensor<T>& y) {
    check_same_size(x, y, "affine");
    detail::for_each(x.numel(), detail::Affine<T>{x.data(), alpha, beta, y.data()}, "affine on ", x.shape());
}

// Sum over all elements, accumulated in double (synchronises the stream).
template <Scalar T>
double sum(CudaBackend, const CudaTensor<T>& x) {
    return detail::reduce_sum(x.numel(), detail::Value<T>{x.data()}, "sum on ", x.shape());
}

template <Scalar T>
double dot(CudaBackend, const CudaTensor<T>& a, const CudaTensor<T>& b) {
    check_same_shape(a, b, "dot");
    return detail::reduce_sum(a.numel(), detail::Product<T>{a.data(), b.data()}, "dot on ", a.shape());
}

// y = x s[0] / divisor, with s a one-element tensor (a gain) read on the device.
template <Scalar T>
void scale_by_scalar(CudaBackend, const CudaTensor<T>& x, const CudaTensor<T>& s, double divisor, CudaTensor<T>& y) {
    check_same_size(x, y, "scale_by_scalar");
    check(s.numel() == 1, "scale_by_scalar: the scale must have one element, got ", s.shape());
    detail::for_each(x.numel(), detail::ScaleByScalar<T>{x.data(), s.data(), divisor, y.data()},
                     "scale_by_scalar on ", x.shape());
}

// y[0] += dot(a, b) / divisor, the sum staying on the device (a gain's gradient).
template <Scalar T>
void dot_accumulate(CudaBackend, const CudaTensor<T>& a, const CudaTensor<T>& b, double divisor, CudaTensor<T>& y) {
    check_same_shape(a, b, "dot_accumulate");
    check(y.numel() == 1, "dot_accumulate: the output must have one element, got ", y.shape());
    const DeviceBuffer<double> sum =
        detail::reduce_on_device(a.numel(), detail::Product<T>{a.data(), b.data()}, "dot_accumulate on ", a.shape());
    detail::add_quotient_kernel<T><<<1, 1, 0, current_stream()>>>(sum.data(), divisor, y.data());
    launch_check("dot_accumulate on ", a.shape());
}

// Replaces NaN and +-inf by zero, reading nothing back.
template <Scalar T>
void clear_nonfinite(CudaBackend, CudaTensor<T>& x) {
    detail::for_each(x.numel(), detail::ClearNonfinite<T>{x.data()}, "clear_nonfinite on ", x.shape());
}

// EDM2's preconditioning per image, as the CPU computes it (backend/cpu/elementwise.hpp).
template <Scalar T>
void precond_coefficients(CudaBackend, const CudaTensor<T>& sigma, double sigma_data, CudaTensor<T>& c_skip,
                          CudaTensor<T>& c_out, CudaTensor<T>& c_in, CudaTensor<T>& c_noise) {
    for (const CudaTensor<T>* c : {&c_skip, &c_out, &c_in, &c_noise}) check_same_size(sigma, *c, "precond_coefficients");
    detail::for_each(sigma.numel(),
                     detail::PrecondCoefficients<T>{sigma.data(), sigma_data, c_skip.data(), c_out.data(), c_in.data(),
                                                    c_noise.data()},
                     "precond_coefficients on ", sigma.shape());
}

// Fills x with N(mean, std^2) samples: element i is normal(seed, offset + i), the CPU's stream.
template <Scalar T>
void fill_normal(CudaBackend, CudaTensor<T>& x, uint64_t seed, uint64_t offset, double mean = 0, double std = 1) {
    detail::for_each(x.numel(), detail::FillNormal<T>{x.data(), seed, offset, mean, std}, "fill_normal on ",
                     x.shape());
}

template <Scalar T>
void fill_uniform(CudaBackend, CudaTensor<T>& x, uint64_t seed, uint64_t offset) {
    detail::for_each(x.numel(), detail::FillUniform<T>{x.data(), seed, offset}, "fill_uniform on ", x.shape());
}

template <Scalar T>
void fill(CudaBackend, CudaTensor<T>& x, T value) {
    detail::for_each(x.numel(), detail::Fill<T>{x.data(), value}, "fill on ", x.shape());
}

}  // namespace mpnet::cuda
