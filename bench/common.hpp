// What the CPU benchmarks share: the benchmarked presets, random inputs, registration and
// the rate counters with their fraction of the machine's measured peak.
//
// Names are <layer>/<fwd|bwd>/<preset>/<shape> (or network/<what>/<preset>/<batch>);
// bench/torch_layers.py times the PyTorch equivalent of each under the same name, which is
// how bench/compare.py pairs them.
#pragma once
#include <benchmark/benchmark.h>

#include <functional>
#include <string>
#include <utility>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/presets.hpp"
#include "peak.hpp"

namespace mpnet::bench {

using F = CpuTensor<float>;

// The networks whose shapes are benchmarked, and their batches. The 64x64 network's
// layers take seconds on two cores: they run one iteration per repetition.
struct BenchPreset {
    const char* name;
    int64_t batch;
    bool expensive;
};
inline constexpr BenchPreset bench_presets[] = {{"fmnist-s", 64, false}, {"edm2-img64-xs", 32, true}};

inline F filled(Shape s, uint64_t seed, double stddev = 1) {
    F t(s);
    fill_normal(CpuBackend{}, t, seed, 0, 0, stddev);
    return t;
}

// "64x32x32x32"
inline std::string dims(const Shape& s) {
    std::string out;
    for (int i = 0; i < s.rank(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
    return out;
}

inline void add(const std::string& name, const BenchPreset& p, std::function<void(benchmark::State&)> fn) {
    auto* b = benchmark::RegisterBenchmark(name.c_str(), std::move(fn))->UseRealTime()->Unit(benchmark::kMillisecond);
    if (p.expensive) b->Iterations(1);
}

// Matrix work: achieved GFLOP/s and its fraction of the FMA peak.
inline void report_flops(benchmark::State& state, double flops) {
    using benchmark::Counter;
    state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
    state.counters["peak"] = Counter(flops / machine_peak().flops, Counter::kIsIterationInvariantRate);
}

// Above this many bytes moved per call a layer streams from DRAM rather than the cache.
inline constexpr double cache_resident_bytes = double(int64_t(128) << 20);

// Memory-bound work: achieved GB/s (compulsory traffic: each input read once, each output
// written once) and its fraction of the copy bandwidth at that working-set size.
inline void report_bytes(benchmark::State& state, double bytes) {
    using benchmark::Counter;
    const auto& p = machine_peak();
    const double bandwidth = bytes <= cache_resident_bytes ? p.cache_bandwidth : p.dram_bandwidth;
    state.counters["GB/s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
    state.counters["peak"] = Counter(bytes / bandwidth, Counter::kIsIterationInvariantRate);
}

}  // namespace mpnet::bench
