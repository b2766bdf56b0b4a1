// The bf16 convolution products (CPU, AVX512-BF16): rounding to bf16, the pair layouts, and
// forward and backward against a direct convolution in double of the bf16-rounded operands.
//
// vdpbf16ps multiplies bf16 exactly and sums in float32, so against the rounded operands
// the products agree to float32 summation error, the same 1e-5 of the float kernels'
// test; against unrounded operands they would differ by about 2^-9 relative, so a pair
// put in the wrong place, or float32 operands where bf16 were meant, fails the check.
#include <omp.h>

#include <array>
#include <bit>
#include <cmath>
#include <limits>

#include "concurrently.hpp"
#include "conv_reference.hpp"
#include "mpnet/backend/cpu/bf16.hpp"
#include "mpnet/backend/cpu/bf16_rate.hpp"
#include "mpnet/ops/conv_geometry.hpp"

// The build that proves the run-time choice must not target the instruction itself.
#if defined(MPNET_TEST_BF16_AT_RUN_TIME) && defined(__AVX512BF16__)
#error "mpnet_conv_avx512_tests must be built without AVX512-BF16 as a compiler target"
#endif

using namespace mpnet;
namespace bf16 = mpnet::cpu::bf16;

namespace {

using namespace mpnet::test::conv;

CpuTensor<float> rounded(const CpuTensor<float>& t) {
    CpuTensor<float> r = t.clone();
    for (int64_t i = 0; i < r.numel(); ++i) r.data()[i] = bf16::round(r.data()[i]);
    return r;
}

}  // namespace

TEST_CASE("bf16: rounding to nearest even, infinities and NaN") {
    auto from_bits = [](uint32_t u) { return bf16::from_float(std::bit_cast<float>(u)); };
    CHECK(from_bits(0x3f800000u) == 0x3f80);  // 1
    CHECK(from_bits(0x3f808000u) == 0x3f80);  // halfway, even below: down
    CHECK(from_bits(0x3f818000u) == 0x3f82);  // halfway, odd below: up
    CHECK(from_bits(0x3f808001u) == 0x3f81);  // above halfway: up
    CHECK(from_bits(0xbf80ffffu) == 0xbf81);  // negative, rounds away from zero in magnitude
    CHECK(from_bits(0x7f7fffffu) == 0x7f80);  // float max overflows to infinity
    CHECK(from_bits(0xff800000u) == 0xff80);  // -inf
    CHECK(from_bits(0x00000001u) == 0x0000);  // the smallest subnormal rounds to zero
    CHECK(std::isnan(bf16::to_float(from_bits(0x7f800001u))));  // NaN with payload in the dropped bits
    CHECK(std::isnan(bf16::to_float(from_bits(0xffffffffu))));
    CHECK(bf16::to_float(0x4049) == 3.140625f);

    // The vector conversions give the scalar bits, for values of every kind.
    std::vector<float> values(1000);
    uint64_t state = 12345;
    for (float& v : values) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        v = std::bit_cast<float>(uint32_t(state >> 32));
    }
    values[3] = std::numeric_limits<float>::quiet_NaN(), values[4] = -std::numeric_limits<float>::infinity();
    values[5] = std::bit_cast<float>(0x7f800001u), values[6] = 0.0f, values[7] = -0.0f;
    std::vector<uint16_t> narrow(values.size());
    bf16::narrow(values.data(), int64_t(values.size()), narrow.data());
    for (size_t i = 0; i < values.size(); ++i) CHECK(narrow[i] == bf16::from_float(values[i]));

    // channel_pairs: 3 channels (the last pair padded with zero) of 500 / 3 pixels; bits compared.
    const int64_t hw = 111, channels = 3;
    std::vector<float> paired(size_t(2 * hw));
    bf16::channel_pairs(values.data(), 1, channels, hw, paired.data());
    for (int64_t p = 0; p < hw; ++p) {
        CHECK(std::bit_cast<uint32_t>(paired[size_t(p)]) == bf16::pair(values[size_t(p)], values[size_t(hw + p)]));
        CHECK(std::bit_cast<uint32_t>(paired[size_t(hw + p)]) == bf16::pair(values[size_t(2 * hw + p)], 0.0f));
    }
}

