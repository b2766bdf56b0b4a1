// MPConv: a magnitude-preserving convolution or linear layer with weight normalisation.
//
//   w_eff = normalize(weight) * gain / sqrt(fan_in);  y = conv2d(x, w_eff)  or  x w_eff^T
//
// In training mode, forced weight normalisation first overwrites the stored weight with
// normalize(weight) (outside the gradient), which keeps its magnitude fixed through training.
#pragma once
#include <cmath>
#include <string>

#include "mpnet/nn/param.hpp"
#include "mpnet/ops/reduce_dims.hpp"

namespace mpnet::nn {

template <Scalar T, Backend B>
class MPConv {
public:
    using TensorT = Tensor<T, B>;

    // kernel = 0 makes a linear layer with weight [out, in].
    MPConv(int64_t in_channels, int64_t out_channels, int64_t kernel)
        : in_(in_channels), out_(out_channels), kernel_(kernel),
          weight(kernel ? Shape{out_channels, in_channels, kernel, kernel} : Shape{out_channels, in_channels}) {}

    struct Context {
        TensorT x, w_normed, w_scale;  // input, normalize(weight), its per-channel eps + rms
        double gain = 1;
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

    // ctx == nullptr is inference: nothing is kept.
    TensorT forward(const TensorT& x, double gain, Context* ctx = nullptr) const {
        TensorT w_normed(weight.value.shape()), w_scale;
        normalize_forward(B{}, weight.value, ops::Dims::all_but_first(), w_normed, ctx ? &w_scale : nullptr);
        TensorT w_eff(weight.value.shape());
        affine(B{}, w_normed, T(gain / std::sqrt(double(fan_in()))), T(0), w_eff);
        TensorT y(output_shape(x.shape()));
        if (kernel_) conv2d_forward(B{}, x, w_eff, y);
        else linear_forward(B{}, x, w_eff, y);
        if (ctx) *ctx = Context{x, w_normed, w_scale, gain};
        return y;
    }

    // Accumulates the weight gradient into weight.grad; returns dx (empty if !need_dx);
    // *dgain (if given) receives dL/dgain.
    TensorT backward(const TensorT& dy, const Context& ctx, double* dgain = nullptr, bool need_dx = true) {
        const double k = ctx.gain / std::sqrt(double(fan_in()));
        TensorT w_eff(weight.value.shape()), dw_eff(weight.value.shape());
        affine(B{}, ctx.w_normed, T(k), T(0), w_eff);
        TensorT dx = need_dx ? TensorT(ctx.x.shape()) : TensorT();
        if (kernel_) conv2d_backward(B{}, ctx.x, w_eff, dy, dx, dw_eff);
        else linear_backward(B{}, ctx.x, w_eff, dy, dx, dw_eff);
        if (dgain) *dgain = dot(B{}, dw_eff, ctx.w_normed) / std::sqrt(double(fan_in()));
        affine(B{}, dw_eff, T(k), T(0), dw_eff);  // gradient w.r.t. normalize(weight)
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
    int64_t in_, out_, kernel_;

public:
    Param<T, B> weight;
};

}  // namespace mpnet::nn
