// Block: the residual unit of the EDM2 U-Net (encoder or decoder flavour, optional
// resampling and self-attention), forward and backward.
//
//   x = resample(x);  enc: x = pixel_norm(conv_skip?(x))
//   y = conv_res1(dropout(mp_silu(conv_res0(mp_silu(x)) * (emb_linear(emb, emb_gain) + 1))))
//   dec: x = conv_skip?(x);   x = mp_sum(x, y, res_balance)
//   attention: x = mp_sum(x, attn_proj(attention(attn_qkv(x))), attn_balance)
//   x = clip(x, clip_act)
//
// Activations are stored as A (T, or a 16-bit format with T = float); the embedding, the
// modulation's linear layer and the gains stay in T, and the modulation is rounded to A
// where it meets the activations, as in the reference.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "mpnet/backend/half_storage.hpp"
#include "mpnet/nn/config.hpp"
#include "mpnet/nn/dropout_seed.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/mpconv.hpp"
#include "mpnet/ops/attention_context.hpp"
#include "mpnet/ops/resample_mode.hpp"

namespace mpnet::nn {

// Training mode turns on forced weight normalisation and dropout; the seed makes dropout
// masks reproducible. Without a seed, the masks come from the seed the network holds on the
// backend (nn/dropout_seed.hpp), as it was last set: what a replayed CUDA graph relies on.
// A network and its copies share that seed, so their training forwards run one at a time; a
// Block used alone draws from substream(seed, 0).
struct ForwardMode {
    bool training = false;
    std::optional<uint64_t> dropout_seed;
    // Training mode only: the caller applied forced weight normalisation already (once per
    // optimizer step, so that every round of the step, in any process, sees the same weights).
    bool weights_normalized = false;
};

template <Scalar T, Backend B, Element A = T>
class Block {
public:
    using TensorT = Tensor<T, B>;
    using TensorA = Tensor<A, B>;
    using Conv = MPConv<T, B, A>;
    using Linear = MPConv<T, B>;

    Block(const BlockSpec& spec, const NetworkConfig& cfg)
        : spec_(spec), cfg_(cfg), emb_gain(Shape{}),
          conv_res0(spec.encoder ? spec.out : spec.in, spec.out, 3),
          emb_linear(cfg.cemb(), spec.out, 0),
          conv_res1(spec.out, spec.out, 3) {
        if (spec.in != spec.out) conv_skip.emplace(spec.in, spec.out, 1);
        if (spec.attention) {
            attn_qkv.emplace(spec.out, 3 * spec.out, 1);
            attn_proj.emplace(spec.out, spec.out, 1);
        }
    }

    [[nodiscard]] const BlockSpec& spec() const { return spec_; }
    [[nodiscard]] int64_t heads() const { return spec_.attention ? spec_.out / cfg_.channels_per_head : 0; }

    struct Context {
        Shape x_shape;
        typename Conv::Context skip, res0, res1, qkv, proj;
        typename Linear::Context emb;
        TensorA skipped;            // enc: pixel-norm input
        TensorT pn_scale;           // and its scales
        TensorA a0_in;              // input of the first mp_silu
        TensorA y0, c;              // conv_res0 output, modulation (emb_linear + 1)
        Tensor<double, B> dropout_words;  // the masks' seed when dropout ran (a copy: a later round may change it)
        ops::AttentionContext<A, B> attn;
        TensorA pre_clip;
    };

    void force_normalize() {
        for_each_conv([](auto& c) { c.force_normalize(); });
    }

    // Where the dropout masks' seed comes from: by default a seed of the block's own, stream 0;
    // in a UNet, the network's seed and the block's index.
    void share_dropout_seed(const DropoutSeed<B>& seed) { dropout_ = seed; }

    TensorA forward(const TensorA& x_in, const TensorT& emb, const ForwardMode& mode, Context* ctx = nullptr) const {
        Context local;
        Context& s = ctx ? *ctx : local;
        s.dropout_words = Tensor<double, B>();
        s.x_shape = x_in.shape();
        TensorA x(ops::resampled_shape(x_in.shape(), spec_.resample));
        resample_forward(B{}, x_in, cfg_.resample_filter, spec_.resample, x);
        if (spec_.encoder) {
            if (conv_skip) x = conv_skip->forward(x, 1, ctx ? &s.skip : nullptr);
            TensorA normed(x.shape());
            normalize_forward(B{}, x, ops::Dims{1}, normed, ctx ? &s.pn_scale : nullptr);
            if (ctx) s.skipped = x;
            x = normed;
        }
        TensorA a(x.shape());
        mp_silu_forward(B{}, x, a);
        if (ctx) s.a0_in = x;
        TensorA y = conv_res0.forward(a, 1, ctx ? &s.res0 : nullptr);
        TensorT c_t = emb_linear.forward(emb, emb_gain.value, ctx ? &s.emb : nullptr);
        affine(B{}, c_t, T(1), T(1), c_t);
        const TensorA c = converted<A>(c_t);
        TensorA a1(y.shape());
        modulated_silu_forward(B{}, y, c, a1);
        if (ctx) s.y0 = y, s.c = c;
        if (mode.training && cfg_.dropout > 0) {
            if (mode.dropout_seed) dropout_.set(*mode.dropout_seed);
            dropout_apply(B{}, a1, cfg_.dropout, dropout_.words, dropout_.stream, a1);
            if (ctx) s.dropout_words = dropout_.words.clone();
        }
        y = conv_res1.forward(a1, 1, ctx ? &s.res1 : nullptr);
        if (!spec_.encoder && conv_skip) x = conv_skip->forward(x, 1, ctx ? &s.skip : nullptr);
        TensorA out(x.shape());
        mp_sum_forward(B{}, x, y, cfg_.res_balance, out);
        if (spec_.attention) {
            TensorA qkv = attn_qkv->forward(out, 1, ctx ? &s.qkv : nullptr), att(out.shape());
            attention_forward(B{}, qkv, heads(), att, ctx ? &s.attn : nullptr);
            TensorA proj = attn_proj->forward(att, 1, ctx ? &s.proj : nullptr);
            TensorA sum = ctx ? TensorA(out.shape()) : out;  // attn_qkv's context keeps `out`
            mp_sum_forward(B{}, out, proj, cfg_.attn_balance, sum);
            out = sum;
        }
        if (!ctx) {
            clip_forward(B{}, out, cfg_.clip_act, out);
            return out;
        }
        s.pre_clip = out;
        TensorA clipped(out.shape());
        clip_forward(B{}, out, cfg_.clip_act, clipped);
        return clipped;
    }

