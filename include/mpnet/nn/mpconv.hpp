// MPConv: a magnitude-preserving convolution or linear layer with weight normalisation.
//
//   w_eff = normalize(weight) * gain / sqrt(fan_in);  y = conv2d(x, w_eff)  or  x w_eff^T
//
// The gain is a constant of the layer (1 in most places) or a learned one-element tensor on the
// backend, which the kernels read there: a learned gain and its gradient never visit the host.
//
// In training mode, forced weight normalisation first overwrites the stored weight with
// normalize(weight) (outside the gradient), which keeps its magnitude fixed through training.
//
// A is the type activations are stored in: T itself, or a 16-bit format (core/float16.hpp).
// The weight, its normalisation and gain stay in T; w_eff is rounded to A for the product,
// as the reference casts it to the activations' dtype, and the product's weight gradient
// comes back to T before the normalisation's backward.
#pragma once
#include <cmath>
#include <concepts>
#include <string>

#include "mpnet/backend/half_storage.hpp"
#include "mpnet/nn/param.hpp"
#include "mpnet/ops/reduce_dims.hpp"

namespace mpnet::nn {

template <Scalar T, Backend B, Element A = T>
    requires std::same_as<A, T> || std::same_as<T, float>  // 16-bit activations with float weights
class MPConv {
public:
    using TensorT = Tensor<T, B>;
    using TensorA = Tensor<A, B>;

    // kernel = 0 makes a linear layer with weight [out, in].
    MPConv(int64_t in_channels, int64_t out_channels, int64_t kernel)
        : in_(in_channels), out_(out_channels), kernel_(kernel),
          weight(kernel ? Shape{out_channels, in_channels, kernel, kernel} : Shape{out_channels, in_channels}) {}

    struct Context {
        TensorA x;                     // input
        TensorT w_normed, w_scale;     // normalize(weight), its per-channel eps + rms
        TensorT gain;                  // the learned gain ([1]), or empty: then fixed_gain
        double fixed_gain = 1;
    };

    [[nodiscard]] int64_t in_channels() const { return in_; }
    [[nodiscard]] int64_t out_channels() const { return out_; }
    [[nodiscard]] int64_t kernel() const { return kernel_; }
    [[nodiscard]] int64_t fan_in() const { return in_ * (kernel_ ? kernel_ * kernel_ : 1); }
    [[nodiscard]] Shape output_shape(const Shape& x) const {
        return kernel_ ? Shape{x[0], out_, x[2], x[3]} : Shape{x[0], out_};
    }

    // weight <- normalize(weight); run before a training-mode forward.
    void force_normalize() {
        TensorT normed(weight.value.shape());
        normalize_forward(B{}, weight.value, ops::Dims::all_but_first(), normed);
        weight.value.copy_from(normed);
    }

    // ctx == nullptr is inference: nothing is kept. A fixed gain:
    TensorA forward(const TensorA& x, double gain, Context* ctx = nullptr) const {
        return forward(x, TensorT(), gain, ctx);
    }
    // A learned gain, the one-element tensor `gain`.
    TensorA forward(const TensorA& x, const TensorT& gain, Context* ctx = nullptr) const {
        return forward(x, gain, 1, ctx);
    }

    // Accumulates the weight gradient into weight.grad; returns dx (empty if !need_dx). With a
    // learned gain, dL/dgain is added to *dgain (a one-element tensor) when given.
    TensorA backward(const TensorA& dy, const Context& ctx, TensorT* dgain = nullptr, bool need_dx = true) {
        TensorT w_eff(weight.value.shape()), dw_eff(weight.value.shape());
        scale_by_gain(ctx.w_normed, ctx.gain, ctx.fixed_gain, w_eff);
        TensorA dx = need_dx ? TensorA(ctx.x.shape()) : TensorA();
        if constexpr (std::same_as<A, T>) {
            if (kernel_) conv2d_backward(B{}, ctx.x, w_eff, dy, dx, dw_eff);
            else linear_backward(B{}, ctx.x, w_eff, dy, dx, dw_eff);
        } else {
            check(kernel_ != 0, "MPConv: a linear layer takes float activations, not 16-bit ones");
            TensorA dw_rounded(weight.value.shape());
            conv2d_backward(B{}, ctx.x, converted<A>(w_eff), dy, dx, dw_rounded);
            convert(B{}, dw_rounded, dw_eff);
        }
        if (dgain) dot_accumulate(B{}, dw_eff, ctx.w_normed, std::sqrt(double(fan_in())), *dgain);
        scale_by_gain(dw_eff, ctx.gain, ctx.fixed_gain, dw_eff);  // gradient w.r.t. normalize(weight)
        TensorT dw(weight.value.shape());
        normalize_backward(B{}, weight.value, dw_eff, ops::Dims::all_but_first(), ctx.w_scale, dw);
        axpby(B{}, T(1), dw, T(1), weight.grad_to_accumulate());
        return dx;
    }

    template <class F>
    void visit(const std::string& prefix, F&& f) {
        f(join_name(prefix, "weight"), weight);
    }

private:
    TensorA forward(const TensorA& x, const TensorT& gain, double fixed_gain, Context* ctx) const {
        TensorT w_normed(weight.value.shape()), w_scale;
        normalize_forward(B{}, weight.value, ops::Dims::all_but_first(), w_normed, ctx ? &w_scale : nullptr);
        TensorT w_eff(weight.value.shape());
        scale_by_gain(w_normed, gain, fixed_gain, w_eff);
        TensorA y(output_shape(x.shape()));
        if constexpr (std::same_as<A, T>) {
            if (kernel_) conv2d_forward(B{}, x, w_eff, y);
            else linear_forward(B{}, x, w_eff, y);
        } else {
            check(kernel_ != 0, "MPConv: a linear layer takes float activations, not 16-bit ones");
            conv2d_forward(B{}, x, converted<A>(w_eff), y);
        }
        if (ctx) *ctx = Context{x, w_normed, w_scale, gain, fixed_gain};
        return y;
    }
    // y = x gain / sqrt(fan_in), the gain learned (read on the backend) or fixed.
    void scale_by_gain(const TensorT& x, const TensorT& gain, double fixed_gain, TensorT& y) const {
        if (gain.empty()) affine(B{}, x, T(fixed_gain / std::sqrt(double(fan_in()))), T(0), y);
        else scale_by_scalar(B{}, x, gain, std::sqrt(double(fan_in())), y);
    }

    int64_t in_, out_, kernel_;

public:
    Param<T, B> weight;
};

}  // namespace mpnet::nn
