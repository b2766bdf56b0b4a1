// The machine's measured ceilings: FMA peak, Eigen's SGEMM (what a general-purpose GEMM
// reaches on it) and copy bandwidth from the caches to DRAM. The layer benchmarks report
// fractions of the FMA peak and of the copy bandwidth (see peak.hpp).
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <vector>

#include "peak.hpp"

namespace {

using benchmark::Counter;
using namespace mpnet::bench;

void peak_fma(benchmark::State& state) {
    const int64_t rounds = 1 << 20;
    for (auto _ : state) benchmark::DoNotOptimize(fma_loop(rounds));
    const double flops = fma_flops_per_round() * double(rounds) * omp_get_max_threads();
    state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
    state.SetLabel(std::to_string(fma_lanes) + " lanes x " + std::to_string(omp_get_max_threads()) + " threads");
}
BENCHMARK(peak_fma)->Name("peak/fma")->UseRealTime();

void peak_sgemm(benchmark::State& state) {
    const auto n = Eigen::Index(state.range(0));
    Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
    }
    const double flops = 2.0 * double(n) * double(n) * double(n);
    state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
    state.counters["peak"] = Counter(flops / machine_peak().flops, Counter::kIsIterationInvariantRate);
}
BENCHMARK(peak_sgemm)->Name("peak/sgemm_eigen")->Arg(1024)->Arg(2048)->UseRealTime();

// Argument: MiB per buffer.
void peak_copy(benchmark::State& state) {
    const int64_t n = state.range(0) << 20 >> 2;
    std::vector<float> x(size_t(n), 1.0f), y(size_t(n), 0.0f);
    copy_loop(x.data(), y.data(), n);
    for (auto _ : state) {
        copy_loop(x.data(), y.data(), n);
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GB/s"] = Counter(copy_bytes(n) * 1e-9, Counter::kIsIterationInvariantRate);
}
BENCHMARK(peak_copy)->Name("peak/copy_MiB")->RangeMultiplier(4)->Range(1, 512)->UseRealTime();

}  // namespace
