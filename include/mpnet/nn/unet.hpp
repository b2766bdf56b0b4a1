// UNet: the EDM2 denoiser network F(x, c_noise, labels), forward and backward.
//
// Activations are stored as A (T, or a 16-bit format with T = float: x in and F out are A);
// the noise and label embedding and every parameter stay in T.
#pragma once
#include <cmath>
#include <optional>
#include <vector>

#include "mpnet/nn/block.hpp"
#include "mpnet/nn/mp_fourier.hpp"

namespace mpnet::nn {

template <Scalar T, Backend B, Element A = T>
class UNet {
public:
    using TensorT = Tensor<T, B>;
    using TensorA = Tensor<A, B>;
    using Conv = MPConv<T, B, A>;
    using Linear = MPConv<T, B>;

    // Parameters ~ N(0, 1) and gains 0, drawn from `seed` (see initialize()).
    UNet(const NetworkConfig& cfg, uint64_t seed)
        : cfg_(cfg), layout_(unet_layout(cfg)), out_gain(Shape{}),
          emb_fourier(cfg.cnoise(), rng::substream(seed, 1)), emb_noise(cfg.cnoise(), cfg.cemb(), 0),
          enc_conv(layout_.enc.front().in, layout_.enc.front().out, 3),
          out_conv(cfg.cblock()[0], cfg.img_channels, 3) {
        if (cfg.label_dim) emb_label.emplace(cfg.label_dim, cfg.cemb(), 0);
        for (size_t i = 1; i < layout_.enc.size(); ++i) enc.emplace_back(layout_.enc[i], cfg);
        for (const auto& spec : layout_.dec) dec.emplace_back(spec, cfg);
        // Each block draws its dropout mask from its own substream of the network's seed.
        for (size_t i = 0; i < enc.size(); ++i) enc[i].share_dropout_seed(dropout_.with_stream(i));
        for (size_t i = 0; i < dec.size(); ++i) dec[i].share_dropout_seed(dropout_.with_stream(enc.size() + i));
    }

    struct Context {
        TensorT c_noise, fourier, emb_pre_silu;
        typename Linear::Context emb_noise, emb_label;
        typename Conv::Context enc_conv, out_conv;
        std::vector<typename Block<T, B, A>::Context> enc, dec;
        std::vector<Shape> skip_shapes;  // of each decoder block's skip input
        std::vector<Shape> main_shapes;  // of each decoder block's main input before mp_cat
        bool has_labels = false;
    };

    [[nodiscard]] const NetworkConfig& config() const { return cfg_; }

    // Sets the dropout seed a training forward without one in its ForwardMode uses (by
    // kernels: a graph replayed after this call sees the new seed).
    void set_dropout_seed(uint64_t seed) const { dropout_.set(seed); }

    void force_normalize() {
        for_each_conv([](auto& c) { c.force_normalize(); });
        for (auto& b : enc) b.force_normalize();
        for (auto& b : dec) b.force_normalize();
    }

    // x [N, img_channels, R, R], c_noise [N], labels [N, label_dim] (ignored when unconditional).
    TensorA forward(const TensorA& x, const TensorT& c_noise, const TensorT& labels, const ForwardMode& mode,
                    Context* ctx = nullptr) const {
        Context local;
        Context& s = ctx ? *ctx : local;
        if (mode.training && cfg_.dropout > 0 && mode.dropout_seed) set_dropout_seed(*mode.dropout_seed);
        const ForwardMode block_mode{mode.training, std::nullopt, mode.weights_normalized};
        const TensorT emb = embedding(c_noise, labels, ctx);
        TensorA h(Shape{x.size(0), x.size(1) + 1, x.size(2), x.size(3)});
        append_ones_channel(B{}, x, h);
        std::vector<TensorA> skips;
        h = enc_conv.forward(h, 1, ctx ? &s.enc_conv : nullptr);
        skips.push_back(h);
        s.enc.resize(enc.size());
        s.dec.resize(dec.size());
        s.skip_shapes.assign(dec.size(), Shape{});
        s.main_shapes.assign(dec.size(), Shape{});
        for (size_t i = 0; i < enc.size(); ++i) {
            h = enc[i].forward(h, emb, block_mode, ctx ? &s.enc[i] : nullptr);
            skips.push_back(h);
        }
        for (size_t i = 0; i < dec.size(); ++i) {
            if (dec[i].spec().takes_skip) {
                const TensorA& skip = skips.back();
                TensorA cat(Shape{h.size(0), h.size(1) + skip.size(1), h.size(2), h.size(3)});
                mp_cat_forward(B{}, h, skip, cfg_.concat_balance, cat);
                s.main_shapes[i] = h.shape(), s.skip_shapes[i] = skip.shape();
                skips.pop_back();
                h = cat;
            }
            h = dec[i].forward(h, emb, block_mode, ctx ? &s.dec[i] : nullptr);
        }
        return out_conv.forward(h, out_gain.value, ctx ? &s.out_conv : nullptr);
    }

