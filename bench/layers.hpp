// Every layer of the EDM2 network, forward and backward, at the shapes it has inside the
// benchmarked presets (derived from the preset's U-Net layout, one benchmark per distinct
// shape), written once for any backend: bench/bench_layers.cpp registers the list on the
// CPU, bench/cuda/bench_cuda_layers.cu on the GPU. A new layer adds its benchmark here.
//
// Forward runs in training mode, keeping what backward needs; backward starts from that
// saved context. Matrix work (MPConv, attention, whole blocks) reports a FLOP rate;
// memory-bound layers report GB/s of compulsory traffic.
//
// How a backend registers and times a benchmark is its harness H:
//   H::backend                     the backend tag
//   H::add(name, preset, fn)       registers a memory-bound layer
//   H::add_matrix(name, preset, fn) registers a layer with matrix products (the GPU runs
//                                  these once per math mode)
//   H::time(state, step)           runs the benchmark loop around step()
//   H::report_flops(state, flops), H::report_bytes(state, bytes)
#pragma once
#include <benchmark/benchmark.h>

#include <algorithm>
#include <concepts>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "mpnet/backend/kernels.hpp"
#include "mpnet/nn/block.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/mpconv.hpp"
#include "mpnet/nn/presets.hpp"
#include "presets.hpp"

