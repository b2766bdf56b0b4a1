// Kernels<B>: every kernel a backend provides, with its exact signature, in one list.
//
// Kernels are free functions in the backend's namespace whose first parameter is the tag
// (`mp_silu_forward(CpuBackend{}, x, y)`), found by argument-dependent lookup; the layers
// call them as `op(B{}, ...)` and never name a backend. Each backend's umbrella header
// (backend/cpu/cpu.hpp, backend/cuda/cuda.cuh) ends with static_assert(Kernels<...>), so a
// missing or mis-typed kernel is reported there, naming the call that fails, instead of
// deep inside a layer that instantiates it.
#pragma once
#include <concepts>
#include <cstdint>
#include <vector>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/ops/attention_context.hpp"
#include "mpnet/ops/reduce_dims.hpp"
#include "mpnet/ops/resample_mode.hpp"

namespace mpnet {

namespace detail {
// An argument that converts to V and to nothing else, so that a kernel declaring a float
// where the list says double (or an int where it says int64_t) does not satisfy Kernels.
// Only declared: it appears in unevaluated requirements alone.
template <class V>
struct Exactly {
    template <std::same_as<V> U>
    operator U() const;
};
}  // namespace detail

// The kernels for one element type. Parameters named like inputs (x, a, dy, ...) are const
// tensors, outputs (y, dx, ...) are mutable; T-typed scalars are plain T because they take
// part in deducing T. Each group names the header that implements it in every backend.
template <class B, class T>
concept KernelsFor = requires(B b, const Tensor<T, B>& x, const Tensor<T, B>& a, const Tensor<T, B>& dy,
                              const Tensor<T, B>& s, Tensor<T, B>& y, Tensor<T, B>& dx, Tensor<T, B>& db,
                              Tensor<T, B>& ds, Tensor<T, B>* scale, Tensor<double, B>& total,
                              const Tensor<double, B>& words, const Tensor<double, B>& step_coefficients,
                              ops::AttentionContext<T, B>* ctx,
                              const ops::AttentionContext<T, B>& saved, T alpha, T beta,
                              detail::Exactly<double> t, detail::Exactly<uint64_t> seed,
                              detail::Exactly<int64_t> count, detail::Exactly<ops::Dims> dims,
                              detail::Exactly<std::vector<double>> filter, detail::Exactly<ops::Resample> mode) {
    // elementwise: mp_silu, mp_sum, mp_cat, clip, dropout, channel scaling, arithmetic
    { mp_silu_forward(b, x, y) } -> std::same_as<void>;
    { mp_silu_backward(b, x, dy, dx) } -> std::same_as<void>;
    { mp_silu_backward_add(b, x, dy, dx) } -> std::same_as<void>;          // dx += mp_silu'(x) dy
    { modulated_silu_forward(b, x, s, y) } -> std::same_as<void>;          // y = mp_silu(x s[n, c])
    { modulated_silu_backward(b, x, s, dy, dx, ds) } -> std::same_as<void>;
    { mp_sum_forward(b, x, a, t, y) } -> std::same_as<void>;
    { mp_sum_backward(b, dy, t, dx, db) } -> std::same_as<void>;           // either gradient may be empty
    { mp_cat_forward(b, x, a, t, y) } -> std::same_as<void>;
    { mp_cat_backward(b, dy, t, dx, db) } -> std::same_as<void>;
    { clip_forward(b, x, t, y) } -> std::same_as<void>;
    { clip_backward(b, x, dy, t, dx) } -> std::same_as<void>;
    { dropout_apply(b, x, t, seed, y) } -> std::same_as<void>;             // probability, mask seed
    { dropout_apply(b, x, t, words, seed, y) } -> std::same_as<void>;      // mask seed: substream(words, seed)
    { scale_channels_forward(b, x, s, y) } -> std::same_as<void>;          // y = x s[n, c]
    { scale_channels_backward(b, x, s, dy, dx, ds) } -> std::same_as<void>;
    { append_ones_channel(b, x, y) } -> std::same_as<void>;
    { axpby(b, alpha, x, beta, y) } -> std::same_as<void>;                 // y = alpha x + beta y
    { axpby_staged(b, a, x, y) } -> std::same_as<void>;                    // y = a[0] x + a[1] y, a on the backend
    { affine(b, x, alpha, beta, y) } -> std::same_as<void>;                // y = alpha x + beta
    { scale_by_scalar(b, x, s, t, y) } -> std::same_as<void>;             // y = x s[0] / t
    { dot_accumulate(b, x, a, t, y) } -> std::same_as<void>;              // y[0] += dot(x, a) / t
    { clear_nonfinite(b, y) } -> std::same_as<void>;                      // NaN, inf -> 0, nothing read back
    { precond_coefficients(b, x, t, y, dx, db, ds) } -> std::same_as<void>;  // sigma -> c_skip, c_out, c_in, c_noise
    { sum(b, x) } -> std::same_as<double>;
    { dot(b, x, a) } -> std::same_as<double>;
    { fill_normal(b, y, seed, seed) } -> std::same_as<void>;               // seed, offset
    { fill_normal(b, y, seed, seed, t, t) } -> std::same_as<void>;         // ..., mean, std
    { fill_uniform(b, y, seed, seed) } -> std::same_as<void>;
    { fill(b, y, alpha) } -> std::same_as<void>;
    // normalize: the forward optionally saves one scale per group for the backward
    { normalize_forward(b, x, dims, y) } -> std::same_as<void>;
    { normalize_forward(b, x, dims, y, scale) } -> std::same_as<void>;
    { normalize_backward(b, x, dy, dims, s, dx) } -> std::same_as<void>;
    // conv: convolution and linear layer; the backward writes dx (may be empty) and dweight
    { conv2d_forward(b, x, a, y) } -> std::same_as<void>;
    { conv2d_backward(b, x, a, dy, dx, db) } -> std::same_as<void>;
    { linear_forward(b, x, a, y) } -> std::same_as<void>;
    { linear_backward(b, x, a, dy, dx, db) } -> std::same_as<void>;
    // resample: 2x up or down with a separable filter
    { resample_forward(b, x, filter, mode, y) } -> std::same_as<void>;
    { resample_backward(b, dy, filter, mode, dx) } -> std::same_as<void>;
    // attention: the core with `count` heads; the forward saves its context when given one
    { attention_forward(b, x, count, y, ctx) } -> std::same_as<void>;
    { attention_forward(b, x, count, y, nullptr) } -> std::same_as<void>;
    { attention_backward(b, saved, count, dy, dx) } -> std::same_as<void>;
    // fourier: MPFourier features of x (frequencies a, phases s)
    { mp_fourier_forward(b, x, a, s, y) } -> std::same_as<void>;
    { mp_fourier_backward(b, x, a, s, dy, dx) } -> std::same_as<void>;
    // loss: the EDM2 loss (sigma_data, scale) with its gradients dD and dlogvar; returns the sum,
    // or writes it to a one-element double tensor
    { edm2_loss(b, x, a, s, s, t, t, dx, db) } -> std::same_as<double>;
    { edm2_loss(b, x, a, s, s, t, t, dx, db, total) } -> std::same_as<void>;  // the sum kept on the backend
    // adam: param, grad, m, v, the step's [lr, 1 - beta1^t, 1 - beta2^t] on the backend, beta1, beta2, eps
    { adam_step(b, y, x, dx, db, step_coefficients, t, t, t) } -> std::same_as<void>;
};

// A backend with its memory (Backend) and every kernel, in float and in double.
template <class B>
concept Kernels = Backend<B> && KernelsFor<B, float> && KernelsFor<B, double>;

}  // namespace mpnet