    // Accumulates every parameter gradient from dF (the input gradient is not formed).
    void backward(const TensorA& dF, const Context& s) {
        TensorA dh = out_conv.backward(dF, s.out_conv, &out_gain.grad_to_accumulate());
        TensorT demb = TensorT::zeros(s.emb_pre_silu.shape());
        std::vector<TensorA> dskips;  // gradients of the skip stack, in pop order
        for (size_t i = dec.size(); i-- > 0;) {
            dh = dec[i].backward(dh, s.dec[i], demb);
            if (dec[i].spec().takes_skip) {
                TensorA dmain(s.main_shapes[i]), dskip(s.skip_shapes[i]);
                mp_cat_backward(B{}, dh, cfg_.concat_balance, dmain, dskip);
                dskips.push_back(dskip);
                dh = dmain;
            }
        }
        // The decoder popped the skip stack from the top, so walking it backwards met the
        // bottom first: dskips[0] is the enc_conv output's, dskips[i + 1] encoder block i's.
        for (size_t i = enc.size(); i-- > 0;) {
            axpby(B{}, T(1), dskips[i + 1], T(1), dh);
            dh = enc[i].backward(dh, s.enc[i], demb);
        }
        axpby(B{}, T(1), dskips[0], T(1), dh);
        enc_conv.backward(dh, s.enc_conv, nullptr, false);
        embedding_backward(demb, s);
    }

    template <class F>
    void visit(F&& f) {
        f("unet.out_gain", out_gain);
        emb_noise.visit("unet.emb_noise", f);
        if (emb_label) emb_label->visit("unet.emb_label", f);
        enc_conv.visit("unet.enc." + layout_.enc.front().name, f);
        for (auto& b : enc) b.visit("unet.enc." + b.spec().name, f);
        for (auto& b : dec) b.visit("unet.dec." + b.spec().name, f);
        out_conv.visit("unet.out_conv", f);
    }
    template <class F>
    void visit_buffers(F&& f) {
        emb_fourier.visit_buffers("unet.emb_fourier", f);
    }

private:
    // emb = mp_silu(mp_sum(emb_noise(fourier(c_noise)), emb_label(labels sqrt(label_dim)), label_balance))
    TensorT embedding(const TensorT& c_noise, const TensorT& labels, Context* ctx) const {
        TensorT f = emb_fourier.forward(c_noise);
        TensorT e = emb_noise.forward(f, 1, ctx ? &ctx->emb_noise : nullptr);
        const bool has_labels = emb_label.has_value();
        if (has_labels) {
            check(labels.size(0) == c_noise.numel() && labels.shape().numel_from(1) == cfg_.label_dim,
                  "UNet: labels ", labels.shape(), " for ", c_noise.numel(), " images of ", cfg_.label_dim,
                  " classes");
            TensorT scaled(labels.shape());
            affine(B{}, labels, T(std::sqrt(double(cfg_.label_dim))), T(0), scaled);
            TensorT l = emb_label->forward(scaled, 1, ctx ? &ctx->emb_label : nullptr);
            mp_sum_forward(B{}, e, l, cfg_.label_balance, e);
        }
        if (ctx) ctx->c_noise = c_noise, ctx->fourier = f, ctx->emb_pre_silu = e, ctx->has_labels = has_labels;
        TensorT emb(e.shape());
        mp_silu_forward(B{}, e, emb);
        return emb;
    }

    void embedding_backward(const TensorT& demb, const Context& s) {
        TensorT de(demb.shape());
        mp_silu_backward(B{}, s.emb_pre_silu, demb, de);
        if (s.has_labels) {
            TensorT dnoise(de.shape()), dlabel(de.shape());
            mp_sum_backward(B{}, de, cfg_.label_balance, dnoise, dlabel);
            emb_label->backward(dlabel, s.emb_label, nullptr, false);
            de = dnoise;
        }
        emb_noise.backward(de, s.emb_noise, nullptr, false);
    }

    template <class F>
    void for_each_conv(F&& f) {
        f(emb_noise);
        f(enc_conv);
        f(out_conv);
        if (emb_label) f(*emb_label);
    }

    NetworkConfig cfg_;
    UNetLayout layout_;
    DropoutSeed<B> dropout_;

public:
    Param<T, B> out_gain;
    MPFourier<T, B> emb_fourier;
    Linear emb_noise;
    std::optional<Linear> emb_label;
    Conv enc_conv;
    std::vector<Block<T, B, A>> enc, dec;
    Conv out_conv;
};

}  // namespace mpnet::nn
