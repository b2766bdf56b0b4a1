// The GPU counterpart of bench/bench_layers.cpp and bench/bench_network.cpp: every layer of
// the benchmarked presets at the shapes it has inside the network (the same derivation from
// the U-Net layout and the same names, <layer>/<fwd|bwd>/<preset>/<shape>), forward and
// backward; layers with matrix work once per math mode (name suffix /fp32, /fp16, /bf16);
// then network/inference and network/train_step. Each iteration is timed on the GPU with
// CUDA events around it.
//
//   bench_cuda_layers --benchmark_filter='mpconv3x3/.*/edm2-img64-xs' --benchmark_min_time=0.2s
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "mpnet/backend/cuda/cuda.cuh"
#include "mpnet/nn/block.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/precond.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/schedule.hpp"

namespace {

using namespace mpnet;
using benchmark::Counter;
using benchmark::State;
using mpnet::cuda::Math;
using ops::Dims;
using ops::Resample;
using F = CudaTensor<float>;

constexpr double fsize = sizeof(float);

// The networks and batches of the CPU suite.
struct BenchPreset {
    const char* name;
    int64_t batch;
};
constexpr BenchPreset bench_presets[] = {{"fmnist-s", 64}, {"edm2-img64-xs", 32}};
constexpr Math math_modes[] = {Math::fp32, Math::fp16, Math::bf16};

F filled(Shape s, uint64_t seed, double stddev = 1) {
    F t(s);
    fill_normal(CudaBackend{}, t, seed, 0, 0, stddev);
    return t;
}

std::string dims(const Shape& s) {
    std::string out;
    for (int i = 0; i < s.rank(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
    return out;
}

std::string name(const std::string& layer, bool bwd, const BenchPreset& p, const std::string& shape) {
    return layer + (bwd ? "/bwd/" : "/fwd/") + p.name + "/" + shape;
}

// Times every iteration with CUDA events on the current stream; one untimed call first
// warms the pool, the cuBLAS handle and its heuristics.
void timed(State& st, const std::function<void()>& step) {
    cudaEvent_t start, stop;
    mpnet::cuda::cuda_check(cudaEventCreate(&start), "cudaEventCreate");
    mpnet::cuda::cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
    step();
    CudaBackend::synchronize();
    CudaBackend::reset_peak();
    for (auto _ : st) {
        mpnet::cuda::cuda_check(cudaEventRecord(start, CudaBackend::stream()), "cudaEventRecord");
        step();
        mpnet::cuda::cuda_check(cudaEventRecord(stop, CudaBackend::stream()), "cudaEventRecord");
        mpnet::cuda::cuda_check(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float ms = 0;
        mpnet::cuda::cuda_check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
        st.SetIterationTime(ms / 1e3);
    }
    st.counters["peak_MiB"] = double(CudaBackend::peak_bytes()) / (1 << 20);
    mpnet::cuda::cuda_check(cudaEventDestroy(start), "cudaEventDestroy");
    mpnet::cuda::cuda_check(cudaEventDestroy(stop), "cudaEventDestroy");
}

void report_flops(State& st, double flops) {
    st.counters["TFLOP/s"] = Counter(flops * 1e-12, Counter::kIsIterationInvariantRate);
}
// Compulsory traffic: each input read once, each output written once.
void report_bytes(State& st, double bytes) {
    st.counters["GB/s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
}

void add(const std::string& name, std::function<void(State&)> fn) {
    benchmark::RegisterBenchmark(name.c_str(), std::move(fn))->UseManualTime()->Unit(benchmark::kMicrosecond);
}
// A layer with matrix work, once per math mode.
void add_modes(const std::string& name, const std::function<void(State&)>& fn) {
    for (Math m : math_modes)
        add(name + "/" + std::string(mpnet::cuda::to_string(m)), [m, fn](State& st) {
            mpnet::cuda::MathScope scope(m);
            fn(st);
        });
}

// The distinct shapes of each kind of layer in one network, as the CPU suite derives them.
struct Cases {
    std::vector<Shape> activations;                                      // one per level
    std::vector<std::tuple<int64_t, int64_t, int64_t>> cats;             // main, skip channels, resolution
    std::vector<Shape> down_inputs, up_inputs;
    std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> convs;  // cin, cout, resolution, kernel (0: linear)
    std::vector<int64_t> fourier_channels;
    std::vector<std::tuple<int64_t, int64_t, int64_t>> attentions;  // channels, resolution, heads
};

template <class V, class E>
void add_unique(V& v, const E& e) {
    if (std::find(v.begin(), v.end(), e) == v.end()) v.push_back(e);
}

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

// ---- memory-bound layers (no matrix products: the math mode does not apply) --------------

void register_elementwise(const BenchPreset& p, const Cases& c, const nn::NetworkConfig& cfg) {
    for (const Shape& s : c.activations) {
        const double elems = double(s.numel());
        add(name("mp_silu", false, p, dims(s)), [s, elems](State& st) {
            F x = filled(s, 1), y(s);
            timed(st, [&] { mp_silu_forward(CudaBackend{}, x, y); });
            report_bytes(st, 2 * fsize * elems);
        });
        add(name("mp_silu", true, p, dims(s)), [s, elems](State& st) {
            F x = filled(s, 1), dy = filled(s, 2), dx(s);
            timed(st, [&] { mp_silu_backward(CudaBackend{}, x, dy, dx); });
            report_bytes(st, 3 * fsize * elems);
        });
        add(name("mp_sum", false, p, dims(s)), [s, elems, t = cfg.res_balance](State& st) {
            F a = filled(s, 1), b = filled(s, 2), y(s);
            timed(st, [&] { mp_sum_forward(CudaBackend{}, a, b, t, y); });
            report_bytes(st, 3 * fsize * elems);
        });
        add(name("mp_sum", true, p, dims(s)), [s, elems, t = cfg.res_balance](State& st) {
            F dy = filled(s, 1), da(s), db(s);
            timed(st, [&] { mp_sum_backward(CudaBackend{}, dy, t, da, db); });
            report_bytes(st, 3 * fsize * elems);
        });
        add(name("pixel_norm", false, p, dims(s)), [s, elems](State& st) {
            F x = filled(s, 1), y(s), scale;
            timed(st, [&] { normalize_forward(CudaBackend{}, x, Dims{1}, y, &scale); });
            report_bytes(st, 2 * fsize * elems);
        });
        add(name("pixel_norm", true, p, dims(s)), [s, elems](State& st) {
            F x = filled(s, 1), y(s), scale, dy = filled(s, 2), dx(s);
            normalize_forward(CudaBackend{}, x, Dims{1}, y, &scale);
            timed(st, [&] { normalize_backward(CudaBackend{}, x, dy, Dims{1}, scale, dx); });
            report_bytes(st, 3 * fsize * elems);
        });
        // normalize() on the 3x3 weight of this level, per output channel.
        const Shape w{s[1], s[1], 3, 3};
        add(name("normalize", false, p, dims(w)), [w](State& st) {
            F x = filled(w, 1), y(w), scale;
            timed(st, [&] { normalize_forward(CudaBackend{}, x, Dims::all_but_first(), y, &scale); });
            report_bytes(st, 2 * fsize * double(w.numel()));
        });
        add(name("normalize", true, p, dims(w)), [w](State& st) {
            F x = filled(w, 1), y(w), scale, dy = filled(w, 2), dx(w);
            normalize_forward(CudaBackend{}, x, Dims::all_but_first(), y, &scale);
            timed(st, [&] { normalize_backward(CudaBackend{}, x, dy, Dims::all_but_first(), scale, dx); });
            report_bytes(st, 3 * fsize * double(w.numel()));
        });
    }
    for (auto [ca, cb, r] : c.cats) {
        const Shape sa{p.batch, ca, r, r}, sb{p.batch, cb, r, r}, sy{p.batch, ca + cb, r, r};
        const std::string shape = std::to_string(p.batch) + "x" + std::to_string(ca) + "+" + std::to_string(cb) + "x" +
                                  std::to_string(r) + "x" + std::to_string(r);
        const double bytes = 2 * fsize * double(sy.numel()), t = cfg.concat_balance;
        add(name("mp_cat", false, p, shape), [=](State& st) {
            F a = filled(sa, 1), b = filled(sb, 2), y(sy);
            timed(st, [&] { mp_cat_forward(CudaBackend{}, a, b, t, y); });
            report_bytes(st, bytes);
        });
        add(name("mp_cat", true, p, shape), [=](State& st) {
            F dy = filled(sy, 1), da(sa), db(sb);
            timed(st, [&] { mp_cat_backward(CudaBackend{}, dy, t, da, db); });
            report_bytes(st, bytes);
        });
    }
    for (Resample mode : {Resample::down, Resample::up})
        for (const Shape& in : mode == Resample::down ? c.down_inputs : c.up_inputs) {
            const Shape out = ops::resampled_shape(in, mode);
            const double bytes = fsize * double(in.numel() + out.numel());
            const std::string layer = std::string("resample_") + std::string(ops::to_string(mode));
            const auto filter = cfg.resample_filter;
            add(name(layer, false, p, dims(in)), [=](State& st) {
                F x = filled(in, 1), y(out);
                timed(st, [&] { resample_forward(CudaBackend{}, x, filter, mode, y); });
                report_bytes(st, bytes);
            });
            add(name(layer, true, p, dims(in)), [=](State& st) {
                F dy = filled(out, 1), dx(in);
                timed(st, [&] { resample_backward(CudaBackend{}, dy, filter, mode, dx); });
                report_bytes(st, bytes);
            });
        }
}

void register_fourier(const BenchPreset& p, const Cases& c) {
    for (int64_t ch : c.fourier_channels) {
        const std::string shape = std::to_string(p.batch) + "->" + std::to_string(ch);
        add(name("mp_fourier", false, p, shape), [=, n = p.batch](State& st) {
            nn::MPFourier<float, CudaBackend> f(ch, 1);
            F x = filled({n}, 2);
            timed(st, [&] { benchmark::DoNotOptimize(f.forward(x).data()); });
        });
        add(name("mp_fourier", true, p, shape), [=, n = p.batch](State& st) {
            nn::MPFourier<float, CudaBackend> f(ch, 1);
            F x = filled({n}, 2), dy = filled({n, ch}, 3);
            timed(st, [&] { benchmark::DoNotOptimize(f.backward(x, dy).data()); });
        });
    }
}

// ---- layers with matrix work, per math mode ------------------------------------------------

void register_mpconv(const BenchPreset& p, const Cases& c) {
    for (auto [cin, cout, r, k] : c.convs) {
        const std::string layer = k == 3 ? "mpconv3x3" : k == 1 ? "mpconv1x1" : "mpconv_linear";
        const Shape xs = k ? Shape{p.batch, cin, r, r} : Shape{p.batch, cin};
        const std::string shape = dims(xs) + "->" + std::to_string(cout);
        const double flops = 2.0 * double(p.batch * cout * cin) * double(k ? k * k * r * r : 1);
        auto make = [=] {
            nn::MPConv<float, CudaBackend> conv(cin, cout, k);
            fill_normal(CudaBackend{}, conv.weight.value, 3, 0);
            return conv;
        };
        add_modes(name(layer, false, p, shape), [=](State& st) {
            auto conv = make();
            F x = filled(xs, 1);
            typename nn::MPConv<float, CudaBackend>::Context ctx;
            timed(st, [&] { benchmark::DoNotOptimize(conv.forward(x, 1, &ctx).data()); });
            report_flops(st, flops);
        });
        add_modes(name(layer, true, p, shape), [=](State& st) {
            auto conv = make();
            F x = filled(xs, 1);
            typename nn::MPConv<float, CudaBackend>::Context ctx;
            const F y = conv.forward(x, 1, &ctx), dy = filled(y.shape(), 2);
            timed(st, [&] { benchmark::DoNotOptimize(conv.backward(dy, ctx).data()); });
            report_flops(st, 2 * flops);
        });
    }
}

void register_attention(const BenchPreset& p, const Cases& c) {
    for (auto [ch, r, heads] : c.attentions) {
        const Shape qs{p.batch, 3 * ch, r, r}, ys{p.batch, ch, r, r};
        const std::string shape = dims(ys) + "_h" + std::to_string(heads);
        const double flops = 4.0 * double(p.batch * ch) * double(r * r) * double(r * r);  // q^T k and v P^T
        add_modes(name("attention", false, p, shape), [=, h = heads](State& st) {
            F qkv = filled(qs, 1), y(ys);
            ops::AttentionContext<float, CudaBackend> ctx;
            timed(st, [&] { attention_forward(CudaBackend{}, qkv, h, y, &ctx); });
            report_flops(st, flops);
        });
        add_modes(name("attention", true, p, shape), [=, h = heads](State& st) {
            F qkv = filled(qs, 1), y(ys), dy = filled(ys, 2), dqkv(qs);
            ops::AttentionContext<float, CudaBackend> ctx;
            attention_forward(CudaBackend{}, qkv, h, y, &ctx);
            timed(st, [&] { attention_backward(CudaBackend{}, ctx, h, dy, dqkv); });
            report_flops(st, 2 * flops);
        });
    }
}

// Every Block of the network under its state_dict name, e.g. block/fwd/edm2-img64-xs/enc.16x16_block0.
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
                nn::Block<float, CudaBackend> b(spec, cfg);
                uint64_t seed = 10;
                b.visit("", [&](const std::string&, nn::Param<float, CudaBackend>& prm) {
                    fill_normal(CudaBackend{}, prm.value, seed++, 0);
                });
                return b;
            };
            add_modes(name("block", false, p, shape), [=](State& st) {
                auto b = make();
                F x = filled(xs, 1), e = filled(es, 2);
                typename nn::Block<float, CudaBackend>::Context ctx;
                timed(st, [&] { benchmark::DoNotOptimize(b.forward(x, e, {}, &ctx).data()); });
                report_flops(st, flops);
            });
            add_modes(name("block", true, p, shape), [=](State& st) {
                auto b = make();
                F x = filled(xs, 1), e = filled(es, 2), demb = F::zeros(es);
                typename nn::Block<float, CudaBackend>::Context ctx;
                const F y = b.forward(x, e, {}, &ctx), dy = filled(y.shape(), 3);
                timed(st, [&] { benchmark::DoNotOptimize(b.backward(dy, ctx, demb).data()); });
                report_flops(st, 2 * flops);
            });
        }
}

// ---- the whole network ---------------------------------------------------------------------

using Net = nn::Precond<float, CudaBackend>;

// Images ~ N(0, sigma_data^2), one-hot labels of classes 0, 1, 2, ... and per-image sigmas.
struct Batch {
    F images, labels, sigma;
    Batch(const nn::NetworkConfig& cfg, int64_t n)
        : images(filled({n, cfg.img_channels, cfg.img_resolution, cfg.img_resolution}, 5, cfg.sigma_data)) {
        std::vector<float> l(static_cast<size_t>(n * std::max<int64_t>(cfg.label_dim, 1)), 0.0f),
            s(static_cast<size_t>(n));
        for (int64_t i = 0; cfg.label_dim && i < n; ++i) l[size_t(i * cfg.label_dim + i % cfg.label_dim)] = 1;
        for (size_t i = 0; i < s.size(); ++i) s[i] = float(std::exp(-1.2 + 1.2 * rng::normal(7, i)));
        labels = F::from_host({n, std::max<int64_t>(cfg.label_dim, 1)}, l);
        sigma = F::from_host({n}, s);
    }
};

// One optimisation step of the EDM2 recipe, as bench/bench_network.cpp runs it on the CPU:
// noise drawn, forced weight normalisation, forward with the uncertainty head, the loss,
// backward, non-finite gradients zeroed, an Adam step.
class TrainStep {
public:
    explicit TrainStep(const BenchPreset& p)
        : preset_(nn::find_preset(p.name)), n_(p.batch), net_(preset_.net, 1), adam_(net_),
          batch_(preset_.net, p.batch), noisy_(batch_.images.shape()), noise_(batch_.images.shape()),
          dD_(batch_.images.shape()), dlogvar_({p.batch}) {}

    void operator()() {
        const auto& t = preset_.train;
        const uint64_t seed = rng::substream(11, uint64_t(steps_));
        fill_normal(CudaBackend{}, noise_, seed, uint64_t(n_));
        const Shape per_image{n_, 1, noise_.shape().numel_from(1)};
        F scaled = noisy_.view(per_image);
        scale_channels_forward(CudaBackend{}, noise_.view(per_image), batch_.sigma, scaled);
        axpby(CudaBackend{}, 1.0f, batch_.images, 1.0f, noisy_);
        net_.zero_grad();
        Net::Context ctx;
        const auto out = net_.forward(noisy_, batch_.sigma, batch_.labels, {true, seed}, true, &ctx);
        edm2_loss(CudaBackend{}, out.D, batch_.images, batch_.sigma, out.logvar, preset_.net.sigma_data,
                  1.0 / double(n_), dD_, dlogvar_);
        net_.backward(dD_, dlogvar_, ctx);
        net_.visit([](const std::string&, nn::Param<float, CudaBackend>& prm) { zero_nonfinite(CudaBackend{}, prm.grad); });
        ++steps_;
        adam_.step(train::learning_rate(double(steps_ * n_), double(n_), t.lr, t.decay, t.rampup_mimg * 1e6));
    }
    [[nodiscard]] const nn::NetworkConfig& config() const { return preset_.net; }

private:
    nn::Preset preset_;
    int64_t n_, steps_ = 0;
    Net net_;
    train::Adam<float, CudaBackend> adam_;
    Batch batch_;
    F noisy_, noise_, dD_, dlogvar_;
};

void register_network(const BenchPreset& p) {
    const std::string suffix = std::string("/") + p.name + "/" + std::to_string(p.batch);
    add_modes("network/inference" + suffix, [p](State& st) {
        const auto cfg = nn::find_preset(p.name).net;
        Net net(cfg, 1);
        const Batch batch(cfg, p.batch);
        timed(st, [&] { benchmark::DoNotOptimize(net.forward(batch.images, batch.sigma, batch.labels, {}, false).D.data()); });
        report_flops(st, 2.0 * double(p.batch) * nn::network_cost(cfg).macs);
        st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
    });
    add_modes("network/train_step" + suffix, [p](State& st) {
        TrainStep step(p);
        timed(st, [&] { step(); });
        report_flops(st, 6.0 * double(p.batch) * nn::network_cost(step.config()).macs);
        st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
    });
}

void register_all() {
    for (const auto& p : bench_presets) {
        const auto cfg = nn::find_preset(p.name).net;
        const Cases c = cases_of(cfg, p.batch);
        register_elementwise(p, c, cfg);
        register_fourier(p, c);
        register_mpconv(p, c);
        register_attention(p, c);
        register_blocks(p, cfg);
        register_network(p);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (mpnet::cuda::device_count() == 0) {
        std::puts("CUDA benchmarks skipped: no CUDA device present");
        return 0;
    }
    benchmark::Initialize(&argc, argv);
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
