// Whether bf16 products pay on this CPU, measured.
//
// vdpbf16ps does two multiply-adds per float32 lane where an FMA does one, but CPUs issue
// the two instructions at different rates. On AMD Zen 4 it issues as fast as an FMA, so
// bf16 products run at twice float32's multiply-add rate. On an Intel Emerald Rapids core
// (measured; these server cores get their bf16 throughput from AMX) it issues at a quarter
// of the FMA rate, so bf16 products there run at half of float32's: `--math bf16` makes the
// convolutions slower, not faster. No CPU flag tells the two apart, so the rate is timed:
// both instructions on 12 independent register chains (enough to hide either latency), on
// the calling thread, best of a few short runs (a few milliseconds in all). The result only
// ever decides what a program says, never what it computes, so a noisy timing cannot
// change a run's numbers.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "mpnet/backend/cpu/bf16.hpp"

namespace mpnet::cpu::bf16 {

// Instructions per second of each kind, one thread.
struct ProductRate {
    double fma_per_second = 0;  // vfmadd231ps zmm: 16 multiply-adds
    double dot_per_second = 0;  // vdpbf16ps zmm: 32 multiply-adds
    // Multiply-adds per second of bf16 products over float32's.
    [[nodiscard]] double speedup() const { return fma_per_second > 0 ? 2 * dot_per_second / fma_per_second : 0; }
};

#if MPNET_CPU_SIMD && defined(__AVX512F__)
namespace detail {
#define MPNET_BF16_RATE_CHAINS(op)                                                                             \
    op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define MPNET_BF16_RATE_FMA(i) "vfmadd231ps %13, %12, %" #i "\n\t"
#define MPNET_BF16_RATE_DOT(i) "vdpbf16ps %13, %12, %" #i "\n\t"

// Seconds for `rounds` rounds of 12 independent instructions of one kind.
template <bool dot>
double time_rounds(int64_t rounds) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
           c9 = c0, c10 = c0, c11 = c0;
    // Small normal operands (1e-3 as float, its bit pattern as bf16 pairs): no overflow and
    // no subnormal slow path whatever the round count.
    const __m512 a = _mm512_set1_ps(1e-3f), b = _mm512_set1_ps(1e-3f);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < rounds; ++r) {
        if constexpr (dot)
            asm volatile(MPNET_BF16_RATE_CHAINS(MPNET_BF16_RATE_DOT)
                         : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5), "+v"(c6), "+v"(c7),
                           "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11)
                         : "v"(a), "v"(b));
        else
            asm volatile(MPNET_BF16_RATE_CHAINS(MPNET_BF16_RATE_FMA)
                         : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5), "+v"(c6), "+v"(c7),
                           "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11)
                         : "v"(a), "v"(b));
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
#undef MPNET_BF16_RATE_CHAINS
#undef MPNET_BF16_RATE_FMA
#undef MPNET_BF16_RATE_DOT
}  // namespace detail
#endif

// Measures the rates now; zeros where the CPU (or build) has no vdpbf16ps.
inline ProductRate measure_product_rate() {
    ProductRate rate;
#if MPNET_CPU_SIMD && defined(__AVX512F__)
    if (!cpu_supported()) return rate;
    constexpr int64_t rounds = 100'000;  // 1.2 M instructions: 0.2-1 ms each
    double fma = 1e30, dot = 1e30;
    (void)detail::time_rounds<false>(rounds);  // wakes the 512-bit units at their working clock
    for (int run = 0; run < 3; ++run) {
        fma = std::min(fma, detail::time_rounds<false>(rounds));
        dot = std::min(dot, detail::time_rounds<true>(rounds));
    }
    rate.fma_per_second = 12.0 * double(rounds) / fma;
    rate.dot_per_second = 12.0 * double(rounds) / dot;
#endif
    return rate;
}

// Measured on first use, then kept for the process.
inline const ProductRate& product_rate() {
    static const ProductRate rate = measure_product_rate();
    return rate;
}

// A sentence for whoever asked for bf16 products, when they will be slower than float32
// on this CPU; empty when they pay (or could not be timed).
inline std::string slower_than_fp32(const ProductRate& rate) {
    if (rate.fma_per_second <= 0 || rate.dot_per_second <= 0 || rate.speedup() >= 1) return {};
    char text[256];
    std::snprintf(text, sizeof text,
                  "bf16 products are slower than float32 on this CPU: its vdpbf16ps does %.2fx the "
                  "multiply-adds per second of float32 FMAs (measured), so --math bf16 runs the "
                  "convolutions slower than fp32",
                  rate.speedup());
    return text;
}

}  // namespace mpnet::cpu::bf16
