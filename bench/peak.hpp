// This machine's measured ceilings, the yardsticks of every layer benchmark:
//   - FMA peak: independent fused multiply-add chains in registers on every thread, at the
//     vector width the library is compiled for (AVX2 under the default x86-64-v3 flags);
//   - copy bandwidth: y[i] = x[i] over two buffers on every thread, counting the bytes
//     read plus the bytes written (as STREAM does), at a cache-resident and at a DRAM size.
// The layer benchmarks divide their achieved rate by these to report a fraction of peak;
// the values are measured once per process (best of a few short runs, so that a briefly
// busy machine does not lower the yardstick).
#pragma once
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace mpnet::bench {

// Floating-point operations of `rounds` rounds of fma_chains on one thread.
inline constexpr int fma_chains = 12;  // enough independent chains to hide FMA latency on both ports

#if defined(__AVX512F__)
inline constexpr int fma_lanes = 16;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int fma_lanes = 8;
#else
inline constexpr int fma_lanes = 1;
#endif

inline double fma_flops_per_round() { return 2.0 * fma_chains * fma_lanes; }

// Runs `rounds` rounds of fma_chains independent FMAs on each thread; returns a value that
// depends on all of them so that the compiler keeps the work.
inline float fma_loop(int64_t rounds) {
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
#if defined(__AVX512F__)
        __m512 acc[fma_chains];
        for (int c = 0; c < fma_chains; ++c) acc[c] = _mm512_set1_ps(float(c));
        const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
        for (int64_t r = 0; r < rounds; ++r)
            for (int c = 0; c < fma_chains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
        alignas(64) float lanes[16];  // (GCC 12 warns inside _mm512_reduce_add_ps)
        for (int c = 0; c < fma_chains; ++c) {
            _mm512_store_ps(lanes, acc[c]);
            for (float v : lanes) total += v;
        }
#elif defined(__AVX2__) && defined(__FMA__)
        __m256 acc[fma_chains];
        for (int c = 0; c < fma_chains; ++c) acc[c] = _mm256_set1_ps(float(c));
        const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
        for (int64_t r = 0; r < rounds; ++r)
            for (int c = 0; c < fma_chains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
        alignas(32) float lanes[8];
        for (int c = 0; c < fma_chains; ++c) {
            _mm256_store_ps(lanes, acc[c]);
            for (float v : lanes) total += v;
        }
#else
        float acc[fma_chains];
        for (int c = 0; c < fma_chains; ++c) acc[c] = float(c);
        for (int64_t r = 0; r < rounds; ++r)
            for (int c = 0; c < fma_chains; ++c) acc[c] = acc[c] * 0.999f + 1e-3f;
        for (float v : acc) total += v;
#endif
    }
    return total;
}

// y = x over n floats, split statically over the threads as the library's loops are.
inline void copy_loop(const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i];
}

// Bytes a copy of n floats moves: each element read once and written once.
inline double copy_bytes(int64_t n) { return 2.0 * double(n) * sizeof(float); }

// Buffer sizes (floats per buffer) of the two copy yardsticks: 8 MiB buffers are resident
// in the last-level cache but not in the private L2 caches (the working set of an
// activation-sized layer at 32x32x32 and batch 64); 256 MiB buffers, twice the shared
// last-level cache together, stream from DRAM.
inline constexpr int64_t cache_copy_floats = int64_t(8) << 20 >> 2;
inline constexpr int64_t dram_copy_floats = int64_t(256) << 20 >> 2;

struct MachinePeak {
    double flops = 0;           // FMA peak, FLOP/s
    double cache_bandwidth = 0;  // copy, bytes/s, last-level-cache resident
    double dram_bandwidth = 0;   // copy, bytes/s, from DRAM
};

namespace detail {
template <class F>
double best_seconds(int runs, F&& f) {
    double best = 1e30;
    for (int r = 0; r < runs; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

inline double copy_rate(int64_t n, int runs) {
    std::vector<float> x(size_t(n), 1.0f), y(size_t(n), 0.0f);
    copy_loop(x.data(), y.data(), n);  // first touch
    const double s = best_seconds(runs, [&] { copy_loop(x.data(), y.data(), n); });
    return copy_bytes(n) / s;
}

inline MachinePeak measure_peak() {
    MachinePeak p;
    const int64_t rounds = 4 << 20;
    volatile float sink = 0;
    const double s = best_seconds(5, [&] { sink = sink + fma_loop(rounds); });
    p.flops = fma_flops_per_round() * double(rounds) * omp_get_max_threads() / s;
    p.cache_bandwidth = copy_rate(cache_copy_floats, 20);
    p.dram_bandwidth = copy_rate(dram_copy_floats, 3);
    return p;
}
}  // namespace detail

// Measured on first use (about a second), then cached for the rest of the process.
inline const MachinePeak& machine_peak() {
    static const MachinePeak peak = detail::measure_peak();
    return peak;
}

}  // namespace mpnet::bench
