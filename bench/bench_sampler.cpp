// Sampling speed on the CPU: seconds per image for the fmnist-s preset with the default
// 32 Heun steps (63 network evaluations) at batch 64, float32, and one network evaluation
// at that batch, so that the sampler's own cost shows as the difference.
// bench/torch_sampler.py times the same sampling in PyTorch.
#include <benchmark/benchmark.h>

#include <numeric>
#include <vector>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/sample/edm_sampler.hpp"
#include "mpnet/sample/seeds.hpp"

using namespace mpnet;

namespace {

using Net = nn::Precond<float, CpuBackend>;

// A trained network's gains are nonzero; a fresh one's are 0. The cost is the same, but
// this keeps activations in their usual range.
Net fmnist_s() {
    Net net(nn::find_preset("fmnist-s").net, 0);
    net.visit([](const std::string& name, nn::Param<float, CpuBackend>& p) {
        if (name.ends_with("gain")) fill(CpuBackend{}, p.value, 1.0f);
    });
    return net;
}

struct Inputs {
    CpuTensor<float> noise, labels;
};

Inputs seeded_inputs(const nn::NetworkConfig& cfg, int64_t batch) {
    std::vector<uint64_t> seeds(static_cast<std::size_t>(batch));
    std::iota(seeds.begin(), seeds.end(), 0);
    Inputs in{CpuTensor<float>(Shape{batch, cfg.img_channels, cfg.img_resolution, cfg.img_resolution}), {}};
    sample::fill_seed_noise(in.noise, std::span<const uint64_t>(seeds));
    std::vector<int64_t> classes;
    for (uint64_t s : seeds) classes.push_back(sample::seed_class(s, cfg.label_dim));
    in.labels = sample::one_hot<float, CpuBackend>(classes, cfg.label_dim);
    return in;
}

void per_image(benchmark::State& state, int64_t batch) {
    state.counters["s/image"] = benchmark::Counter(double(state.iterations()) * double(batch),
                                                   benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Args: batch, steps.
void BM_edm_sample_fmnist_s(benchmark::State& state) {
    Net net = fmnist_s();
    sample::NetworkDenoiser<float, CpuBackend> d(net);
    const int64_t batch = state.range(0);
    const Inputs in = seeded_inputs(net.config(), batch);
    sample::SamplerOptions o;
    o.steps = int(state.range(1));
    int64_t nfe = 0;
    for (auto _ : state) {
        const auto r = sample::edm_sample(d, nullptr, in.noise, in.labels, o);
        benchmark::DoNotOptimize(r.images.data());
        nfe = r.nfe;
    }
    per_image(state, batch);
    state.counters["nfe"] = double(nfe);
}
// One run is about a minute on two cores; a single iteration is already a stable figure.
BENCHMARK(BM_edm_sample_fmnist_s)->Args({64, 32})->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);

// Arg: batch. One denoiser evaluation (the network at one shared sigma).
void BM_denoise_fmnist_s(benchmark::State& state) {
    Net net = fmnist_s();
    sample::NetworkDenoiser<float, CpuBackend> d(net);
    const int64_t batch = state.range(0);
    const Inputs in = seeded_inputs(net.config(), batch);
    for (auto _ : state) benchmark::DoNotOptimize(d(in.noise, 1.0, in.labels).data());
    per_image(state, batch);
}
BENCHMARK(BM_denoise_fmnist_s)->Arg(64)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