TEST_CASE("conv kernels: bf16 math where the CPU has it, a clear refusal where it does not") {
    if (!cpu::bf16_unavailable().empty()) {
        MESSAGE("bf16 products not run: ", cpu::bf16_unavailable());
        CHECK_THROWS_WITH_AS(CpuBackend::set_math(cpu::Math::bf16),
                             doctest::Contains("bf16 math on the CPU"), std::runtime_error);
        CHECK(CpuBackend::math() == cpu::Math::fp32);
        return;
    }
    // As the float test's shapes (tiles, panels, depth blocks, narrow 8x8 and 4-wide staging,
    // 1x1 read in place, windows of large images), with channel counts odd and even and
    // large enough for bf16 to pay; then thin products, odd widths and few outputs.
    const Case cases[] = {
        {1, 11, 13, 4, 4, 3},    {3, 13, 11, 8, 8, 3},    {1, 7, 21, 8, 8, 5},    {3, 70, 40, 16, 16, 3},
        {3, 300, 133, 8, 8, 1},  {2, 40, 64, 32, 32, 3},  {2, 15, 16, 8, 4, 3},   {2, 7, 16, 16, 2, 5},
        {1, 16, 18, 37, 30, 3},  {2, 5, 7, 24, 42, 5},    {2, 96, 100, 8, 8, 1},  {1, 70, 110, 16, 16, 1},
        {3, 37, 19, 8, 8, 1},    {1, 2, 64, 16, 16, 3},   {2, 20, 24, 32, 32, 1}, {1, 12, 16, 37, 29, 3},
        {1, 9, 17, 3, 11, 3},    {2, 32, 1, 32, 32, 3},   {3, 17, 3, 9, 13, 3},
    };
    const cpu::MathScope bf16_math(cpu::Math::bf16);
    uint64_t seed = 500;
    int bf16_products[3] = {};  // cases whose forward, input gradient, weight gradient ran in bf16
    for (const Case& c : cases) {
        INFO("n ", c.n, " cin ", c.cin, " cout ", c.cout, " h ", c.h, " w ", c.w, " k ", c.k);
        auto x = random_float({c.n, c.cin, c.h, c.w}, seed++), w = random_float({c.cout, c.cin, c.k, c.k}, seed++);
        auto dy = random_float({c.n, c.cout, c.h, c.w}, seed++);
        const Reference bf = direct_convolution(c, rounded(x), rounded(w), rounded(dy));
        const Reference fp = direct_convolution(c, x, w, dy);
        // Which products run in bf16 (conv.hpp): thin products, the output layer's backward and
        // odd widths' weight gradients stay float32.
        const auto g = ops::conv_geometry(x.shape(), w.shape(), dy.shape(), "test");
        const bool narrow = c.cout <= 4;
        const bool bf16_y = cpu::detail::bf16_pays(g, c.cin, c.cout);
        const bool bf16_dx = !narrow && cpu::detail::bf16_pays(g, c.cout, c.cin);
        const bool bf16_dw = !narrow && c.w % 2 == 0;
        bf16_products[0] += bf16_y, bf16_products[1] += bf16_dx, bf16_products[2] += bf16_dw;

        CpuTensor<float> y(bf.y.shape()), dx(x.shape()), dw(w.shape()), dw_only(w.shape()), none;
        conv2d_forward(CpuBackend{}, x, w, y);
        conv2d_backward(CpuBackend{}, x, w, dy, dx, dw);
        conv2d_backward(CpuBackend{}, x, w, dy, none, dw_only);
        MPNET_CHECK_CLOSE(y, bf16_y ? bf.y : fp.y, 1e-5);
        MPNET_CHECK_CLOSE(dx, bf16_dx ? bf.dx : fp.dx, 1e-5);
        MPNET_CHECK_CLOSE(dw, bf16_dw ? bf.dw : fp.dw, 1e-5);
        MPNET_CHECK_CLOSE(dw_only, bf16_dw ? bf.dw : fp.dw, 1e-5);
        // What bf16 operands cost against float32 ones: a few 2^-9 at most.
        CHECK(mpnet::test::rel_error(y, fp.y) < 1e-2);
        CHECK(mpnet::test::rel_error(dw, fp.dw) < 1e-2);
    }
    for (int count : bf16_products) CHECK(count >= 10);
}

#if MPNET_CPU_SIMD
TEST_CASE("conv kernels: bf16 results bit-identical across thread counts and batch composition") {
    if (!cpu::bf16_unavailable().empty()) {
        MESSAGE("bf16 products not run: ", cpu::bf16_unavailable());
        return;
    }
    const cpu::MathScope bf16_math(cpu::Math::bf16);
    const Case c{5, 23, 40, 16, 16, 3};
    auto x = random_float({c.n, c.cin, c.h, c.w}, 7), w = random_float({c.cout, c.cin, c.k, c.k}, 8);
    auto dy = random_float({c.n, c.cout, c.h, c.w}, 9);
    auto run = [&](int threads) {
        const int saved = omp_get_max_threads();
        omp_set_num_threads(threads);
        CpuTensor<float> y(dy.shape()), dx(x.shape()), dw(w.shape());
        conv2d_forward(CpuBackend{}, x, w, y);
        conv2d_backward(CpuBackend{}, x, w, dy, dx, dw);
        omp_set_num_threads(saved);
        return std::array{y.to_host(), dx.to_host(), dw.to_host()};
    };
    const auto one = run(1);
    for (int threads : {2, 3})
        for (size_t i = 0; i < 3; ++i) CHECK(run(threads)[i] == one[i]);
    const auto x3 = x.slice(3, 4).clone(), dy3 = dy.slice(3, 4).clone();
    CpuTensor<float> y3(dy3.shape()), dx3(x3.shape()), dw3(w.shape());
    conv2d_forward(CpuBackend{}, x3, w, y3);
    conv2d_backward(CpuBackend{}, x3, w, dy3, dx3, dw3);
    const int64_t image = c.cout * c.h * c.w, input = c.cin * c.h * c.w;
    CHECK(y3.to_host() == std::vector<float>(one[0].begin() + 3 * image, one[0].begin() + 4 * image));
    CHECK(dx3.to_host() == std::vector<float>(one[1].begin() + 3 * input, one[1].begin() + 4 * input));
}
#endif