namespace mpnet::bench {

template <class H>
concept Harness = Kernels<typename H::backend> &&
    requires(benchmark::State& st, const std::string& name, const BenchPreset& p,
             std::function<void(benchmark::State&)> fn, void (*step)(), double amount) {
        H::add(name, p, fn);
        H::add_matrix(name, p, fn);
        H::time(st, step);
        H::report_flops(st, amount);
        H::report_bytes(st, amount);
    };

namespace layers {

using benchmark::State;
using ops::Dims;
using ops::Resample;

inline constexpr double fsize = sizeof(float);

template <class V, class E>
void add_unique(V& v, const E& e) {
    if (std::find(v.begin(), v.end(), e) == v.end()) v.push_back(e);
}

// The distinct shapes of each kind of layer in one network.
struct Cases {
    std::vector<Shape> activations;                            // one per level
    std::vector<std::tuple<int64_t, int64_t, int64_t>> cats;   // main channels, skip channels, resolution
    std::vector<Shape> down_inputs, up_inputs;
    std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> convs;  // cin, cout, resolution, kernel (0: linear)
    std::vector<int64_t> fourier_channels;
    std::vector<std::tuple<int64_t, int64_t, int64_t>> attentions;  // channels, resolution, heads
};

inline Cases cases_of(const nn::NetworkConfig& cfg, int64_t n) {
    const auto L = nn::unet_layout(cfg);
    const auto cblock = cfg.cblock();
    Cases c;
    for (size_t level = 0; level < cblock.size(); ++level) {
        const int64_t r = cfg.img_resolution >> level;
        c.activations.push_back(Shape{n, cblock[level], r, r});
    }
    for (const auto& s : L.enc) {
        const int64_t r = s.resolution;
        if (s.is_conv) {
            add_unique(c.convs, std::tuple{s.in, s.out, r, int64_t(3)});
            continue;
        }
        if (s.resample == Resample::down) add_unique(c.down_inputs, Shape{n, s.in, 2 * r, 2 * r});
        if (s.in != s.out) add_unique(c.convs, std::tuple{s.in, s.out, r, int64_t(1)});
        add_unique(c.convs, std::tuple{s.out, s.out, r, int64_t(3)});
    }
    int64_t main = L.enc.back().out;
    for (const auto& s : L.dec) {
        const int64_t r = s.resolution;
        if (s.takes_skip && std::none_of(c.cats.begin(), c.cats.end(), [&](auto& t) { return std::get<2>(t) == r; }))
            c.cats.emplace_back(main, s.in - main, r);
        if (s.resample == Resample::up) add_unique(c.up_inputs, Shape{n, s.in, r / 2, r / 2});
        add_unique(c.convs, std::tuple{s.in, s.out, r, int64_t(3)});
        add_unique(c.convs, std::tuple{s.out, s.out, r, int64_t(3)});
        if (s.in != s.out) add_unique(c.convs, std::tuple{s.in, s.out, r, int64_t(1)});
        main = s.out;
    }
    for (const auto* list : {&L.enc, &L.dec})
        for (const auto& s : *list)
            if (s.attention) {
                add_unique(c.convs, std::tuple{s.out, 3 * s.out, s.resolution, int64_t(1)});
                add_unique(c.convs, std::tuple{s.out, s.out, s.resolution, int64_t(1)});
                add_unique(c.attentions, std::tuple{s.out, s.resolution, s.out / cfg.channels_per_head});
            }
    add_unique(c.convs, std::tuple{cblock[0], cfg.img_channels, cfg.img_resolution, int64_t(3)});  // out_conv
    for (const auto* list : {&L.enc, &L.dec})
        for (const auto& s : *list)
            if (!s.is_conv) add_unique(c.convs, std::tuple{cfg.cemb(), s.out, int64_t(0), int64_t(0)});  // emb_linear
    add_unique(c.convs, std::tuple{cfg.cnoise(), cfg.cemb(), int64_t(0), int64_t(0)});                  // emb_noise
    if (cfg.label_dim) add_unique(c.convs, std::tuple{cfg.label_dim, cfg.cemb(), int64_t(0), int64_t(0)});
    add_unique(c.convs, std::tuple{cfg.logvar_channels, int64_t(1), int64_t(0), int64_t(0)});  // logvar_linear
    c.fourier_channels = {cfg.cnoise()};
    add_unique(c.fourier_channels, cfg.logvar_channels);
    return c;
}

inline std::string name(const std::string& layer, bool bwd, const BenchPreset& p, const std::string& shape) {
    return layer + (bwd ? "/bwd/" : "/fwd/") + p.name + "/" + shape;
}

// ---- memory-bound layers ---------------------------------------------------------------

template <class H>
void register_elementwise(const BenchPreset& p, const Cases& c, const nn::NetworkConfig& cfg) {
    using B = typename H::backend;
    using F = Tensor<float, B>;
    for (const Shape& s : c.activations) {
        const double elems = double(s.numel());
        H::add(name("mp_silu", false, p, dims(s)), p, [s, elems](State& st) {
            F x = filled<B>(s, 1), y(s);
            H::time(st, [&] { mp_silu_forward(B{}, x, y); });
            H::report_bytes(st, 2 * fsize * elems);
        });
        H::add(name("mp_silu", true, p, dims(s)), p, [s, elems](State& st) {
            F x = filled<B>(s, 1), dy = filled<B>(s, 2), dx(s);
            H::time(st, [&] { mp_silu_backward(B{}, x, dy, dx); });
            H::report_bytes(st, 3 * fsize * elems);
        });
        H::add(name("mp_sum", false, p, dims(s)), p, [s, elems, t = cfg.res_balance](State& st) {
            F a = filled<B>(s, 1), b = filled<B>(s, 2), y(s);
            H::time(st, [&] { mp_sum_forward(B{}, a, b, t, y); });
            H::report_bytes(st, 3 * fsize * elems);
        });
        H::add(name("mp_sum", true, p, dims(s)), p, [s, elems, t = cfg.res_balance](State& st) {
            F dy = filled<B>(s, 1), da(s), db(s);
            H::time(st, [&] { mp_sum_backward(B{}, dy, t, da, db); });
            H::report_bytes(st, 3 * fsize * elems);
        });
        H::add(name("pixel_norm", false, p, dims(s)), p, [s, elems](State& st) {
            F x = filled<B>(s, 1), y(s), scale;
            H::time(st, [&] { normalize_forward(B{}, x, Dims{1}, y, &scale); });
            H::report_bytes(st, 2 * fsize * elems);
        });
        H::add(name("pixel_norm", true, p, dims(s)), p, [s, elems](State& st) {
            F x = filled<B>(s, 1), y(s), scale, dy = filled<B>(s, 2), dx(s);
            normalize_forward(B{}, x, Dims{1}, y, &scale);
            H::time(st, [&] { normalize_backward(B{}, x, dy, Dims{1}, scale, dx); });
            H::report_bytes(st, 3 * fsize * elems);
        });
        // normalize() on the 3x3 weight of this level, per output channel.
        const Shape w{s[1], s[1], 3, 3};
        H::add(name("normalize", false, p, dims(w)), p, [w](State& st) {
            F x = filled<B>(w, 1), y(w), scale;
            H::time(st, [&] { normalize_forward(B{}, x, Dims::all_but_first(), y, &scale); });
            H::report_bytes(st, 2 * fsize * double(w.numel()));
        });
        H::add(name("normalize", true, p, dims(w)), p, [w](State& st) {
            F x = filled<B>(w, 1), y(w), scale, dy = filled<B>(w, 2), dx(w);
            normalize_forward(B{}, x, Dims::all_but_first(), y, &scale);
            H::time(st, [&] { normalize_backward(B{}, x, dy, Dims::all_but_first(), scale, dx); });
            H::report_bytes(st, 3 * fsize * double(w.numel()));
        });
    }
    for (auto [ca, cb, r] : c.cats) {
        const Shape sa{p.batch, ca, r, r}, sb{p.batch, cb, r, r}, sy{p.batch, ca + cb, r, r};
        const std::string shape = std::to_string(p.batch) + "x" + std::to_string(ca) + "+" + std::to_string(cb) + "x" +
                                  std::to_string(r) + "x" + std::to_string(r);
        const double bytes = 2 * fsize * double(sy.numel()), t = cfg.concat_balance;
        H::add(name("mp_cat", false, p, shape), p, [=](State& st) {
            F a = filled<B>(sa, 1), b = filled<B>(sb, 2), y(sy);
            H::time(st, [&] { mp_cat_forward(B{}, a, b, t, y); });
            H::report_bytes(st, bytes);
        });
        H::add(name("mp_cat", true, p, shape), p, [=](State& st) {
            F dy = filled<B>(sy, 1), da(sa), db(sb);
            H::time(st, [&] { mp_cat_backward(B{}, dy, t, da, db); });
            H::report_bytes(st, bytes);
        });
    }
    // Resampling is named by its input; the traffic is the large side plus the small side.
    for (Resample mode : {Resample::down, Resample::up})
        for (const Shape& in : mode == Resample::down ? c.down_inputs : c.up_inputs) {
            const Shape out = ops::resampled_shape(in, mode);
            const double bytes = fsize * double(in.numel() + out.numel());
            const std::string layer = std::string("resample_") + std::string(ops::to_string(mode));
            const auto filter = cfg.resample_filter;
            H::add(name(layer, false, p, dims(in)), p, [=](State& st) {
                F x = filled<B>(in, 1), y(out);
                H::time(st, [&] { resample_forward(B{}, x, filter, mode, y); });
                H::report_bytes(st, bytes);
            });
            H::add(name(layer, true, p, dims(in)), p, [=](State& st) {
                F dy = filled<B>(out, 1), dx(in);
                H::time(st, [&] { resample_backward(B{}, dy, filter, mode, dx); });
                H::report_bytes(st, bytes);
            });
        }
}

// ---- layers with matrix work -------------------------------------------------------------

template <class H>
void register_mpconv(const BenchPreset& p, const Cases& c) {
    using B = typename H::backend;
    using F = Tensor<float, B>;
    for (const auto& conv_case : c.convs) {
        // Plain variables, not a structured binding: clang 14 cannot capture bindings.
        const int64_t cin = std::get<0>(conv_case), cout = std::get<1>(conv_case), r = std::get<2>(conv_case),
                      k = std::get<3>(conv_case);
        const std::string layer = k == 3 ? "mpconv3x3" : k == 1 ? "mpconv1x1" : "mpconv_linear";
        const Shape xs = k ? Shape{p.batch, cin, r, r} : Shape{p.batch, cin};
        const std::string shape = dims(xs) + "->" + std::to_string(cout);
        const double flops = 2.0 * double(p.batch * cout * cin) * double(k ? k * k * r * r : 1);
        auto make = [=] {
            nn::MPConv<float, B> conv(cin, cout, k);
            fill_normal(B{}, conv.weight.value, 3, 0);
            return conv;
        };
        H::add_matrix(name(layer, false, p, shape), p, [=](State& st) {
            auto conv = make();
            F x = filled<B>(xs, 1);
            typename nn::MPConv<float, B>::Context ctx;
            H::time(st, [&] { benchmark::DoNotOptimize(conv.forward(x, 1, &ctx).data()); });
            H::report_flops(st, flops);
        });
        H::add_matrix(name(layer, true, p, shape), p, [=](State& st) {
            auto conv = make();
            F x = filled<B>(xs, 1);
            typename nn::MPConv<float, B>::Context ctx;
            const F y = conv.forward(x, 1, &ctx), dy = filled<B>(y.shape(), 2);
            H::time(st, [&] { benchmark::DoNotOptimize(conv.backward(dy, ctx).data()); });
            H::report_flops(st, 2 * flops);
        });
    }
}

template <class H>
void register_attention(const BenchPreset& p, const Cases& c) {
    using B = typename H::backend;
    using F = Tensor<float, B>;
    for (auto [ch, r, heads] : c.attentions) {
        const Shape qs{p.batch, 3 * ch, r, r}, ys{p.batch, ch, r, r};
        const std::string shape = dims(ys) + "_h" + std::to_string(heads);
        const double flops = 4.0 * double(p.batch * ch) * double(r * r) * double(r * r);  // q^T k and v P^T
        H::add_matrix(name("attention", false, p, shape), p, [=, h = heads](State& st) {
            F qkv = filled<B>(qs, 1), y(ys);
            ops::AttentionContext<float, B> ctx;
            H::time(st, [&] { attention_forward(B{}, qkv, h, y, &ctx); });
            H::report_flops(st, flops);
        });
        H::add_matrix(name("attention", true, p, shape), p, [=, h = heads](State& st) {
            F qkv = filled<B>(qs, 1), y(ys), dy = filled<B>(ys, 2), dqkv(qs);
            ops::AttentionContext<float, B> ctx;
            attention_forward(B{}, qkv, h, y, &ctx);
            H::time(st, [&] { attention_backward(B{}, ctx, h, dy, dqkv); });
            H::report_flops(st, 2 * flops);
        });
    }
}

template <class H>
void register_fourier(const BenchPreset& p, const Cases& c) {
    using B = typename H::backend;
    using F = Tensor<float, B>;
    for (int64_t ch : c.fourier_channels) {
        const std::string shape = std::to_string(p.batch) + "->" + std::to_string(ch);
        H::add(name("mp_fourier", false, p, shape), p, [=, n = p.batch](State& st) {
            nn::MPFourier<float, B> f(ch, 1);
            F x = filled<B>({n}, 2);
            H::time(st, [&] { benchmark::DoNotOptimize(f.forward(x).data()); });
        });
        H::add(name("mp_fourier", true, p, shape), p, [=, n = p.batch](State& st) {
            nn::MPFourier<float, B> f(ch, 1);
            F x = filled<B>({n}, 2), dy = filled<B>({n, ch}, 3);
            H::time(st, [&] { benchmark::DoNotOptimize(f.backward(x, dy).data()); });
        });
    }
}

// Every Block of the network under its state_dict name, e.g. block/fwd/fmnist-s/enc.8x8_block0.
template <class H>
void register_blocks(const BenchPreset& p, const nn::NetworkConfig& cfg) {
    using B = typename H::backend;
    using F = Tensor<float, B>;
    const auto L = nn::unet_layout(cfg);
    for (const auto* list : {&L.enc, &L.dec})
        for (const auto& spec : *list) {
            if (spec.is_conv) continue;
            const int64_t r = spec.resample == Resample::down ? 2 * spec.resolution
                              : spec.resample == Resample::up ? spec.resolution / 2
                                                              : spec.resolution;
            const Shape xs{p.batch, spec.in, r, r}, es{p.batch, cfg.cemb()};
            const double flops = 2.0 * double(p.batch) * nn::block_cost(spec, cfg).macs;
            const std::string shape = std::string(spec.encoder ? "enc." : "dec.") + spec.name;
            auto make = [=] {
                nn::Block<float, B> b(spec, cfg);
                uint64_t seed = 10;
                b.visit("", [&](const std::string&, nn::Param<float, B>& prm) {
                    fill_normal(B{}, prm.value, seed++, 0);
                });
                return b;
            };
            H::add_matrix(name("block", false, p, shape), p, [=](State& st) {
                auto b = make();
                F x = filled<B>(xs, 1), e = filled<B>(es, 2);
                typename nn::Block<float, B>::Context ctx;
                H::time(st, [&] { benchmark::DoNotOptimize(b.forward(x, e, {}, &ctx).data()); });
                H::report_flops(st, flops);
            });
            H::add_matrix(name("block", true, p, shape), p, [=](State& st) {
                auto b = make();
                F x = filled<B>(xs, 1), e = filled<B>(es, 2), demb = F::zeros(es);
                typename nn::Block<float, B>::Context ctx;
                const F y = b.forward(x, e, {}, &ctx), dy = filled<B>(y.shape(), 3);
                H::time(st, [&] { benchmark::DoNotOptimize(b.backward(dy, ctx, demb).data()); });
                H::report_flops(st, 2 * flops);
            });
        }
}

}  // namespace layers

// Every layer of preset p's network on H's backend.
template <Harness H>
void register_layers(const BenchPreset& p) {
    const auto cfg = nn::find_preset(p.name).net;
    const layers::Cases c = layers::cases_of(cfg, p.batch);
    layers::register_elementwise<H>(p, c, cfg);
    layers::register_fourier<H>(p, c);
    layers::register_mpconv<H>(p, c);
    layers::register_attention<H>(p, c);
    layers::register_blocks<H>(p, cfg);
}

}  // namespace mpnet::bench
