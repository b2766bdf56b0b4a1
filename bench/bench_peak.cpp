// The machine's measured ceilings: FMA peak, Eigen's SGEMM (what a general-purpose GEMM
// reaches on it) and copy bandwidth from the caches to DRAM. The layer benchmarks report
// fractions of the FMA peak and of the copy bandwidth (see peak.hpp).
#include <benchmark/benchmark.h>

#include <immintrin.h>

#include <Eigen/Core>
#include <vector>

#include "mpnet/backend/cpu/bf16_rate.hpp"
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

#if defined(__x86_64__) && defined(__GNUC__)
// The CPU's own FMA peak where it has AVX-512, whatever width this build targets: the
// ceiling of libraries that pick their kernels at run time, as PyTorch's oneDNN does.
__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t rounds) {
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
        __m512 acc[fma_chains];
        for (int c = 0; c < fma_chains; ++c) acc[c] = _mm512_set1_ps(float(c));
        const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
        for (int64_t r = 0; r < rounds; ++r)
            for (int c = 0; c < fma_chains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
        alignas(64) float lanes[16];
        for (int c = 0; c < fma_chains; ++c) {
            _mm512_store_ps(lanes, acc[c]);
            for (float v : lanes) total += v;
        }
    }
    return total;
}

void peak_fma_avx512(benchmark::State& state) {
    if (!__builtin_cpu_supports("avx512f")) {
        state.SkipWithError("this CPU has no AVX-512");
        return;
    }
    const int64_t rounds = 1 << 20;
    for (auto _ : state) benchmark::DoNotOptimize(fma_loop_avx512(rounds));
    const double flops = 2.0 * fma_chains * 16 * double(rounds) * omp_get_max_threads();
    state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
}
BENCHMARK(peak_fma_avx512)->Name("peak/fma_avx512")->UseRealTime();
#endif

// The bf16 products' ceiling: vdpbf16ps on independent chains on every thread, 64 FLOP an
// instruction (32 multiply-adds). Against peak/fma it shows whether --math bf16 can pay on
// this CPU (mpnet/backend/cpu/bf16_rate.hpp).
void peak_bf16_dot(benchmark::State& state) {
#if MPNET_CPU_SIMD && defined(__AVX512F__)
    if (!mpnet::cpu::bf16::cpu_supported()) {
        state.SkipWithError("this CPU has no AVX512-BF16");
        return;
    }
    const int64_t rounds = 1 << 18;
    for (auto _ : state) {
#pragma omp parallel
        benchmark::DoNotOptimize(mpnet::cpu::bf16::detail::time_rounds<true>(rounds));
    }
    const double flops = 64.0 * 12 * double(rounds) * omp_get_max_threads();
    state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
    state.counters["of_fma_peak"] = Counter(flops / machine_peak().flops, Counter::kIsIterationInvariantRate);
#else
    state.SkipWithError("this build does not target AVX-512");
#endif
}
BENCHMARK(peak_bf16_dot)->Name("peak/bf16_dot")->UseRealTime();

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