TEST_CASE("bf16 product rate: timed where the CPU has vdpbf16ps, and a warning exactly when bf16 is slower") {
    const bf16::ProductRate rate = bf16::measure_product_rate();
    if (bf16::cpu_supported()) {
        // Bounds, not a speed: 12 M to 1 T instructions a second cover every CPU that exists.
        CHECK(rate.fma_per_second > 1e7);
        CHECK(rate.fma_per_second < 1e12);
        CHECK(rate.dot_per_second > 1e7);
        CHECK(rate.dot_per_second < 1e12);
        MESSAGE("bf16 products here: ", rate.speedup(), "x float32's multiply-adds per second");
    } else {
        CHECK(rate.fma_per_second == 0);
        CHECK(rate.dot_per_second == 0);
        CHECK(bf16::slower_than_fp32(rate).empty());
    }
    // Emerald Rapids' figures: a quarter of the instructions, half the multiply-adds.
    const std::string slow = bf16::slower_than_fp32({5.4e9, 1.3e9});
    CHECK(slow.find("0.48x the multiply-adds") != std::string::npos);
    CHECK(slow.find("--math bf16 runs the convolutions slower than fp32") != std::string::npos);
    CHECK(bf16::ProductRate{5.4e9, 1.3e9}.speedup() == doctest::Approx(2 * 1.3 / 5.4));
    // Zen 4's: both at one per cycle, twice the multiply-adds; and level.
    CHECK(bf16::slower_than_fp32({4e9, 4e9}).empty());
    CHECK(bf16::slower_than_fp32({4e9, 2e9}).empty());
    CHECK_FALSE(bf16::slower_than_fp32({4e9, 1.99e9}).empty());
}

TEST_CASE("cpu contexts: each thread computes in its own context's math, concurrently") {
    // A bf16 context beside the process default (float32) where the CPU has bf16 products;
    // else two float32 contexts, and bf16 refused by the context as by the backend.
    const bool bf16_here = cpu::bf16_unavailable().empty();
    if (!bf16_here)
        CHECK_THROWS_WITH_AS(cpu::Context{cpu::Math::bf16}, doctest::Contains("bf16 math on the CPU"),
                             std::runtime_error);
    const cpu::Math other = bf16_here ? cpu::Math::bf16 : cpu::Math::fp32;
    const auto x = random_float({4, 64, 16, 16}, 61), w = random_float({64, 64, 3, 3}, 62);
    auto forward = [&] {
        CpuTensor<float> y(Shape{4, 64, 16, 16});
        conv2d_forward(CpuBackend{}, x, w, y);
        return y.to_host();
    };
    // Each math alone, on this thread, first.
    const std::vector<float> fp32_alone = forward();
    std::vector<float> other_alone;
    {
        cpu::Context ctx(other);
        const cpu::ContextScope scope(ctx);
        CHECK(CpuBackend::math() == other);
        other_alone = forward();
        {
            cpu::Context inner;  // scopes nest
            const cpu::ContextScope inner_scope(inner);
            CHECK(CpuBackend::math() == cpu::Math::fp32);
        }
        CHECK(CpuBackend::math() == other);
    }
    CHECK(CpuBackend::math() == cpu::Math::fp32);
    if (bf16_here) CHECK(fp32_alone != other_alone);  // the two maths differ in the last bits

    // Then both at once, many times: a thread in its own context, one in the default context.
    cpu::Context ctx(other);
    std::vector<std::vector<float>> in_context, in_default;
    mpnet::test::run_concurrently(
        [&] {
            const cpu::ContextScope scope(ctx);
            for (int i = 0; i < 6; ++i) in_context.push_back(forward());
        },
        [&] {
            for (int i = 0; i < 6; ++i) in_default.push_back(forward());
        });
    REQUIRE(in_context.size() == 6);
    REQUIRE(in_default.size() == 6);
    // Bit for bit: the products' results do not depend on the thread count
    // ("bf16 results bit-identical across thread counts" above, and the float tests').
    for (const auto& y : in_context) CHECK(y == other_alone);
    for (const auto& y : in_default) CHECK(y == fp32_alone);
    CHECK(CpuBackend::math() == cpu::Math::fp32);
}