    // Returns dx; accumulates parameter gradients and adds this block's d(emb) into demb.
    TensorA backward(const TensorA& dy_out, const Context& s, TensorT& demb) {
        TensorA dz(dy_out.shape());
        clip_backward(B{}, s.pre_clip, dy_out, cfg_.clip_act, dz);
        TensorA dx_main(dz.shape()), dy(dz.shape());
        if (spec_.attention) {
            TensorA dproj(dz.shape());
            mp_sum_backward(B{}, dz, cfg_.attn_balance, dx_main, dproj);
            TensorA datt = attn_proj->backward(dproj, s.proj);
            TensorA dqkv(Shape{dz.size(0), 3 * spec_.out, dz.size(2), dz.size(3)});
            attention_backward(B{}, s.attn, heads(), datt, dqkv);
            TensorA dres = attn_qkv->backward(dqkv, s.qkv);
            axpby(B{}, T(1), dres, T(1), dx_main);
            dz = dx_main;
            dx_main = TensorA(dz.shape());
        }
        mp_sum_backward(B{}, dz, cfg_.res_balance, dx_main, dy);
        // x branch of the decoder: through conv_skip.
        TensorA dx = (!spec_.encoder && conv_skip) ? conv_skip->backward(dx_main, s.skip) : dx_main;
        // residual branch
        TensorA dym = conv_res1.backward(dy, s.res1);
        if (!s.dropout_words.empty()) dropout_apply(B{}, dym, cfg_.dropout, s.dropout_words, dropout_.stream, dym);
        TensorA dy0 = dym, dc(s.c.shape());  // in place over dym
        modulated_silu_backward(B{}, s.y0, s.c, dym, dy0, dc);
        TensorT de = emb_linear.backward(converted<T>(dc), s.emb, &emb_gain.grad_to_accumulate());
        axpby(B{}, T(1), de, T(1), demb);
        TensorA da = conv_res0.backward(dy0, s.res0);
        mp_silu_backward_add(B{}, s.a0_in, da, dx);  // x feeds both the residual branch and the skip path
        if (spec_.encoder) {
            TensorA dn(dx.shape());
            normalize_backward(B{}, s.skipped, dx, ops::Dims{1}, s.pn_scale, dn);
            dx = conv_skip ? conv_skip->backward(dn, s.skip) : dn;
        }
        TensorA dx_in(s.x_shape);
        resample_backward(B{}, dx, cfg_.resample_filter, spec_.resample, dx_in);
        return dx_in;
    }

    template <class F>
    void visit(const std::string& prefix, F&& f) {
        f(join_name(prefix, "emb_gain"), emb_gain);
        conv_res0.visit(join_name(prefix, "conv_res0"), f);
        emb_linear.visit(join_name(prefix, "emb_linear"), f);
        conv_res1.visit(join_name(prefix, "conv_res1"), f);
        if (conv_skip) conv_skip->visit(join_name(prefix, "conv_skip"), f);
        if (attn_qkv) attn_qkv->visit(join_name(prefix, "attn_qkv"), f);
        if (attn_proj) attn_proj->visit(join_name(prefix, "attn_proj"), f);
    }

private:
    template <class F>
    void for_each_conv(F&& f) {
        for (Conv* c : {&conv_res0, &conv_res1}) f(*c);
        f(emb_linear);
        for (auto* c : {&conv_skip, &attn_qkv, &attn_proj})
            if (*c) f(**c);
    }

    BlockSpec spec_;
    NetworkConfig cfg_;
    DropoutSeed<B> dropout_;

public:
    Param<T, B> emb_gain;
    Conv conv_res0;
    Linear emb_linear;
    Conv conv_res1;
    std::optional<Conv> conv_skip, attn_qkv, attn_proj;
};

}  // namespace mpnet::nn
