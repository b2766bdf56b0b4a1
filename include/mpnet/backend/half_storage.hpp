// The kernels on activations stored in 16 bits (float16, bfloat16), for any backend that
// converts between float and the storage type (`convert(b, x, y)` in each direction).
//
// Each kernel widens its inputs to float, runs the backend's float kernel and rounds its
// outputs once on store: the reference's semantics for half-precision activations (PyTorch
// computes a half op in float and rounds its result), and a CPU reference for any faster
// kernel a backend adds for a storage type. Such a kernel overrides the one here by being
// more specialised (its backend named instead of deduced). Outputs the float kernel
// accumulates into (mp_silu_backward_add) are widened first; outputs a kernel may be asked
// to skip (empty gradients) stay empty. Scalar parameters keep the float kernels' types.
//
// The overloads live in namespace mpnet, where argument-dependent lookup finds them from
// the storage type, so the layers call them as they call every kernel: `op(B{}, ...)`.
#pragma once
#include <concepts>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mpnet/core/tensor.hpp"
#include "mpnet/ops/attention_context.hpp"
#include "mpnet/ops/reduce_dims.hpp"
#include "mpnet/ops/resample_mode.hpp"

namespace mpnet {

// x as a tensor of To: x itself when the element types agree, else converted (the layers'
// passage between float parameters or embeddings and 16-bit activations).
template <Element To, Element From, Backend B>
Tensor<To, B> converted(const Tensor<From, B>& x) {
    if constexpr (std::same_as<To, From>) {
        return x;
    } else {
        Tensor<To, B> y(x.shape());
        if (!x.empty()) convert(B{}, x, y);
        return y;
    }
}

namespace half_storage {

template <Backend B, HalfStorage A>
Tensor<float, B> widen(const Tensor<A, B>& x) {
    return converted<float>(x);
}

// Where a kernel writes y: a float tensor of y's shape, empty where y is.
template <Backend B, HalfStorage A>
Tensor<float, B> output_for(const Tensor<A, B>& y) {
    return y.empty() ? Tensor<float, B>() : Tensor<float, B>(y.shape());
}

template <Backend B, HalfStorage A>
void narrow(const Tensor<float, B>& f, Tensor<A, B>& y) {
    if (!y.empty()) convert(B{}, f, y);
}

template <Backend B, HalfStorage A>
Tensor<A, B> narrowed(const Tensor<float, B>& f) {
    return converted<A>(f);
}

// Runs `kernel` on a float stand-in for each output and rounds it into the output: the
// stand-in starts uninitialised (written), or as the output widened (accumulated into).
template <Backend B, HalfStorage A, class Kernel>
void into(Tensor<A, B>& y, Kernel&& kernel) {
    auto f = output_for(y);
    kernel(f);
    narrow(f, y);
}
template <Backend B, HalfStorage A, class Kernel>
void into(Tensor<A, B>& y, Tensor<A, B>& z, Kernel&& kernel) {
    auto fy = output_for(y), fz = output_for(z);
    kernel(fy, fz);
    narrow(fy, y);
    narrow(fz, z);
}
template <Backend B, HalfStorage A, class Kernel>
void accumulate_into(Tensor<A, B>& y, Kernel&& kernel) {
    auto f = widen(y);
    kernel(f);
    narrow(f, y);
}

}  // namespace half_storage

// ---- elementwise -----------------------------------------------------------------------
template <Backend B, HalfStorage A>
void mp_silu_forward(B b, const Tensor<A, B>& x, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { mp_silu_forward(b, widen(x), f); });
}
template <Backend B, HalfStorage A>
void mp_silu_backward(B b, const Tensor<A, B>& x, const Tensor<A, B>& dy, Tensor<A, B>& dx) {
    using namespace half_storage;
    into(dx, [&](auto& f) { mp_silu_backward(b, widen(x), widen(dy), f); });
}
template <Backend B, HalfStorage A>
void mp_silu_backward_add(B b, const Tensor<A, B>& x, const Tensor<A, B>& dy, Tensor<A, B>& dx) {
    using namespace half_storage;
    accumulate_into(dx, [&](auto& f) { mp_silu_backward_add(b, widen(x), widen(dy), f); });
}
template <Backend B, HalfStorage A>
void modulated_silu_forward(B b, const Tensor<A, B>& x, const Tensor<A, B>& s, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { modulated_silu_forward(b, widen(x), widen(s), f); });
}
template <Backend B, HalfStorage A>
void modulated_silu_backward(B b, const Tensor<A, B>& x, const Tensor<A, B>& s, const Tensor<A, B>& dy,
                             Tensor<A, B>& dx, Tensor<A, B>& ds) {
    using namespace half_storage;
    into(dx, ds, [&](auto& fdx, auto& fds) { modulated_silu_backward(b, widen(x), widen(s), widen(dy), fdx, fds); });
}
template <Backend B, HalfStorage A>
void mp_sum_forward(B b, const Tensor<A, B>& x, const Tensor<A, B>& a, double t, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { mp_sum_forward(b, widen(x), widen(a), t, f); });
}
template <Backend B, HalfStorage A>
void mp_sum_backward(B b, const Tensor<A, B>& dy, double t, Tensor<A, B>& dx, Tensor<A, B>& da) {
    using namespace half_storage;
    into(dx, da, [&](auto& fdx, auto& fda) { mp_sum_backward(b, widen(dy), t, fdx, fda); });
}
template <Backend B, HalfStorage A>
void mp_cat_forward(B b, const Tensor<A, B>& x, const Tensor<A, B>& a, double t, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { mp_cat_forward(b, widen(x), widen(a), t, f); });
}
template <Backend B, HalfStorage A>
void mp_cat_backward(B b, const Tensor<A, B>& dy, double t, Tensor<A, B>& dx, Tensor<A, B>& da) {
    using namespace half_storage;
    into(dx, da, [&](auto& fdx, auto& fda) { mp_cat_backward(b, widen(dy), t, fdx, fda); });
}
template <Backend B, HalfStorage A>
void clip_forward(B b, const Tensor<A, B>& x, double limit, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { clip_forward(b, widen(x), limit, f); });
}
template <Backend B, HalfStorage A>
void clip_backward(B b, const Tensor<A, B>& x, const Tensor<A, B>& dy, double limit, Tensor<A, B>& dx) {
    using namespace half_storage;
    into(dx, [&](auto& f) { clip_backward(b, widen(x), widen(dy), limit, f); });
}
template <Backend B, HalfStorage A>
void dropout_apply(B b, const Tensor<A, B>& x, double p, uint64_t seed, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { dropout_apply(b, widen(x), p, seed, f); });
}
template <Backend B, HalfStorage A>
void dropout_apply(B b, const Tensor<A, B>& x, double p, const Tensor<double, B>& words, uint64_t stream,
                   Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { dropout_apply(b, widen(x), p, words, stream, f); });
}
template <Backend B, HalfStorage A>
void append_ones_channel(B b, const Tensor<A, B>& x, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { append_ones_channel(b, widen(x), f); });
}
// y = alpha x + beta y
template <Backend B, HalfStorage A>
void axpby(B b, float alpha, const Tensor<A, B>& x, float beta, Tensor<A, B>& y) {
    using namespace half_storage;
    accumulate_into(y, [&](auto& f) { axpby(b, alpha, widen(x), beta, f); });
}

