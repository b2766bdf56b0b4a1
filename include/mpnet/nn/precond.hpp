// Precond: the EDM preconditioning around the U-Net, and the learned uncertainty head.
//
//   D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4, labels)
//   logvar(sigma) = logvar_linear(logvar_fourier(ln(sigma)/4))
//
// A is the U-Net's activation storage (T, or float16 / bfloat16 with T = float): c_in x is
// rounded to A on the way in and F widened to T on the way out, as the reference casts
// around its half-precision U-Net; D, the loss and every parameter stay in T.
#pragma once
#include <cmath>

#include "mpnet/nn/param_arena.hpp"
#include "mpnet/nn/unet.hpp"

namespace mpnet::nn {

template <Scalar T, Backend B, Element A = T>
class Precond {
public:
    using TensorT = Tensor<T, B>;

    // Gradients::none builds a network for inference: no gradient buffer (half the memory);
    // a backward pass through it still works, allocating per-parameter gradients.
    enum class Gradients { flat, none };

    explicit Precond(const NetworkConfig& cfg, uint64_t seed = 0, Gradients gradients = Gradients::flat)
        : cfg_((cfg.validate(), cfg)), unet(cfg, rng::substream(seed, 100)),
          logvar_fourier(cfg.logvar_channels, rng::substream(seed, 2)), logvar_linear(cfg.logvar_channels, 1, 0) {
        // The arena is built here, once every module exists, rather than threaded through the
        // module constructors: modules keep declaring plain Params, and the one list visit()
        // walks decides the layout, as it decides the names.
        arena_ = ParamArena<T, B>(*this, gradients == Gradients::flat);
        initialize(seed);
    }

    [[nodiscard]] const NetworkConfig& config() const { return cfg_; }

    struct Context {
        typename UNet<T, B, A>::Context unet;
        typename MPConv<T, B>::Context logvar;
        TensorT c_out;  // [N]
    };
    struct Output {
        TensorT D, logvar;  // [N, C, H, W] and [N] (logvar only when asked for)
    };

    // x [N, C, H, W]; sigma [N]; labels [N, label_dim] or empty (zero labels, as the reference).
    // Training mode first applies forced weight normalisation (unless mode says it was
    // applied); ctx keeps what backward needs.
    Output forward(const TensorT& x, const TensorT& sigma, const TensorT& labels, const ForwardMode& mode,
                   bool want_logvar, Context* ctx = nullptr) {
        check(x.rank() == 4 && x.size(1) == cfg_.img_channels && x.size(2) == cfg_.img_resolution &&
                  x.size(3) == cfg_.img_resolution,
              "Precond: input ", x.shape(), " does not fit a network of ", cfg_.img_channels, "x",
              cfg_.img_resolution, "x", cfg_.img_resolution, " images");
        check(sigma.numel() == x.size(0), "Precond: ", sigma.numel(), " sigmas for ", x.size(0), " images");
        if (mode.training && !mode.weights_normalized) force_normalize();
        const int64_t n = x.size(0);
        // The coefficients of each image, computed on the backend from sigma (no host round trip).
        TensorT c_skip(Shape{n}), c_out(Shape{n}), c_in(Shape{n}), c_noise(Shape{n});
        precond_coefficients(B{}, sigma.view(Shape{n}), cfg_.sigma_data, c_skip, c_out, c_in, c_noise);
        const TensorT lab = labels.empty() && cfg_.label_dim ? TensorT::zeros(Shape{n, cfg_.label_dim}) : labels;
        TensorT x_in(x.shape());
        scale_images(x, c_in, x_in);
        TensorT F = converted<T>(unet.forward(converted<A>(x_in), c_noise, lab, mode, ctx ? &ctx->unet : nullptr));
        Output o{TensorT(x.shape()), TensorT()};
        scale_images(x, c_skip, o.D);
        scale_images(F, c_out, F);
        axpby(B{}, T(1), F, T(1), o.D);
        if (want_logvar)
            o.logvar = logvar_linear.forward(logvar_fourier.forward(c_noise), 1, ctx ? &ctx->logvar : nullptr).view(Shape{n});
        if (ctx) ctx->c_out = c_out;
        return o;
    }

    // dD [N, C, H, W] and dlogvar [N] (may be empty) -> accumulated parameter gradients.
    void backward(const TensorT& dD, const TensorT& dlogvar, const Context& ctx) {
        TensorT dF(dD.shape());
        scale_images(dD, ctx.c_out, dF);
        unet.backward(converted<A>(dF), ctx.unet);
        if (!dlogvar.empty()) logvar_linear.backward(dlogvar.view(Shape{dlogvar.numel(), 1}), ctx.logvar, nullptr, false);
    }

    void force_normalize() {
        unet.force_normalize();
        logvar_linear.force_normalize();
    }

    // f(name, Param&) for every trainable parameter, under the reference state_dict names.
    template <class F>
    void visit(F&& f) {
        unet.visit(f);
        logvar_linear.visit("logvar_linear", f);
    }
    // f(name, Tensor&) for the fixed Fourier buffers.
    template <class F>
    void visit_buffers(F&& f) {
        unet.visit_buffers(f);
        logvar_fourier.visit_buffers("logvar_fourier", f);
    }

    void zero_grad() { arena_.grads().set_zero(); }

    // The seed of the next training forward's dropout masks when its ForwardMode has none
    // (UNet::set_dropout_seed).
    void set_dropout_seed(uint64_t seed) const { unet.set_dropout_seed(seed); }

    // Every parameter value (and gradient) in visit order, each view 64-byte aligned.
    [[nodiscard]] const ParamArena<T, B>& arena() const { return arena_; }
    [[nodiscard]] TensorT& flat_values() { return arena_.values(); }
    [[nodiscard]] TensorT& flat_grads() { return arena_.grads(); }

private:
    // y[n] = x[n] * s[n]: a channel scaling of the [N, 1, CHW] view.
    static void scale_images(const TensorT& x, const TensorT& s, TensorT& y) {
        const Shape v{x.size(0), 1, x.shape().numel_from(1)};
        TensorT yv = y.view(v);
        scale_channels_forward(B{}, x.view(v), s, yv);
    }

    // Weights ~ N(0, 1) and gains 0, as the reference initialises them; parameter i in visit
    // order draws from its own substream.
    void initialize(uint64_t seed) {
        uint64_t index = 0;
        visit([&](const std::string& name, Param<T, B>& p) {
            const uint64_t stream = rng::substream(seed, 1000 + index++);
            if (name.ends_with("gain")) p.value.set_zero();
            else fill_normal(B{}, p.value, stream, 0);
        });
    }

    NetworkConfig cfg_;
    ParamArena<T, B> arena_;

public:
    UNet<T, B, A> unet;
    MPFourier<T, B> logvar_fourier;
    MPConv<T, B> logvar_linear;
};

}  // namespace mpnet::nn
