// What the CPU benchmarks share: random inputs, registration and the rate counters with
// their fraction of the machine's measured peak (the presets: presets.hpp).
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
#include "presets.hpp"

namespace mpnet::bench {

using F = CpuTensor<float>;

inline F filled(Shape s, uint64_t seed, double stddev = 1) { return filled<CpuBackend>(s, seed, stddev); }

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