// ---- normalize: the per-group scales stay in float ----------------------------------------
template <Backend B, HalfStorage A>
void normalize_forward(B b, const Tensor<A, B>& x, ops::Dims dims, Tensor<A, B>& y, Tensor<float, B>* scale = nullptr) {
    using namespace half_storage;
    into(y, [&](auto& f) { normalize_forward(b, widen(x), dims, f, scale); });
}
template <Backend B, HalfStorage A>
void normalize_backward(B b, const Tensor<A, B>& x, const Tensor<A, B>& dy, ops::Dims dims,
                        const Tensor<float, B>& scale, Tensor<A, B>& dx) {
    using namespace half_storage;
    into(dx, [&](auto& f) { normalize_backward(b, widen(x), widen(dy), dims, scale, f); });
}

// ---- conv: operands rounded to A, products accumulated in float --------------------------
template <Backend B, HalfStorage A>
void conv2d_forward(B b, const Tensor<A, B>& x, const Tensor<A, B>& w, Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { conv2d_forward(b, widen(x), widen(w), f); });
}
template <Backend B, HalfStorage A>
void conv2d_backward(B b, const Tensor<A, B>& x, const Tensor<A, B>& w, const Tensor<A, B>& dy, Tensor<A, B>& dx,
                     Tensor<A, B>& dw) {
    using namespace half_storage;
    into(dx, dw, [&](auto& fdx, auto& fdw) { conv2d_backward(b, widen(x), widen(w), widen(dy), fdx, fdw); });
}

