// The feature networks of mpnet-metrics (docs/metrics.md): images per second of
// Inception-v3 and of DINOv2 ViT-L/14 (full depth, 24 blocks) on preprocessed batches, and
// of the host preprocessing. The weights are the tests' formula weights (the timing does
// not depend on their values); bench/torch_metrics.py times the reference networks.
#include <benchmark/benchmark.h>

#include <string>

#include <nlohmann/json.hpp>

#include "../tests/formula_weights.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/metrics/dinov2.hpp"
#include "mpnet/metrics/frechet.hpp"
#include "mpnet/metrics/inception_v3.hpp"
#include "mpnet/metrics/preprocess.hpp"

using namespace mpnet;

namespace {

const io::SafetensorsFile& golden() {
    static const auto f = io::SafetensorsFile::open(std::string(MPNET_TEST_DATA) + "/metrics_golden.safetensors");
    return f;
}

// ViT-L/14 at full depth: the golden file's depth-2 shapes with block 0's repeated.
io::SafetensorsFile dinov2_vitl14() {
    auto shapes = nlohmann::json::parse(golden().metadata().at("dinov2_shapes"));
    nlohmann::json full;
    for (const auto& [name, shape] : shapes.items()) {
        if (!name.starts_with("blocks.")) full[name] = shape;
        else if (name.starts_with("blocks.0."))
            for (int i = 0; i < 24; ++i) full["blocks." + std::to_string(i) + name.substr(8)] = shape;
    }
    io::SafetensorsWriter w;
    for (const auto& [name, shape_json] : full.items()) {
        const auto shape = shape_json.get<std::vector<int64_t>>();
        const auto v = test::formula_values(name, shape);
        w.add<float>(name, shape, std::span<const float>(v));
    }
    return io::SafetensorsFile::from_bytes(w.to_bytes(), "ViT-L/14 formula weights");
}

CpuTensor<float> random_input(int64_t n, int64_t side) {
    CpuTensor<float> x(Shape{n, 3, side, side});
    fill_normal(CpuBackend{}, x, 1, 0);
    return x;
}

void BM_inception_v3(benchmark::State& state) {
    static const auto net = metrics::InceptionV3<float, CpuBackend>::load(test::formula_weights(golden(), "inception"));
    const auto x = random_input(state.range(0), metrics::inception_size);
    for (auto _ : state) benchmark::DoNotOptimize(net.features(x).data());
    state.SetItemsProcessed(state.iterations() * state.range(0));  // images
}
BENCHMARK(BM_inception_v3)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5);

void BM_dinov2_vitl14(benchmark::State& state) {
    static const auto net = metrics::DinoV2<float, CpuBackend>::load(dinov2_vitl14(), metrics::dinov2_size);
    const auto x = random_input(state.range(0), metrics::dinov2_size);
    for (auto _ : state) benchmark::DoNotOptimize(net.features(x).data());
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_dinov2_vitl14)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

// Host preprocessing of 64x64 and 512x512 images (ImageNet-64 and -512 samples).
void BM_preprocess(benchmark::State& state) {
    const int64_t side = state.range(0), n = 16;
    std::vector<uint8_t> pixels(std::size_t(n * 3 * side * side));
    for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(i * 2654435761u >> 24);
    const metrics::ImageBatch batch{pixels, n, 3, side, side};
    for (auto _ : state) {
        benchmark::DoNotOptimize(metrics::inception_input(batch).data());
        benchmark::DoNotOptimize(metrics::dinov2_input(batch).data());
    }
    state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_preprocess)->Arg(64)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

// The Fréchet distance between two 2048-d statistics (FID's size), from random features.
void BM_frechet_2048(benchmark::State& state) {
    const int64_t d = state.range(0), n = 3 * d;
    metrics::FeatureStats s[2];
    for (int k = 0; k < 2; ++k) {
        CpuTensor<double> f(Shape{n, d});
        fill_normal(CpuBackend{}, f, uint64_t(10 + k), 0);
        metrics::StatsAccumulator acc(d);
        acc.add(std::span<const double>(f.data(), std::size_t(f.numel())), n);
        s[k] = acc.finish();
    }
    for (auto _ : state) benchmark::DoNotOptimize(metrics::frechet_distance(s[0], s[1]));
}
BENCHMARK(BM_frechet_2048)->Arg(1024)->Arg(2048)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
