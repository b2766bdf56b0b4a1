// Every layer of the EDM2 network, forward and backward, at the shapes it has inside the
// benchmarked presets (derived from the preset's U-Net layout, one benchmark per distinct
// shape). Forward runs in training mode, keeping what backward needs; backward starts
// from that saved context.
//
// Matrix work (MPConv, attention, whole blocks) reports GFLOP/s and the fraction of the
// measured FMA peak; memory-bound layers report GB/s of compulsory traffic and the
// fraction of the measured copy bandwidth.
#include <algorithm>
#include <tuple>
#include <vector>

#include "common.hpp"
#include "mpnet/nn/block.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/mpconv.hpp"

namespace {

using namespace mpnet;
using namespace mpnet::bench;
using benchmark::State;
using ops::Dims;
using ops::Resample;

constexpr double fsize = sizeof(float);

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

Cases cases_of(const nn::NetworkConfig& cfg, int64_t n) {
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

std::string name(const std::string& layer, bool bwd, const BenchPreset& p, const std::string& shape) {
    return layer + (bwd ? "/bwd/" : "/fwd/") + p.name + "/" + shape;
}

// ---- memory-bound layers ---------------------------------------------------------------

void register_elementwise(const BenchPreset& p, const Cases& c, const nn::NetworkConfig& cfg) {
    for (const Shape& s : c.activations) {
        const double elems = double(s.numel());
        add(name("mp_silu", false, p, dims(s)), p, [s, elems](State& st) {
            F x = filled(s, 1), y(s);
            for (auto _ : st) mp_silu_forward(CpuBackend{}, x, y);
            report_bytes(st, 2 * fsize * elems);
        });
        add(name("mp_silu", true, p, dims(s)), p, [s, elems](State& st) {
            F x = filled(s, 1), dy = filled(s, 2), dx(s);
            for (auto _ : st) mp_silu_backward(CpuBackend{}, x, dy, dx);
            report_bytes(st, 3 * fsize * elems);
        });
        add(name("mp_sum", false, p, dims(s)), p, [s, elems, t = cfg.res_balance](State& st) {
            F a = filled(s, 1), b = filled(s, 2), y(s);
            for (auto _ : st) mp_sum_forward(CpuBackend{}, a, b, t, y);
            report_bytes(st, 3 * fsize * elems);
        });
        add(name("mp_sum", true, p, dims(s)), p, [s, elems, t = cfg.res_balance](State& st) {
            F dy = filled(s, 1), da(s), db(s);
            for (auto _ : st) mp_sum_backward(CpuBackend{}, dy, t, da, db);
            report_bytes(st, 3 * fsize * elems);
        });
        add(name("pixel_norm", false, p, dims(s)), p, [s, elems](State& st) {
            F x = filled(s, 1), y(s), scale;
            for (auto _ : st) normalize_forward(CpuBackend{}, x, Dims{1}, y, &scale);
            report_bytes(st, 2 * fsize * elems);
        });
        add(name("pixel_norm", true, p, dims(s)), p, [s, elems](State& st) {
            F x = filled(s, 1), y(s), scale, dy = filled(s, 2), dx(s);
            normalize_forward(CpuBackend{}, x, Dims{1}, y, &scale);
            for (auto _ : st) normalize_backward(CpuBackend{}, x, dy, Dims{1}, scale, dx);
            report_bytes(st, 3 * fsize * elems);
        });
        // normalize() on the 3x3 weight of this level, per output channel.
        const Shape w{s[1], s[1], 3, 3};
        add(name("normalize", false, p, dims(w)), p, [w](State& st) {
            F x = filled(w, 1), y(w), scale;
            for (auto _ : st) normalize_forward(CpuBackend{}, x, Dims::all_but_first(), y, &scale);
            report_bytes(st, 2 * fsize * double(w.numel()));
        });
        add(name("normalize", true, p, dims(w)), p, [w](State& st) {
            F x = filled(w, 1), y(w), scale, dy = filled(w, 2), dx(w);
            normalize_forward(CpuBackend{}, x, Dims::all_but_first(), y, &scale);
            for (auto _ : st) normalize_backward(CpuBackend{}, x, dy, Dims::all_but_first(), scale, dx);
            report_bytes(st, 3 * fsize * double(w.numel()));
        });
    }
    for (auto [ca, cb, r] : c.cats) {
        const Shape sa{p.batch, ca, r, r}, sb{p.batch, cb, r, r}, sy{p.batch, ca + cb, r, r};
        const std::string shape = std::to_string(p.batch) + "x" + std::to_string(ca) + "+" + std::to_string(cb) + "x" +
                                  std::to_string(r) + "x" + std::to_string(r);
        const double bytes = 2 * fsize * double(sy.numel()), t = cfg.concat_balance;
        add(name("mp_cat", false, p, shape), p, [=](State& st) {
            F a = filled(sa, 1), b = filled(sb, 2), y(sy);
            for (auto _ : st) mp_cat_forward(CpuBackend{}, a, b, t, y);
            report_bytes(st, bytes);
        });
        add(name("mp_cat", true, p, shape), p, [=](State& st) {
            F dy = filled(sy, 1), da(sa), db(sb);
            for (auto _ : st) mp_cat_backward(CpuBackend{}, dy, t, da, db);
            report_bytes(st, bytes);
        });
    }
    // Resampling is named by its input; the traffic is the large side plus the small side.
    for (Resample mode : {Resample::down, Resample::up})
        for (const Shape& in : mode == Resample::down ? c.down_inputs : c.up_inputs) {
            const Shape out = ops::resampled_shape(in, mode);
            const double bytes = fsize * double(in.numel() + out.numel());
            const std::string layer = std::string("resample_") + std::string(ops::to_string(mode));
            const auto filter = cfg.resample_filter;
            add(name(layer, false, p, dims(in)), p, [=](State& st) {
                F x = filled(in, 1), y(out);
                for (auto _ : st) resample_forward(CpuBackend{}, x, filter, mode, y);
                report_bytes(st, bytes);
            });
            add(name(layer, true, p, dims(in)), p, [=](State& st) {
                F dy = filled(out, 1), dx(in);
                for (auto _ : st) resample_backward(CpuBackend{}, dy, filter, mode, dx);
                report_bytes(st, bytes);
            });
        }
}

// ---- layers with matrix work -------------------------------------------------------------

void register_mpconv(const BenchPreset& p, const Cases& c) {
    for (auto [cin, cout, r, k] : c.convs) {
        const std::string layer = k == 3 ? "mpconv3x3" : k == 1 ? "mpconv1x1" : "mpconv_linear";
        const Shape xs = k ? Shape{p.batch, cin, r, r} : Shape{p.batch, cin};
        const std::string shape = dims(xs) + "->" + std::to_string(cout);
        const double flops = 2.0 * double(p.batch * cout * cin) * double(k ? k * k * r * r : 1);
        auto make = [=] {
            nn::MPConv<float, CpuBackend> conv(cin, cout, k);
            fill_normal(CpuBackend{}, conv.weight.value, 3, 0);
            return conv;
        };
        add(name(layer, false, p, shape), p, [=](State& st) {
            auto conv = make();
            F x = filled(xs, 1);
            typename nn::MPConv<float, CpuBackend>::Context ctx;
            for (auto _ : st) benchmark::DoNotOptimize(conv.forward(x, 1, &ctx).data());
            report_flops(st, flops);
        });
        add(name(layer, true, p, shape), p, [=](State& st) {
            auto conv = make();
            F x = filled(xs, 1);
            typename nn::MPConv<float, CpuBackend>::Context ctx;
            const F y = conv.forward(x, 1, &ctx), dy = filled(y.shape(), 2);
            for (auto _ : st) benchmark::DoNotOptimize(conv.backward(dy, ctx).data());
            report_flops(st, 2 * flops);
        });
    }
}

void register_attention(const BenchPreset& p, const Cases& c) {
    for (auto [ch, r, heads] : c.attentions) {
        const Shape qs{p.batch, 3 * ch, r, r}, ys{p.batch, ch, r, r};
        const std::string shape = dims(ys) + "_h" + std::to_string(heads);
        const double flops = 4.0 * double(p.batch * ch) * double(r * r) * double(r * r);  // q^T k and v P^T
        add(name("attention", false, p, shape), p, [=, h = heads](State& st) {
            F qkv = filled(qs, 1), y(ys);
            ops::AttentionContext<float, CpuBackend> ctx;
            for (auto _ : st) attention_forward(CpuBackend{}, qkv, h, y, &ctx);
            report_flops(st, flops);
        });
        add(name("attention", true, p, shape), p, [=, h = heads](State& st) {
            F qkv = filled(qs, 1), y(ys), dy = filled(ys, 2), dqkv(qs);
            ops::AttentionContext<float, CpuBackend> ctx;
            attention_forward(CpuBackend{}, qkv, h, y, &ctx);
            for (auto _ : st) attention_backward(CpuBackend{}, ctx, h, dy, dqkv);
            report_flops(st, 2 * flops);
        });
    }
}

void register_fourier(const BenchPreset& p, const Cases& c) {
    for (int64_t ch : c.fourier_channels) {
        const std::string shape = std::to_string(p.batch) + "->" + std::to_string(ch);
        add(name("mp_fourier", false, p, shape), p, [=, n = p.batch](State& st) {
            nn::MPFourier<float, CpuBackend> f(ch, 1);
            F x = filled({n}, 2);
            for (auto _ : st) benchmark::DoNotOptimize(f.forward(x).data());
        });
        add(name("mp_fourier", true, p, shape), p, [=, n = p.batch](State& st) {
            nn::MPFourier<float, CpuBackend> f(ch, 1);
            F x = filled({n}, 2), dy = filled({n, ch}, 3);
            for (auto _ : st) benchmark::DoNotOptimize(f.backward(x, dy).data());
        });
    }
}

// Every Block of the network under its state_dict name, e.g. block/fwd/fmnist-s/enc.8x8_block0.
void register_blocks(const BenchPreset& p, const nn::NetworkConfig& cfg) {
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
                nn::Block<float, CpuBackend> b(spec, cfg);
                uint64_t seed = 10;
                b.visit("", [&](const std::string&, nn::Param<float, CpuBackend>& prm) {
                    fill_normal(CpuBackend{}, prm.value, seed++, 0);
                });
                return b;
            };
            add(name("block", false, p, shape), p, [=](State& st) {
                auto b = make();
                F x = filled(xs, 1), e = filled(es, 2);
                typename nn::Block<float, CpuBackend>::Context ctx;
                for (auto _ : st) benchmark::DoNotOptimize(b.forward(x, e, {}, &ctx).data());
                report_flops(st, flops);
            });
            add(name("block", true, p, shape), p, [=](State& st) {
                auto b = make();
                F x = filled(xs, 1), e = filled(es, 2), demb = F::zeros(es);
                typename nn::Block<float, CpuBackend>::Context ctx;
                const F y = b.forward(x, e, {}, &ctx), dy = filled(y.shape(), 3);
                for (auto _ : st) benchmark::DoNotOptimize(b.backward(dy, ctx, demb).data());
                report_flops(st, 2 * flops);
            });
        }
}

bool register_all() {
    for (const auto& p : bench_presets) {
        const auto cfg = nn::find_preset(p.name).net;
        const Cases c = cases_of(cfg, p.batch);
        register_elementwise(p, c, cfg);
        register_fourier(p, c);
        register_mpconv(p, c);
        register_attention(p, c);
        register_blocks(p, cfg);
    }
    return true;
}
const bool registered = register_all();

}  // namespace
