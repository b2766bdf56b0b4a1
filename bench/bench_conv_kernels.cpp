// Throughput of the CPU convolution kernels alone at the shapes of the small 32x32 U-Net
// at batch 64: forward, weight gradient only (dx not asked for) and the full backward
// (dx and dweight), with float32 operands and with bf16 ones (the last argument: 0 or 1;
// bf16 rows are skipped on CPUs without AVX512-BF16). Counters report GFLOP/s, counting
// 2 N Cout Cin k^2 H W per product: for the 3x3 products that run as Winograd's F(2x2, 3x3),
// which does 16 multiply-adds where that count has 36, an effective rate. conv_direct runs the
// forward (last argument 0) and the weight gradient (1) as the direct products, for comparison
// with conv_forward and conv_backward's weight-only rows.
//
//   bench_conv_kernels --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <optional>

#include "mpnet/backend/cpu/cpu.hpp"

namespace {

using mpnet::CpuBackend;
using mpnet::CpuTensor;
using mpnet::Shape;

struct ConvShape {
    int64_t n, cin, cout, res, k;
};

// The convolutions of the fmnist-s preset (32x32, channels 32/64/96, batch 64) that
// carry most of its work: the input and output convolutions, encoder and decoder 3x3s
// (decoder inputs widened by the skip concatenation), 1x1 skips and attention
// projections; then wider 3x3s for comparison with larger models.
constexpr ConvShape shapes[] = {
    {64, 2, 32, 32, 3},   {64, 32, 32, 32, 3},  {64, 64, 64, 32, 3},  {64, 96, 32, 32, 3},   {64, 64, 32, 32, 3},
    {64, 32, 1, 32, 3},   {64, 64, 64, 16, 3},  {64, 96, 96, 16, 3},  {64, 160, 64, 16, 3},  {64, 96, 64, 16, 3},
    {64, 96, 96, 8, 3},   {64, 192, 96, 8, 3},  {64, 160, 96, 8, 3},  {64, 96, 32, 32, 1},   {64, 160, 64, 16, 1},
    {64, 96, 288, 8, 1},  {64, 96, 96, 8, 1},   {64, 128, 128, 32, 3}, {64, 256, 256, 16, 3}, {64, 256, 256, 8, 3},
};

CpuTensor<float> filled(Shape s, uint64_t seed) {
    CpuTensor<float> t(s);
    mpnet::cpu::fill_normal(CpuBackend{}, t, seed, 0);
    return t;
}

double flops(const ConvShape& s) { return 2.0 * double(s.n * s.cout * s.cin * s.k * s.k * s.res * s.res); }

// Sets the math the row asks for (its last argument); false where this CPU cannot.
bool set_math(benchmark::State& state, int arg, std::optional<mpnet::cpu::MathScope>& scope) {
    if (state.range(arg) == 0) return true;
    if (!mpnet::cpu::bf16_unavailable().empty()) {
        state.SkipWithError(("bf16 not available: " + mpnet::cpu::bf16_unavailable()).c_str());
        for (auto _ : state) break;
        return false;
    }
    scope.emplace(mpnet::cpu::Math::bf16);
    return true;
}

void set_labels(benchmark::State& state, const ConvShape& s, double products, bool bf16) {
    state.counters["GFLOP/s"] =
        benchmark::Counter(products * flops(s) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::to_string(s.cin) + "->" + std::to_string(s.cout) + " " + std::to_string(s.res) + "x" +
                   std::to_string(s.res) + " k" + std::to_string(s.k) + (bf16 ? " bf16" : ""));
}

void conv_forward(benchmark::State& state) {
    std::optional<mpnet::cpu::MathScope> math;
    if (!set_math(state, 1, math)) return;
    const ConvShape s = shapes[state.range(0)];
    auto x = filled({s.n, s.cin, s.res, s.res}, 1), w = filled({s.cout, s.cin, s.k, s.k}, 2);
    CpuTensor<float> y({s.n, s.cout, s.res, s.res});
    for (auto _ : state) {
        conv2d_forward(CpuBackend{}, x, w, y);
        benchmark::DoNotOptimize(y.data());
    }
    set_labels(state, s, 1, state.range(1) != 0);
}

#if MPNET_CPU_SIMD
// product = 0: the forward, 1: the weight gradient, as conv_gemm.hpp's direct products.
void conv_direct(benchmark::State& state) {
    const ConvShape s = shapes[state.range(0)];
    const bool weight = state.range(1) != 0;
    auto x = filled({s.n, s.cin, s.res, s.res}, 1), w = filled({s.cout, s.cin, s.k, s.k}, 2);
    auto dy = filled({s.n, s.cout, s.res, s.res}, 3);
    CpuTensor<float> out(weight ? w.shape() : dy.shape());
    const mpnet::cpu::conv::Images<float> images{x.data(), s.n, s.cin, s.res, s.res, s.k};
    for (auto _ : state) {
        if (weight) mpnet::cpu::conv::weight_product(images, dy.data(), s.cout, out.data());
        else mpnet::cpu::conv::output_product(images, w.data(), s.cout, out.data());
        benchmark::DoNotOptimize(out.data());
    }
    set_labels(state, s, 1, false);
}
#endif

// with_dx = 0: weight gradient only; 1: weight and input gradients.
void conv_backward(benchmark::State& state) {
    std::optional<mpnet::cpu::MathScope> math;
    if (!set_math(state, 2, math)) return;
    const ConvShape s = shapes[state.range(0)];
    const bool with_dx = state.range(1) != 0;
    auto x = filled({s.n, s.cin, s.res, s.res}, 1), w = filled({s.cout, s.cin, s.k, s.k}, 2);
    auto dy = filled({s.n, s.cout, s.res, s.res}, 3);
    CpuTensor<float> dw(w.shape()), dx = with_dx ? CpuTensor<float>(x.shape()) : CpuTensor<float>();
    for (auto _ : state) {
        conv2d_backward(CpuBackend{}, x, w, dy, dx, dw);
        benchmark::DoNotOptimize(dw.data());
    }
    set_labels(state, s, with_dx ? 2 : 1, state.range(2) != 0);
}

void all_shapes(benchmark::internal::Benchmark* b) {
    for (int64_t bf16 : {0, 1})
        for (int64_t i = 0; i < int64_t(std::size(shapes)); ++i) b->Args({i, bf16});
}

void all_shapes_backward(benchmark::internal::Benchmark* b) {
    for (int64_t bf16 : {0, 1})
        for (int64_t with_dx : {0, 1})
            for (int64_t i = 0; i < int64_t(std::size(shapes)); ++i) b->Args({i, with_dx, bf16});
}

BENCHMARK(conv_forward)->Apply(all_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(conv_backward)->Apply(all_shapes_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
#if MPNET_CPU_SIMD
BENCHMARK(conv_direct)
    ->ArgsProduct({benchmark::CreateDenseRange(0, int64_t(std::size(shapes)) - 1, 1), {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
#endif

}  // namespace

BENCHMARK_MAIN();
