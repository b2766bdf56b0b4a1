// Throughput of the CUDA backend on the layers of the edm2-img64-xs network (model
// channels 128, levels 64/32/16/8 with 128/256/384/512 channels, attention at 16 and 8),
// forward and backward, under each math mode; then a whole training step and a sampling
// call of the network. Each iteration is timed on the GPU with CUDA events.
//
//   bench_cuda_layers [--batch=N] --benchmark_filter=conv --benchmark_min_time=0.2s
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "mpnet/backend/cuda/cuda.cuh"
#include "mpnet/nn/precond.hpp"
#include "mpnet/nn/presets.hpp"

namespace {

using mpnet::CudaBackend;
using mpnet::CudaTensor;
using mpnet::Shape;
using mpnet::cuda::Math;
using F = CudaTensor<float>;

int64_t batch = 32;

F filled(Shape s, uint64_t seed) {
    F t(s);
    fill_normal(CudaBackend{}, t, seed, 0);
    return t;
}

// Times `step` with CUDA events around each iteration; `flops` and `bytes` per call feed
// the rate counters (0 leaves a counter out).
void run_timed(benchmark::State& state, const std::function<void()>& step, double flops, double bytes) {
    cudaEvent_t start, stop;
    mpnet::cuda::cuda_check(cudaEventCreate(&start), "cudaEventCreate");
    mpnet::cuda::cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
    step();  // warm-up: pool, cuBLAS handle and heuristics
    CudaBackend::synchronize();
    for (auto _ : state) {
        mpnet::cuda::cuda_check(cudaEventRecord(start, CudaBackend::stream()), "cudaEventRecord");
        step();
        mpnet::cuda::cuda_check(cudaEventRecord(stop, CudaBackend::stream()), "cudaEventRecord");
        mpnet::cuda::cuda_check(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float ms = 0;
        mpnet::cuda::cuda_check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
        state.SetIterationTime(ms / 1e3);
    }
    using benchmark::Counter;
    if (flops > 0) state.counters["TFLOP/s"] = Counter(flops / 1e12, Counter::kIsIterationInvariantRate);
    if (bytes > 0) state.counters["GB/s"] = Counter(bytes / 1e9, Counter::kIsIterationInvariantRate);
    state.counters["peak_MiB"] = double(CudaBackend::peak_bytes()) / (1 << 20);
    mpnet::cuda::cuda_check(cudaEventDestroy(start), "cudaEventDestroy");
    mpnet::cuda::cuda_check(cudaEventDestroy(stop), "cudaEventDestroy");
}

struct Conv {
    const char* name;
    int64_t cin, cout, res, k;
};
// k = 0 is a linear layer on [batch, cin].
const Conv convs[] = {
    {"enc_conv_64", 4, 128, 64, 3},   {"conv_64", 128, 128, 64, 3},     {"dec_conv_64", 256, 128, 64, 3},
    {"conv_32", 256, 256, 32, 3},     {"conv_16", 384, 384, 16, 3},     {"conv_8", 512, 512, 8, 3},
    {"out_conv_64", 128, 3, 64, 3},   {"skip_64", 256, 128, 64, 1},     {"qkv_16", 384, 1152, 16, 1},
    {"qkv_8", 512, 1536, 8, 1},       {"proj_16", 384, 384, 16, 1},     {"emb_linear", 512, 384, 0, 0},
    {"emb_noise", 128, 512, 0, 0},
};

void conv_bench(benchmark::State& state, Conv c, bool backward) {
    const bool linear = c.k == 0;
    const Shape xs = linear ? Shape{batch, c.cin} : Shape{batch, c.cin, c.res, c.res};
    const Shape ys = linear ? Shape{batch, c.cout} : Shape{batch, c.cout, c.res, c.res};
    const Shape ws = linear ? Shape{c.cout, c.cin} : Shape{c.cout, c.cin, c.k, c.k};
    F x = filled(xs, 1), w = filled(ws, 2), y(ys), dy = filled(ys, 3), dx(xs), dw(ws);
    const double macs = double(batch) * double(c.cout * c.cin) * (linear ? 1.0 : double(c.k * c.k * c.res * c.res));
    run_timed(
        state,
        [&] {
            if (!backward) linear ? linear_forward(CudaBackend{}, x, w, y) : conv2d_forward(CudaBackend{}, x, w, y);
            else if (linear) linear_backward(CudaBackend{}, x, w, dy, dx, dw);
            else conv2d_backward(CudaBackend{}, x, w, dy, dx, dw);
        },
        2 * macs * (backward ? 2 : 1), 0);
}

struct Attn {
    const char* name;
    int64_t channels, res;
};
const Attn attns[] = {{"attention_16", 384, 16}, {"attention_8", 512, 8}};

void attention_bench(benchmark::State& state, Attn a, bool backward) {
    const int64_t heads = a.channels / 64, hw = a.res * a.res;
    F qkv = filled({batch, 3 * a.channels, a.res, a.res}, 4), y({batch, a.channels, a.res, a.res});
    F dy = filled(y.shape(), 5), dqkv(qkv.shape());
    mpnet::ops::AttentionContext<float, CudaBackend> ctx;
    attention_forward(CudaBackend{}, qkv, heads, y, &ctx);
    const double flops = 2.0 * 2.0 * double(batch * a.channels * hw * hw);  // two products forward
    run_timed(
        state,
        [&] {
            if (backward) attention_backward(CudaBackend{}, ctx, heads, dy, dqkv);
            else attention_forward(CudaBackend{}, qkv, heads, y, &ctx);
        },
        backward ? 2 * flops : flops, 0);
}

// Memory-bound layers at the 64x64 level: bytes counted as one read and one write per element.
void elementwise_bench(benchmark::State& state, const std::string& op, bool backward) {
    const Shape s{batch, 128, 64, 64}, half{batch, 128, 32, 32};
    F x = filled(s, 6), b = filled(s, 7), y(s), dx(s), cat({batch, 256, 64, 64}), small = filled(half, 8);
    F scale, w = filled({384, 384, 3, 3}, 11), wn(w.shape());
    normalize_forward(CudaBackend{}, x, mpnet::ops::Dims{1}, y, &scale);
    F wscale;
    normalize_forward(CudaBackend{}, w, mpnet::ops::Dims::all_but_first(), wn, &wscale);
    const double bytes = 2.0 * double(x.bytes());
    const std::vector<double> filter{1, 1};
    using mpnet::ops::Resample;
    std::function<void()> step;
    double moved = bytes;
    if (op == "mp_silu")
        step = backward ? std::function<void()>([&] { mp_silu_backward(CudaBackend{}, x, b, dx); })
                        : [&] { mp_silu_forward(CudaBackend{}, x, y); };
    else if (op == "mp_sum")
        step = backward ? std::function<void()>([&] { mp_sum_backward(CudaBackend{}, x, 0.3, dx, y); })
                        : [&] { mp_sum_forward(CudaBackend{}, x, b, 0.3, y); };
    else if (op == "mp_cat") {
        step = backward ? std::function<void()>([&] { mp_cat_backward(CudaBackend{}, cat, 0.5, dx, y); })
                        : [&] { mp_cat_forward(CudaBackend{}, x, b, 0.5, cat); };
        moved = 2 * bytes;
    } else if (op == "pixel_norm")
        step = backward
                   ? std::function<void()>([&] { normalize_backward(CudaBackend{}, x, b, mpnet::ops::Dims{1}, scale, dx); })
                   : [&] { normalize_forward(CudaBackend{}, x, mpnet::ops::Dims{1}, y, &scale); };
    else if (op == "weight_norm") {
        step = backward ? std::function<void()>([&] {
            normalize_backward(CudaBackend{}, w, wn, mpnet::ops::Dims::all_but_first(), wscale, wn);
        })
                        : [&] { normalize_forward(CudaBackend{}, w, mpnet::ops::Dims::all_but_first(), wn, &wscale); };
        moved = 2.0 * double(w.bytes());
    } else if (op == "resample_down") {
        step = backward ? std::function<void()>([&] { resample_backward(CudaBackend{}, small, filter, Resample::down, x); })
                        : [&] { resample_forward(CudaBackend{}, x, filter, Resample::down, small); };
        moved = 1.25 * double(x.bytes());
    } else if (op == "resample_up") {
        step = backward ? std::function<void()>([&] { resample_backward(CudaBackend{}, x, filter, Resample::up, small); })
                        : [&] { resample_forward(CudaBackend{}, small, filter, Resample::up, x); };
        moved = 1.25 * double(x.bytes());
    }
    run_timed(state, step, 0, moved);
}

// A training step (forced weight normalisation, forward with saved context, loss and
// backward) and a sampling call (forward only) of the whole network.
void network_bench(benchmark::State& state, bool train) {
    const auto cfg = mpnet::nn::find_preset("edm2-img64-xs").net;
    mpnet::nn::Precond<float, CudaBackend> net(cfg, 1);
    const Shape s{batch, cfg.img_channels, cfg.img_resolution, cfg.img_resolution};
    F x = filled(s, 9), y = filled(s, 10), sigma({batch}), labels = F::zeros({batch, cfg.label_dim});
    fill(CudaBackend{}, sigma, 1.0f);
    F dD(s), dlogvar({batch});
    run_timed(
        state,
        [&] {
            if (!train) {
                benchmark::DoNotOptimize(net.forward(x, sigma, labels, {}, false).D.data());
                return;
            }
            typename mpnet::nn::Precond<float, CudaBackend>::Context ctx;
            auto out = net.forward(x, sigma, labels, {true, 1}, true, &ctx);
            edm2_loss(CudaBackend{}, out.D, y, sigma, out.logvar, cfg.sigma_data, 1.0 / double(batch), dD, dlogvar);
            net.zero_grad();
            net.backward(dD, dlogvar, ctx);
        },
        0, 0);
    state.counters["img/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
}

template <class Fn>
void add(const std::string& name, Math math, Fn fn) {
    benchmark::RegisterBenchmark((name + "/" + std::string(mpnet::cuda::to_string(math))).c_str(),
                                 [math, fn](benchmark::State& state) {
                                     mpnet::cuda::MathScope scope(math);
                                     CudaBackend::reset_peak();
                                     fn(state);
                                 })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
}

void register_all() {
    for (Math math : {Math::fp32, Math::fp16, Math::bf16}) {
        for (const Conv& c : convs)
            for (bool bwd : {false, true})
                add(std::string(c.name) + (bwd ? "/backward" : "/forward"), math,
                    [c, bwd](benchmark::State& s) { conv_bench(s, c, bwd); });
        for (const Attn& a : attns)
            for (bool bwd : {false, true})
                add(std::string(a.name) + (bwd ? "/backward" : "/forward"), math,
                    [a, bwd](benchmark::State& s) { attention_bench(s, a, bwd); });
        for (bool train : {false, true})
            add(train ? "edm2-img64-xs/train_step" : "edm2-img64-xs/sample_call", math,
                [train](benchmark::State& s) { network_bench(s, train); });
    }
    // Elementwise layers do no matrix products: the math mode does not apply.
    for (const char* op : {"mp_silu", "mp_sum", "mp_cat", "pixel_norm", "weight_norm", "resample_down", "resample_up"})
        for (bool bwd : {false, true})
            add(std::string(op) + (bwd ? "/backward" : "/forward"), Math::fp32,
                [op = std::string(op), bwd](benchmark::State& s) { elementwise_bench(s, op, bwd); });
}

}  // namespace

int main(int argc, char** argv) {
    if (mpnet::cuda::device_count() == 0) {
        std::puts("CUDA benchmarks skipped: no CUDA device present");
        return 0;
    }
    // --batch=N sets the batch of every benchmark (default 32).
    std::vector<char*> rest;
    for (int i = 0; i < argc; ++i) {
        if (std::strncmp(argv[i], "--batch=", 8) == 0) batch = std::stoll(argv[i] + 8);
        else rest.push_back(argv[i]);
    }
    int n = int(rest.size());
    benchmark::Initialize(&n, rest.data());
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