// ---- resample ------------------------------------------------------------------------------
template <Backend B, HalfStorage A>
void resample_forward(B b, const Tensor<A, B>& x, const std::vector<double>& filter, ops::Resample mode,
                      Tensor<A, B>& y) {
    using namespace half_storage;
    into(y, [&](auto& f) { resample_forward(b, widen(x), filter, mode, f); });
}
template <Backend B, HalfStorage A>
void resample_backward(B b, const Tensor<A, B>& dy, const std::vector<double>& filter, ops::Resample mode,
                       Tensor<A, B>& dx) {
    using namespace half_storage;
    into(dx, [&](auto& f) { resample_backward(b, widen(dy), filter, mode, f); });
}

// ---- attention: the saved q, k, v, their scales and the softmax are stored in A, as the
// reference's half-precision attention keeps them ----------------------------------------
template <Backend B, HalfStorage A>
void attention_forward(B b, const Tensor<A, B>& x, int64_t heads, Tensor<A, B>& y,
                       std::type_identity_t<ops::AttentionContext<A, B>>* ctx) {
    using namespace half_storage;
    ops::AttentionContext<float, B> s;
    into(y, [&](auto& f) { attention_forward(b, widen(x), heads, f, ctx ? &s : nullptr); });
    if (ctx)
        *ctx = {narrowed<B, A>(s.q),       narrowed<B, A>(s.k),       narrowed<B, A>(s.v),
                narrowed<B, A>(s.q_scale), narrowed<B, A>(s.k_scale), narrowed<B, A>(s.v_scale),
                narrowed<B, A>(s.weights)};
}
template <Backend B, HalfStorage A>
void attention_backward(B b, const ops::AttentionContext<A, B>& saved, int64_t heads, const Tensor<A, B>& dy,
                        Tensor<A, B>& dx) {
    using namespace half_storage;
    const ops::AttentionContext<float, B> s{widen(saved.q),       widen(saved.k),       widen(saved.v),
                                            widen(saved.q_scale), widen(saved.k_scale), widen(saved.v_scale),
                                            widen(saved.weights)};
    into(dx, [&](auto& f) { attention_backward(b, s, heads, widen(dy), f); });
}

// The kernels a backend provides on activations stored as A, with those signatures.
template <class B, class A>
concept HalfKernelsFor = HalfStorage<A> &&
    requires(B b, const Tensor<A, B>& x, const Tensor<A, B>& a, Tensor<A, B>& y, Tensor<A, B>& dx,
             const Tensor<float, B>& xf, Tensor<float, B>& yf, Tensor<float, B>* scale,
             const Tensor<double, B>& words, ops::AttentionContext<A, B>* ctx, const ops::AttentionContext<A, B>& saved,
             double t, uint64_t seed, int64_t count, ops::Dims dims, const std::vector<double>& filter, ops::Resample mode) {
    convert(b, x, yf);
    convert(b, xf, y);
    mp_silu_forward(b, x, y);
    mp_silu_backward_add(b, x, a, dx);
    modulated_silu_forward(b, x, a, y);
    modulated_silu_backward(b, x, a, a, y, dx);
    mp_sum_forward(b, x, a, t, y);
    mp_sum_backward(b, x, t, y, dx);
    mp_cat_forward(b, x, a, t, y);
    mp_cat_backward(b, x, t, y, dx);
    clip_forward(b, x, t, y);
    clip_backward(b, x, a, t, dx);
    dropout_apply(b, x, t, words, seed, y);
    append_ones_channel(b, x, y);
    axpby(b, 1.0f, x, 1.0f, y);
    normalize_forward(b, x, dims, y, scale);
    normalize_backward(b, x, a, dims, xf, dx);
    conv2d_forward(b, x, a, y);
    conv2d_backward(b, x, a, a, y, dx);
    resample_forward(b, x, filter, mode, y);
    resample_backward(b, x, filter, mode, y);
    attention_forward(b, x, count, y, ctx);
    attention_forward(b, x, count, y, nullptr);
    attention_backward(b, saved, count, x, y);
};

// Both storage formats.
template <class B>
concept HalfKernels = HalfKernelsFor<B, float16> && HalfKernelsFor<B, bfloat16>;

}  // namespace mpnet
