// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//
// Sample i of the stream (seed, offset) is a pure function of (seed, offset + i): no state
// is carried between samples, so the result is the same whatever the thread count, the
// batch split or the backend. Everything is written for host and device alike.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MPNET_HOST_DEVICE __host__ __device__
#else
#define MPNET_HOST_DEVICE
#endif

namespace mpnet::rng {

struct Block {
    uint32_t v[4];
};

MPNET_HOST_DEVICE constexpr Block philox4x32_10(Block ctr, uint32_t k0, uint32_t k1) {
    constexpr uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
    constexpr uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = uint64_t{m0} * ctr.v[0];
        const uint64_t p1 = uint64_t{m1} * ctr.v[2];
        const auto hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
        const auto hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
        ctr = Block{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
        k0 += w0;
        k1 += w1;
    }
    return ctr;
}

// The four 32-bit words for sample `index` of stream `seed`.
MPNET_HOST_DEVICE constexpr Block bits(uint64_t seed, uint64_t index) {
    return philox4x32_10(Block{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u}},
                         static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in the open interval (0, 1) with 53 random bits.
MPNET_HOST_DEVICE constexpr double to_unit_open(uint32_t hi, uint32_t lo) {
    const uint64_t m = (uint64_t{hi} << 21) ^ (lo >> 11);  // 53 bits
    return (static_cast<double>(m) + 0.5) * 0x1p-53;
}

MPNET_HOST_DEVICE inline double uniform(uint64_t seed, uint64_t index) {
    const Block b = bits(seed, index);
    return to_unit_open(b.v[0], b.v[1]);
}

// Standard normal by Box-Muller in double, from the two halves of one Philox block.
MPNET_HOST_DEVICE inline double normal(uint64_t seed, uint64_t index) {
    const Block b = bits(seed, index);
    const double u1 = to_unit_open(b.v[0], b.v[1]);
    const double u2 = to_unit_open(b.v[2], b.v[3]);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

// Derives an independent stream seed for a named purpose (noise, labels, dropout...).
MPNET_HOST_DEVICE constexpr uint64_t substream(uint64_t seed, uint64_t purpose) {
    const Block b = philox4x32_10(Block{{static_cast<uint32_t>(purpose), static_cast<uint32_t>(purpose >> 32),
                                         0x6D706E65u, 0x74000000u}},
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    return (uint64_t{b.v[0]} << 32) | b.v[1];
}

// A seed kept in a tensor of doubles, as its upper and lower 32 bits (each exact in a
// double), so that kernels can read a seed that changes between replays of a CUDA graph.
struct SeedWords {
    double hi, lo;
};
MPNET_HOST_DEVICE constexpr SeedWords to_words(uint64_t seed) {
    return {static_cast<double>(seed >> 32), static_cast<double>(seed & 0xFFFFFFFFu)};
}
MPNET_HOST_DEVICE constexpr uint64_t from_words(double hi, double lo) {
    return (static_cast<uint64_t>(hi) << 32) | static_cast<uint64_t>(lo);
}

}  // namespace mpnet::rng
