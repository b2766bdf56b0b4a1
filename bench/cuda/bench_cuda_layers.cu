// The GPU counterpart of bench/bench_layers.cpp and bench/bench_network.cpp: the layer list
// of bench/layers.hpp (the same shapes and names, <layer>/<fwd|bwd>/<preset>/<shape>),
// layers with matrix work once per math mode (name suffix /fp32, /fp16, /bf16); then
// network/inference (and network/inference_graph, the same as a replayed CUDA graph) and
// network/train_step. Each iteration is timed on the GPU with CUDA
// events around it.
//
//   bench_cuda_layers --benchmark_filter='mpconv3x3/.*/edm2-img64-xs' --benchmark_min_time=0.2s
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "../layers.hpp"
#include "mpnet/backend/cuda/cuda.cuh"
#include "mpnet/nn/precond.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/sample/cuda_graph_denoiser.cuh"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/schedule.hpp"

namespace {

using namespace mpnet;
using benchmark::Counter;
using benchmark::State;
using bench::BenchPreset;
using mpnet::cuda::Math;
using F = CudaTensor<float>;

constexpr Math math_modes[] = {Math::fp32, Math::fp16, Math::bf16};

F filled(Shape s, uint64_t seed, double stddev = 1) { return bench::filled<CudaBackend>(s, seed, stddev); }

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

// The layer list of bench/layers.hpp on the GPU. Every preset runs to the benchmark's
// minimum time: a 64x64 layer takes milliseconds here.
struct CudaHarness {
    using backend = CudaBackend;
    static void add(const std::string& name, const BenchPreset&, std::function<void(State&)> fn) {
        ::add(name, std::move(fn));
    }
    static void add_matrix(const std::string& name, const BenchPreset&, const std::function<void(State&)>& fn) {
        add_modes(name, fn);
    }
    static void time(State& st, const std::function<void()>& step) { timed(st, step); }
    static void report_flops(State& st, double flops) { ::report_flops(st, flops); }
    static void report_bytes(State& st, double bytes) { ::report_bytes(st, bytes); }
};

// ---- the whole network ---------------------------------------------------------------------

// A is the activations' storage: float, or float16 / bfloat16 (--precision).
template <class A = float>
using Net = nn::Precond<float, CudaBackend, A>;

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
template <class A = float>
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
        typename Net<A>::Context ctx;
        const auto out = net_.forward(noisy_, batch_.sigma, batch_.labels, {true, seed}, true, &ctx);
        edm2_loss(CudaBackend{}, out.D, batch_.images, batch_.sigma, out.logvar, preset_.net.sigma_data,
                  1.0 / double(n_), dD_, dlogvar_, loss_);
        net_.backward(dD_, dlogvar_, ctx);
        clear_nonfinite(CudaBackend{}, net_.flat_grads());
        ++steps_;
        adam_.step(train::learning_rate(double(steps_ * n_), double(n_), t.lr, t.decay, t.rampup_mimg * 1e6));
    }
    [[nodiscard]] const nn::NetworkConfig& config() const { return preset_.net; }

private:
    nn::Preset preset_;
    int64_t n_, steps_ = 0;
    Net<A> net_;
    train::Adam<float, CudaBackend> adam_;
    Batch batch_;
    F noisy_, noise_, dD_, dlogvar_;
    CudaTensor<double> loss_{Shape{1}};
};

void register_network(const BenchPreset& p) {
    const std::string suffix = std::string("/") + p.name + "/" + std::to_string(p.batch);
    add_modes("network/inference" + suffix, [p](State& st) {
        const auto cfg = nn::find_preset(p.name).net;
        Net<> net(cfg, 1);
        const Batch batch(cfg, p.batch);
        timed(st, [&] { benchmark::DoNotOptimize(net.forward(batch.images, batch.sigma, batch.labels, {}, false).D.data()); });
        report_flops(st, 2.0 * double(p.batch) * nn::network_cost(cfg).macs);
        st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
    });
    // The sampler's network evaluation as a replayed CUDA graph (sample/cuda_graph_denoiser.cuh):
    // the same forward pass, launched as one graph, plus copying its input in and output out.
    add_modes("network/inference_graph" + suffix, [p](State& st) {
        const auto cfg = nn::find_preset(p.name).net;
        Net<> net(cfg, 1);
        const Batch batch(cfg, p.batch);
        sample::CudaGraphDenoiser<float> denoise(net);
        timed(st, [&] { benchmark::DoNotOptimize(denoise(batch.images, 1.0, batch.labels).data()); });
        report_flops(st, 2.0 * double(p.batch) * nn::network_cost(cfg).macs);
        st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
    });
    add_modes("network/train_step" + suffix, [p](State& st) {
        TrainStep<> step(p);
        timed(st, [&] { step(); });
        report_flops(st, 6.0 * double(p.batch) * nn::network_cost(step.config()).macs);
        st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
    });
    // Activations stored in 16 bits (float32 math: the products take the 16-bit operands).
    auto add_storage = [&]<class A>(std::type_identity<A>) {
        const std::string tail = suffix + "/act-" + A::name;
        add("network/inference" + tail, [p](State& st) {
            const auto cfg = nn::find_preset(p.name).net;
            Net<A> net(cfg, 1);
            const Batch batch(cfg, p.batch);
            timed(st, [&] { benchmark::DoNotOptimize(net.forward(batch.images, batch.sigma, batch.labels, {}, false).D.data()); });
            report_flops(st, 2.0 * double(p.batch) * nn::network_cost(cfg).macs);
            st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
        });
        add("network/train_step" + tail, [p](State& st) {
            TrainStep<A> step(p);
            timed(st, [&] { step(); });
            report_flops(st, 6.0 * double(p.batch) * nn::network_cost(step.config()).macs);
            st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
        });
    };
    add_storage(std::type_identity<float16>{});
    add_storage(std::type_identity<bfloat16>{});
}

void register_all() {
    for (const auto& p : bench::bench_presets) {
        bench::register_layers<CudaHarness>(p);
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
