// What the CPU and GPU benchmark suites share before any backend: the benchmarked
// networks with their batches, the shape part of benchmark names, and random inputs.
#pragma once
#include <cstdint>
#include <string>

#include "mpnet/core/tensor.hpp"

namespace mpnet::bench {

// The networks whose shapes are benchmarked, and their batches. On the CPU the 64x64
// network's layers take seconds on two cores: they run one iteration per repetition.
struct BenchPreset {
    const char* name;
    int64_t batch;
    bool expensive;
};
inline constexpr BenchPreset bench_presets[] = {{"fmnist-s", 64, false}, {"edm2-img64-xs", 32, true}};

// "64x32x32x32"
inline std::string dims(const Shape& s) {
    std::string out;
    for (int i = 0; i < s.rank(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
    return out;
}

// N(0, stddev^2) values on backend B.
template <Backend B>
Tensor<float, B> filled(Shape s, uint64_t seed, double stddev = 1) {
    Tensor<float, B> t(s);
    fill_normal(B{}, t, seed, 0, 0, stddev);
    return t;
}

}  // namespace mpnet::bench
