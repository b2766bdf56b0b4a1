// The counter-based RNG: known Philox values, moments, and independence of thread count.
#include <omp.h>

#include "golden.hpp"

using namespace mpnet;

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
    // Known-answer tests from Salmon et al. (Random123, kat_vectors): philox4x32 R=10.
    auto zero = rng::philox4x32_10(rng::Block{{0, 0, 0, 0}}, 0, 0);
    CHECK(zero.v[0] == 0x6627e8d5u);
    CHECK(zero.v[1] == 0xe169c58du);
    CHECK(zero.v[2] == 0xbc57ac4cu);
    CHECK(zero.v[3] == 0x9b00dbd8u);
    auto ones = rng::philox4x32_10(rng::Block{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu,
                                   0xffffffffu);
    CHECK(ones.v[0] == 0x408f276du);
    CHECK(ones.v[1] == 0x41c83b0eu);
    CHECK(ones.v[2] == 0xa20bc7c6u);
    CHECK(ones.v[3] == 0x6d5451fdu);
}

TEST_CASE("normal and uniform samples have the right moments") {
    const int n = 1 << 18;
    double m1 = 0, m2 = 0, m4 = 0, u1 = 0, u2 = 0;
    for (int i = 0; i < n; ++i) {
        const double z = rng::normal(123, uint64_t(i)), u = rng::uniform(123, uint64_t(i));
        m1 += z, m2 += z * z, m4 += z * z * z * z, u1 += u, u2 += u * u;
        REQUIRE((u > 0 && u < 1));
    }
    m1 /= n, m2 /= n, m4 /= n, u1 /= n, u2 /= n;
    // Standard errors at n = 2^18: mean 0.002, variance 0.003, 4th moment 0.018.
    CHECK(std::abs(m1) < 0.01);
    CHECK(std::abs(m2 - 1) < 0.015);
    CHECK(std::abs(m4 - 3) < 0.09);
    CHECK(std::abs(u1 - 0.5) < 0.003);
    CHECK(std::abs(u2 - 1.0 / 3) < 0.003);
    // Neighbouring samples are uncorrelated.
    double c = 0;
    for (int i = 0; i + 1 < n; ++i) c += rng::normal(5, uint64_t(i)) * rng::normal(5, uint64_t(i + 1));
    CHECK(std::abs(c / n) < 0.01);
}

TEST_CASE("a stream depends only on (seed, offset), not on the thread count") {
    CpuTensor<float> a(Shape{100000}), b(Shape{100000}), tail(Shape{50000});
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    fill_normal(CpuBackend{}, a, 9, 0);
    omp_set_num_threads(std::max(2, threads));
    fill_normal(CpuBackend{}, b, 9, 0);
    fill_normal(CpuBackend{}, tail, 9, 50000);
    omp_set_num_threads(threads);
    for (int64_t i = 0; i < a.numel(); ++i) REQUIRE(a.data()[i] == b.data()[i]);
    for (int64_t i = 0; i < tail.numel(); ++i) REQUIRE(tail.data()[i] == a.data()[50000 + i]);
    CHECK(rng::normal(9, 0) != rng::normal(10, 0));
    CHECK(rng::substream(1, 2) != rng::substream(1, 3));
}
