// Activations stored in 16 bits (float16, bfloat16; backend/half_storage.hpp): the formats'
// rounding, the conversion kernels, the kernels' handling of accumulated, in-place and
// skipped outputs, the reference U-Net run with 16-bit activations against the reference's
// float32 results, loss scaling keeping fp16 gradients from flushing to zero, the memory
// the saved activations take, and the trainer with 16-bit activations.
#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <limits>

#include "bars_data.hpp"
#include "golden.hpp"
#include "scratch_dir.hpp"
#include "mpnet/nn/weights.hpp"
#include "mpnet/train/trainer.hpp"

using namespace mpnet;
using test::golden;
using test::load;
using test::rel_error;
namespace fs = std::filesystem;

namespace {

template <HalfStorage A>
CpuTensor<A> narrowed(const CpuTensor<float>& x) {
    return converted<A>(x);
}

template <HalfStorage A>
CpuTensor<float> widened(const CpuTensor<A>& x) {
    return converted<float>(x);
}

CpuTensor<float> random_tensor(Shape shape, uint64_t seed, double std = 1) {
    CpuTensor<float> t(shape);
    fill_normal(CpuBackend{}, t, seed, 0, 0.0, std);
    return t;
}

// The unit roundoff u of each format (2^-11 for fp16, 2^-8 for bf16), the unit of the
// bounds below.
template <class A>
constexpr double unit_roundoff = std::is_same_v<A, float16> ? 1.0 / 2048 : 1.0 / 256;

}  // namespace

TEST_CASE("float16 and bfloat16: rounding to nearest even, overflow, subnormals, and exact round trips") {
    CHECK(float16::from_float(1.0f).bits == 0x3c00);
    CHECK(float16::from_float(1.0f + 0x1p-11f).bits == 0x3c00);      // a tie: to the even neighbour below
    CHECK(float16::from_float(1.0f + 3 * 0x1p-11f).bits == 0x3c02);  // a tie: to the even neighbour above
    CHECK(float16::from_float(65504.0f).bits == 0x7bff);
    CHECK(float16::from_float(65520.0f).bits == 0x7c00);  // rounds past the largest finite value
    CHECK(float16::from_float(0x1p-24f).bits == 0x0001);  // the smallest subnormal
    CHECK(float16::from_float(0x1p-25f).bits == 0x0000);  // half of it ties to even: zero
    CHECK(float16::from_float(-0x1p-26f).bits == 0x8000);
    CHECK(bfloat16::from_float(1.0f + 0x1p-8f).bits == 0x3f80);
    CHECK(bfloat16::from_float(1.0f + 3 * 0x1p-8f).bits == 0x3f82);
    CHECK(std::isfinite(bfloat16::from_float(3e38f).to_float()));  // float's range
    CHECK(std::isnan(float16::from_float(std::numeric_limits<float>::quiet_NaN()).to_float()));
    int mismatches = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
        const float16 h{uint16_t(b)};
        const bfloat16 g{uint16_t(b)};
        if (!std::isnan(h.to_float())) mismatches += float16::from_float(h.to_float()).bits != h.bits;
        if (!std::isnan(g.to_float())) mismatches += bfloat16::from_float(g.to_float()).bits != g.bits;
    }
    CHECK(mismatches == 0);
}

// Eight at a time where the build targets AVX2 (F16C for fp16), one at a time for the tail:
// both must give the scalar conversion's bits, ties, subnormals and overflow included.
TEST_CASE_TEMPLATE("convert: widening is exact and narrowing rounds each element as the scalar conversion", A, float16,
                   bfloat16) {
    CpuTensor<float> x = random_tensor(Shape{3, 7001}, 5, 100);
    for (int64_t i = 0; i < x.numel(); i += 5) x.data()[i] *= 1e-9f;  // fp16's subnormals, and below them
    for (int64_t i = 1; i < x.numel(); i += 5) x.data()[i] *= 1000;   // beyond fp16's range
    x.data()[2] = 0, x.data()[3] = -0.0f, x.data()[4] = std::numeric_limits<float>::infinity();
    x.data()[7] = -std::numeric_limits<float>::infinity(), x.data()[8] = 65519.99f, x.data()[9] = 65520.0f;
    x.data()[10] = 1.0f + 0x1p-11f, x.data()[11] = 1.0f + 3 * 0x1p-11f;  // fp16 ties, to even below and above
    x.data()[12] = 1.0f + 0x1p-8f, x.data()[13] = 1.0f + 3 * 0x1p-8f;    // bf16 ties
    x.data()[14] = std::numeric_limits<float>::quiet_NaN();
    const CpuTensor<A> h = narrowed<A>(x);
    const CpuTensor<float> back = widened(h);
    int wrong = 0;
    CHECK(std::isnan(back.data()[14]));
    for (int64_t i = 0; i < x.numel(); ++i) {
        if (i == 14) continue;  // NaN: its payload is the hardware's to choose
        const A want = A::from_float(x.data()[i]);
        wrong += h.data()[i].bits != want.bits;
        wrong += std::bit_cast<uint32_t>(back.data()[i]) != std::bit_cast<uint32_t>(want.to_float());
    }
    CHECK(wrong == 0);
    CpuTensor<float16> wrong_shape(Shape{2});
    CHECK_THROWS_WITH_AS(convert(CpuBackend{}, x, wrong_shape), doctest::Contains("convert: shapes"), Error);
}

// A kernel on 16-bit tensors computes in float and rounds on store; what the adapter must get
// right is the outputs that are not plain: one accumulated into, one written in place over an
// input, one not asked for (an empty gradient).
TEST_CASE_TEMPLATE("16-bit kernels: accumulated, in-place and skipped outputs", A, float16, bfloat16) {
    const Shape s{2, 3, 4, 5};
    const CpuTensor<A> x = narrowed<A>(random_tensor(s, 1)), dy = narrowed<A>(random_tensor(s, 2));
    const CpuTensor<A> d0 = narrowed<A>(random_tensor(s, 3));

    // dx += mp_silu'(x) dy: the float kernel on the widened values, rounded once.
    CpuTensor<A> dx = d0.clone();
    mp_silu_backward_add(CpuBackend{}, x, dy, dx);
    CpuTensor<float> want = widened(d0);
    mp_silu_backward_add(CpuBackend{}, widened(x), widened(dy), want);
    CHECK(rel_error(widened(dx), want) <= unit_roundoff<A>);
    CpuTensor<float> plain(s);
    mp_silu_backward(CpuBackend{}, widened(x), widened(dy), plain);
    CHECK(rel_error(widened(dx), plain) > 0.1);  // the old values were added, not overwritten

    // mp_sum's backward with only one gradient wanted: the other stays empty.
    CpuTensor<A> da(s), none;
    mp_sum_backward(CpuBackend{}, dy, 0.3, da, none);
    CHECK(none.empty());
    CpuTensor<float> da_want(s), none_f;
    mp_sum_backward(CpuBackend{}, widened(dy), 0.3, da_want, none_f);
    CHECK(rel_error(widened(da), da_want) <= unit_roundoff<A>);

    // dropout in place, as Block applies it.
    CpuTensor<A> y = x.clone();
    dropout_apply(CpuBackend{}, y, 0.5, 77, y);
    CpuTensor<float> y_want(s);
    dropout_apply(CpuBackend{}, widened(x), 0.5, 77, y_want);
    CHECK(rel_error(widened(y), y_want) <= unit_roundoff<A>);
    int dropped = 0;
    for (int64_t i = 0; i < y.numel(); ++i) dropped += y.data()[i].bits == 0;
    CHECK(dropped > 20);
    CHECK(dropped < 100);
}

namespace {

// Whether two 16-bit tensors hold the same bits, element for element.
template <HalfStorage A>
int64_t differing_bits(const CpuTensor<A>& a, const CpuTensor<A>& b) {
    REQUIRE(a.shape() == b.shape());
    int64_t n = 0;
    for (int64_t i = 0; i < a.numel(); ++i) n += a.data()[i].bits != b.data()[i].bits;
    return n;
}

}  // namespace

// The CPU's elementwise kernels on 16-bit storage widen a chunk at a time in L1
// (backend/cpu/half_chunks.hpp). They must give exactly what the float kernel gives on the
// widened tensors, rounded once: the generic kernels' semantics. The shape crosses the
// chunks (512), the threads' blocks (4096) and the threading threshold, with a ragged tail.
TEST_CASE_TEMPLATE("CPU kernels on 16-bit storage: the float kernel's bits on the widened tensors, rounded once", A,
                   float16, bfloat16) {
    const CpuBackend b;
    const Shape s{3, 5, 37, 41}, sc{3, 5}, sa{3, 2, 37, 41}, sy{3, 7, 37, 41};
    const CpuTensor<A> x = narrowed<A>(random_tensor(s, 11, 3)), dy = narrowed<A>(random_tensor(s, 12));
    const CpuTensor<A> a = narrowed<A>(random_tensor(s, 13)), c = narrowed<A>(random_tensor(sc, 14));
    const CpuTensor<A> other = narrowed<A>(random_tensor(sa, 15));
    const CpuTensor<float> xf = widened(x), dyf = widened(dy), af = widened(a), cf = widened(c), otherf = widened(other);
    // The float kernel run on float tensors, and its results rounded.
    auto rounded = [](const CpuTensor<float>& f) { return narrowed<A>(f); };

    SUBCASE("mp_silu") {
        CpuTensor<A> y(s), dx(s), acc = a.clone();
        CpuTensor<float> yf(s), dxf(s), accf = af.clone();
        mp_silu_forward(b, x, y), mp_silu_forward(b, xf, yf);
        mp_silu_backward(b, x, dy, dx), mp_silu_backward(b, xf, dyf, dxf);
        mp_silu_backward_add(b, x, dy, acc), mp_silu_backward_add(b, xf, dyf, accf);
        CHECK(differing_bits(y, rounded(yf)) == 0);
        CHECK(differing_bits(dx, rounded(dxf)) == 0);
        CHECK(differing_bits(acc, rounded(accf)) == 0);
    }
    SUBCASE("modulated mp_silu, its backward in place over dy") {
        CpuTensor<A> y(s), dx = dy.clone(), ds(sc);
        CpuTensor<float> yf(s), dxf(s), dsf(sc);
        modulated_silu_forward(b, x, c, y), modulated_silu_forward(b, xf, cf, yf);
        modulated_silu_backward(b, x, c, dx, dx, ds), modulated_silu_backward(b, xf, cf, dyf, dxf, dsf);
        CHECK(differing_bits(y, rounded(yf)) == 0);
        CHECK(differing_bits(dx, rounded(dxf)) == 0);
        CHECK(differing_bits(ds, rounded(dsf)) == 0);
    }
    SUBCASE("mp_sum and mp_cat, forward and backward") {
        CpuTensor<A> y(s), da(s), db(s), cat(sy), dcat_a(s), dcat_b(sa);
        CpuTensor<float> yf(s), daf(s), dbf(s), catf(sy), dcat_af(s), dcat_bf(sa);
        mp_sum_forward(b, x, a, 0.3, y), mp_sum_forward(b, xf, af, 0.3, yf);
        mp_sum_backward(b, dy, 0.3, da, db), mp_sum_backward(b, dyf, 0.3, daf, dbf);
        mp_cat_forward(b, x, other, 0.4, cat), mp_cat_forward(b, xf, otherf, 0.4, catf);
        mp_cat_backward(b, cat, 0.4, dcat_a, dcat_b), mp_cat_backward(b, widened(cat), 0.4, dcat_af, dcat_bf);
        CHECK(differing_bits(y, rounded(yf)) == 0);
        CHECK(differing_bits(da, rounded(daf)) == 0);
        CHECK(differing_bits(db, rounded(dbf)) == 0);
        CHECK(differing_bits(cat, rounded(catf)) == 0);
        CHECK(differing_bits(dcat_a, rounded(dcat_af)) == 0);
        CHECK(differing_bits(dcat_b, rounded(dcat_bf)) == 0);
    }
    SUBCASE("clip and axpby") {
        CpuTensor<A> y(s), dx(s), acc = a.clone();
        CpuTensor<float> yf(s), dxf(s), accf = af.clone();
        clip_forward(b, x, 2.0, y), clip_forward(b, xf, 2.0, yf);
        clip_backward(b, x, dy, 2.0, dx), clip_backward(b, xf, dyf, 2.0, dxf);
        axpby(b, 0.7f, x, -1.3f, acc), axpby(b, 0.7f, xf, -1.3f, accf);
        CHECK(differing_bits(y, rounded(yf)) == 0);
        CHECK(differing_bits(dx, rounded(dxf)) == 0);
        CHECK(differing_bits(acc, rounded(accf)) == 0);
        int64_t clipped = 0;
        for (int64_t i = 0; i < y.numel(); ++i) clipped += std::abs(y.data()[i].to_float()) == 2.0f;
        CHECK(clipped > 1000);  // the limit is met, at 2/3 of the inputs' spread
    }
    SUBCASE("pixel norm, forward and backward, and a weight's norm (one group per row)") {
        CpuTensor<A> y(s), dx(s);
        CpuTensor<float> yf(s), dxf(s), scale, scalef;
        normalize_forward(b, x, ops::Dims{1}, y, &scale), normalize_forward(b, xf, ops::Dims{1}, yf, &scalef);
        normalize_backward(b, x, dy, ops::Dims{1}, scale, dx), normalize_backward(b, xf, dyf, ops::Dims{1}, scalef, dxf);
        CHECK(differing_bits(y, rounded(yf)) == 0);
        CHECK(rel_error(scale, scalef) == 0);
        CHECK(differing_bits(dx, rounded(dxf)) == 0);
        const auto rows = ops::Dims::all_but_first();
        CpuTensor<A> w(s), dw(s);
        CpuTensor<float> wf(s), dwf(s), w_scale, w_scalef;
        normalize_forward(b, x, rows, w, &w_scale), normalize_forward(b, xf, rows, wf, &w_scalef);
        normalize_backward(b, x, dy, rows, w_scale, dw), normalize_backward(b, xf, dyf, rows, w_scalef, dwf);
        CHECK(differing_bits(w, rounded(wf)) == 0);
        CHECK(differing_bits(dw, rounded(dwf)) == 0);
        // Groups that are not [outer, reduced, inner] slabs (batch and rows) widen whole tensors.
        const ops::Dims scattered{0, 2};
        CpuTensor<A> z(s), dz(s);
        CpuTensor<float> zf(s), dzf(s), z_scale, z_scalef;
        normalize_forward(b, x, scattered, z, &z_scale), normalize_forward(b, xf, scattered, zf, &z_scalef);
        normalize_backward(b, x, dy, scattered, z_scale, dz), normalize_backward(b, xf, dyf, scattered, z_scalef, dzf);
        CHECK(z_scale.numel() == 5 * 41);
        CHECK(differing_bits(z, rounded(zf)) == 0);
        CHECK(rel_error(z_scale, z_scalef) == 0);
        CHECK(differing_bits(dz, rounded(dzf)) == 0);
    }
    SUBCASE("resampling down and up, forward and backward, with the fast [1, 1] filter and a wider one") {
        const Shape big{3, 5, 38, 42}, small{3, 5, 19, 21};
        const CpuTensor<A> image = narrowed<A>(random_tensor(big, 16)), half_image = narrowed<A>(random_tensor(small, 17));
        for (const std::vector<double>& filter : {std::vector<double>{1, 1}, std::vector<double>{1, 3, 3, 1}}) {
            CAPTURE(filter.size());
            CpuTensor<A> down(small), up(big), down_back(big), up_back(small);
            CpuTensor<float> downf(small), upf(big), down_backf(big), up_backf(small);
            resample_forward(b, image, filter, ops::Resample::down, down);
            resample_forward(b, widened(image), filter, ops::Resample::down, downf);
            resample_forward(b, half_image, filter, ops::Resample::up, up);
            resample_forward(b, widened(half_image), filter, ops::Resample::up, upf);
            resample_backward(b, half_image, filter, ops::Resample::down, down_back);
            resample_backward(b, widened(half_image), filter, ops::Resample::down, down_backf);
            resample_backward(b, image, filter, ops::Resample::up, up_back);
            resample_backward(b, widened(image), filter, ops::Resample::up, up_backf);
            CHECK(differing_bits(down, rounded(downf)) == 0);
            CHECK(differing_bits(up, rounded(upf)) == 0);
            CHECK(differing_bits(down_back, rounded(down_backf)) == 0);
            CHECK(differing_bits(up_back, rounded(up_backf)) == 0);
        }
    }
    SUBCASE("attention core: forward with and without its context, and backward, as the generic kernels") {
        // An 8x8 image in two heads of 6 channels, and an odd 5x3 one in one head of 4.
        for (const auto& [qkv_shape, heads] : {std::pair{Shape{2, 36, 8, 8}, int64_t(2)}, std::pair{Shape{3, 12, 5, 3}, int64_t(1)}}) {
            CAPTURE(qkv_shape);
            const Shape ys{qkv_shape[0], qkv_shape[1] / 3, qkv_shape[2], qkv_shape[3]};
            const CpuTensor<A> qkv = narrowed<A>(random_tensor(qkv_shape, 21, 2)), dya = narrowed<A>(random_tensor(ys, 22));
            CpuTensor<A> y(ys), y_alone(ys), want(ys), dqkv(qkv_shape), want_dqkv(qkv_shape);
            ops::AttentionContext<A, CpuBackend> ctx, want_ctx;
            attention_forward(b, qkv, heads, y, &ctx);
            attention_forward(b, qkv, heads, y_alone, nullptr);
            mpnet::attention_forward<CpuBackend, A>(b, qkv, heads, want, &want_ctx);  // the generic kernel
            CHECK(differing_bits(y, want) == 0);
            CHECK(differing_bits(y_alone, want) == 0);
            CHECK(differing_bits(ctx.q, want_ctx.q) == 0);
            CHECK(differing_bits(ctx.k, want_ctx.k) == 0);
            CHECK(differing_bits(ctx.v, want_ctx.v) == 0);
            CHECK(differing_bits(ctx.q_scale, want_ctx.q_scale) == 0);
            CHECK(differing_bits(ctx.k_scale, want_ctx.k_scale) == 0);
            CHECK(differing_bits(ctx.v_scale, want_ctx.v_scale) == 0);
            CHECK(differing_bits(ctx.weights, want_ctx.weights) == 0);
            attention_backward(b, ctx, heads, dya, dqkv);
            mpnet::attention_backward<CpuBackend, A>(b, want_ctx, heads, dya, want_dqkv);
            CHECK(differing_bits(dqkv, want_dqkv) == 0);
            // Independently of the generic kernel: the float kernel's output, rounded.
            CpuTensor<float> yf(ys);
            attention_forward(b, widened(qkv), heads, yf, nullptr);
            CHECK(differing_bits(y, rounded(yf)) == 0);
            CHECK(ctx.weights.numel() == qkv_shape[0] * heads * qkv_shape.numel_from(2) * qkv_shape.numel_from(2));

            // No float copy of qkv, dy, dqkv or the context: the pool sees only the context itself.
            auto& pool = cpu::MemoryPool::instance();
            ctx = {};
            const std::size_t before = pool.bytes_in_use();
            pool.reset_peak();
            attention_forward(b, qkv, heads, y, &ctx);
            const std::size_t context = pool.bytes_in_use() - before;
            attention_backward(b, ctx, heads, dya, dqkv);
            CHECK(pool.peak_bytes() - before == context);
        }
    }
    SUBCASE("each reads and writes 16-bit memory once: no float copy of a tensor is made") {
        // The generic kernels allocate a widened copy of every input and output; these do not.
        CpuTensor<A> y(s), dx = dy.clone(), ds(sc), da(s), cat(sy), acc = a.clone();
        auto& pool = cpu::MemoryPool::instance();
        pool.reset_peak();
        const std::size_t before = pool.bytes_in_use();
        mp_silu_forward(b, x, y);
        mp_silu_backward_add(b, x, dy, acc);
        modulated_silu_forward(b, x, c, y);
        modulated_silu_backward(b, x, c, dx, dx, ds);
        mp_sum_forward(b, x, a, 0.3, y);
        mp_sum_backward(b, dy, 0.3, da, dx);
        mp_cat_forward(b, x, other, 0.4, cat);
        clip_backward(b, x, dy, 2.0, dx);
        axpby(b, 0.7f, x, -1.3f, acc);
        CHECK(pool.peak_bytes() == before);

        const CpuTensor<A> image = narrowed<A>(random_tensor(Shape{3, 5, 38, 42}, 16));
        CpuTensor<A> down(Shape{3, 5, 19, 21}), back(Shape{3, 5, 38, 42});
        const std::size_t with_images = pool.bytes_in_use();
        pool.reset_peak();
        resample_forward(b, image, {1, 3, 3, 1}, ops::Resample::down, down);
        resample_backward(b, down, {1, 3, 3, 1}, ops::Resample::down, back);
        CHECK(pool.peak_bytes() == with_images);

        pool.reset_peak();
        CpuTensor<float> scale;  // the pixel norm allocates its float scales, one per pixel, and nothing else
        normalize_forward(b, x, ops::Dims{1}, y, &scale);
        normalize_backward(b, x, dy, ops::Dims{1}, scale, dx);
        CHECK(pool.peak_bytes() - with_images >= scale.bytes());
        CHECK(pool.peak_bytes() - with_images < scale.bytes() + cpu::MemoryPool::alignment);
    }
}

// The CPU convolution on 16-bit images stages and transposes them into float as it reads
// them and rounds each output once from its float sum (backend/cpu/conv.hpp): the float
// kernel's bits on the widened tensors, without widened copies. The shapes cover panels read
// in place from the staging (16x16), 8x8 images staged as shifted copies, odd sizes (packed
// panels, short last panels, panels crossing images), 1x1 kernels, two depth blocks (360 sums),
// several row tiles and both threads, a layer of 3 outputs, whose backward runs the
// float kernels of conv_narrow.hpp on widened tensors, and layers of 32 or more channels,
// whose 3x3 forward and input gradient run as Winograd's F(2x2, 3x3), or F(4x4, 3x3) on
// images 4 vectors wide (64x64 covers both vector widths).
TEST_CASE_TEMPLATE("CPU convolution on 16-bit storage: the float kernel's bits on the widened tensors, rounded once", A,
                   float16, bfloat16) {
    const CpuBackend b;
    struct Case {
        int64_t n, cin, cout, h, w, k;
    };
    const Case cases[] = {{4, 40, 20, 16, 16, 3}, {3, 5, 7, 8, 8, 3}, {2, 6, 9, 7, 9, 3},   {4, 40, 20, 16, 16, 1},
                          {2, 6, 9, 7, 9, 1},     {3, 40, 3, 12, 12, 3}, {5, 17, 24, 5, 5, 3}, {3, 40, 36, 9, 9, 3},
                          {4, 32, 48, 8, 8, 3},   {1, 32, 36, 64, 64, 3}};
    SUBCASE("forward, input gradient and weight gradient") {
        uint64_t seed = 100;
        for (const Case& c : cases) {
            const Shape n_cin_cout_h_w_k{c.n, c.cin, c.cout, c.h, c.w, c.k};
            CAPTURE(n_cin_cout_h_w_k);
            const Shape xs{c.n, c.cin, c.h, c.w}, ws{c.cout, c.cin, c.k, c.k}, ys{c.n, c.cout, c.h, c.w};
            const CpuTensor<A> x = narrowed<A>(random_tensor(xs, ++seed)), w = narrowed<A>(random_tensor(ws, ++seed, 0.1));
            const CpuTensor<A> dy = narrowed<A>(random_tensor(ys, ++seed));
            const CpuTensor<float> xf = widened(x), wf = widened(w), dyf = widened(dy);
            CpuTensor<A> y(ys), dx(xs), dw(ws), dw_alone(ws), none;
            CpuTensor<float> yf(ys), dxf(xs), dwf(ws);
            conv2d_forward(b, x, w, y), conv2d_forward(b, xf, wf, yf);
            conv2d_backward(b, x, w, dy, dx, dw), conv2d_backward(b, xf, wf, dyf, dxf, dwf);
            conv2d_backward(b, x, w, dy, none, dw_alone);
            CHECK(differing_bits(y, narrowed<A>(yf)) == 0);
            CHECK(differing_bits(dx, narrowed<A>(dxf)) == 0);
            CHECK(differing_bits(dw, narrowed<A>(dwf)) == 0);
            CHECK(differing_bits(dw_alone, dw) == 0);
            CHECK(none.empty());
        }
    }
#if MPNET_CPU_SIMD  // elsewhere the tensors are widened whole for the Eigen products
    SUBCASE("no float copy of the images, outputs or gradients is made, only of the weight") {
        const Shape xs{8, 16, 32, 32}, ws{16, 16, 3, 3}, ys{8, 16, 32, 32};
        const CpuTensor<A> x = narrowed<A>(random_tensor(xs, 1)), w = narrowed<A>(random_tensor(ws, 2, 0.1));
        const CpuTensor<A> dy = narrowed<A>(random_tensor(ys, 3));
        CpuTensor<A> y(ys), dx(xs), dw(ws);
        auto& pool = cpu::MemoryPool::instance();
        const std::size_t before = pool.bytes_in_use();
        pool.reset_peak();
        conv2d_forward(b, x, w, y);
        conv2d_backward(b, x, w, dy, dx, dw);
        // What is allocated is the widened weight, its float gradient, the flipped weight and
        // the weight product's partial sums (8 groups of 144 x 16 floats), 83 KiB in all,
        // where a float copy of one image tensor takes 512 KiB.
        CHECK(pool.peak_bytes() - before < std::size_t(xs.numel()) * sizeof(float) / 4);
    }
#endif
}

namespace {

// The golden network's loss and parameter gradients with activations stored as A; dD is
// multiplied by `scale` before the backward (the trainer's loss scaling) and the gradients
// divided by it after, as an optimizer told of the scale would see them.
template <class A>
struct GoldenRun {
    CpuTensor<float> D;
    double loss = 0;
    std::map<std::string, CpuTensor<float>> grads;
};

template <class A>
GoldenRun<A> run_golden(double grad_scale = 1, double loss_scale = 1) {
    const auto& f = golden("unet.safetensors");
    nn::Precond<float, CpuBackend, A> net(test::golden_unet_config());
    nn::load_state(net, f, "", true);
    auto x = load<float>(f, "x"), sigma = load<float>(f, "sigma"), noise = load<float>(f, "noise");
    CpuTensor<float> noisy(x.shape());
    const int64_t inner = x.shape().numel_from(1);
    for (int64_t i = 0; i < x.numel(); ++i) noisy.data()[i] = x.data()[i] + noise.data()[i] * sigma.data()[i / inner];
    typename nn::Precond<float, CpuBackend, A>::Context ctx;
    auto out = net.forward(noisy, sigma, load<float>(f, "labels"), {}, true, &ctx);
    CpuTensor<float> dD(x.shape()), dlogvar(sigma.shape());
    const double count = double(x.numel());
    GoldenRun<A> r;
    r.loss = edm2_loss(CpuBackend{}, out.D, x, sigma, out.logvar, 0.5, grad_scale * loss_scale / count, dD, dlogvar) /
             count;
    r.D = out.D;
    net.zero_grad();
    net.backward(dD, dlogvar, ctx);
    net.visit([&](const std::string& name, nn::Param<float, CpuBackend>& p) {
        CpuTensor<float> g(p.grad.shape());
        affine(CpuBackend{}, p.grad, float(1 / (grad_scale * loss_scale)), 0.0f, g);
        r.grads.emplace(name, g);
    });
    return r;
}

// The largest gradient error over the parameters, each relative to its reference's scale.
template <class A>
double worst_gradient_error(const GoldenRun<A>& run) {
    const auto& f = golden("unet.safetensors");
    double worst = 0;
    for (const auto& [name, g] : run.grads)
        worst = std::max(worst, rel_error(g, load<float>(f, "grad." + name).view(g.shape())));
    return worst;
}

}  // namespace

// The reference's float32 results bound what 16-bit activations may change: D within 4 u
// of its scale and every gradient within 16 u (u the format's unit roundoff; measured on
// this network: fp16 D 1.6 u and gradients 3.8 u, bf16 D 1.5 u and gradients 4.9 u). A
// layer that skipped its rounding would show as no error at all (checked), one that
// mis-scaled or mis-routed a tensor as an error of whole percents.
TEST_CASE_TEMPLATE("golden: the reference U-Net with 16-bit activations, D, loss and every gradient", A, float16,
                   bfloat16) {
    const auto& f = golden("unet.safetensors");
    const GoldenRun<A> r = run_golden<A>();
    const double u = unit_roundoff<A>;
    const double d_err = rel_error(r.D, load<float>(f, "loss_D")), g_err = worst_gradient_error(r);
    MESSAGE(std::string(A::name), ": D error ", d_err / u, " u, worst gradient error ", g_err / u, " u");
    CHECK(d_err > 0);  // really rounded
    CHECK(d_err <= 4 * u);
    CHECK(r.loss == doctest::Approx(load<double>(f, "loss").data()[0]).epsilon(4 * u));
    CHECK(g_err <= 16 * u);
    const auto names = f.metadata().at("param_names");
    CHECK(r.grads.size() == std::size_t(std::count(names.begin(), names.end(), ',') + 1));
}

// The reference's loss scaling exists for fp16's range: gradients far below 2^-14 lose bits
// as subnormals, and below 2^-24 vanish. With the loss's gradient made small (a large batch,
// a small weight), fp16 activations lose the gradients unless the loss is scaled up before
// the backward; bf16, with float's range, does not need it.
TEST_CASE("fp16 activations: loss scaling keeps small gradients from flushing to zero") {
    const double tiny = 0x1p-32;
    const double unscaled = worst_gradient_error(run_golden<float16>(tiny));
    const double scaled = worst_gradient_error(run_golden<float16>(tiny, 0x1p+32));
    const double bf16 = worst_gradient_error(run_golden<bfloat16>(tiny));
    MESSAGE("fp16 without loss scaling ", unscaled, ", with ", scaled, "; bf16 without ", bf16);
    CHECK(unscaled > 0.5);
    CHECK(scaled <= 16 * unit_roundoff<float16>);
    CHECK(bf16 <= 16 * unit_roundoff<bfloat16>);
}

// What a training step keeps for its backward is activations: stored in 16 bits they take
// little more than half the memory (the per-layer normalised weights and per-pixel scales
// stay float): measured 0.51 of float32's on the golden network.
TEST_CASE("16-bit activations: the saved context of a forward pass takes about half the memory") {
    auto context_bytes = [&]<class A>(std::type_identity<A>) {
        nn::Precond<float, CpuBackend, A> net(test::golden_unet_config(), 3);
        const auto x = random_tensor(Shape{32, 2, 16, 16}, 4);
        CpuTensor<float> sigma(Shape{32}), labels = CpuTensor<float>::zeros(Shape{32, 4});
        fill(CpuBackend{}, sigma, 1.0f);
        auto& pool = cpu::MemoryPool::instance();
        const std::size_t before = pool.bytes_in_use();
        typename nn::Precond<float, CpuBackend, A>::Context ctx;
        auto out = net.forward(x, sigma, labels, {}, false, &ctx);
        out = {};
        return double(pool.bytes_in_use() - before);
    };
    const double f32 = context_bytes(std::type_identity<float>{});
    const double f16 = context_bytes(std::type_identity<float16>{});
    const double b16 = context_bytes(std::type_identity<bfloat16>{});
    MESSAGE("saved context: float32 ", f32 / 1048576, " MiB, fp16 ", f16 / 1048576, " MiB, bf16 ", b16 / 1048576,
            " MiB");
    CHECK(f16 < 0.6 * f32);
    CHECK(b16 == f16);
}

namespace {

fs::path fresh_dir(const std::string& name) {
    return testing::fresh_dir("mpnet-test-half", name);
}

template <class A>
std::vector<float> train_params(const data::Dataset& ds, const train::TrainOptions& o) {
    train::Trainer<float, CpuBackend, A> t(train::resolve(o, ds), ds, [](const std::string&) {});
    t.resume();
    t.run();
    std::vector<float> all = t.network().flat_values().to_host();
    for (std::size_t k = 0; k < t.ema().num_profiles(); ++k)
        for (const auto& [name, e] : t.ema().profile(k)) {
            const auto v = e.to_host();
            all.insert(all.end(), v.begin(), v.end());
        }
    return all;
}

}  // namespace

// The weights, optimizer and EMA stay float32 and every 16-bit op is deterministic, so a run
// with 16-bit activations resumes to the straight run's bits, and lands near the float32 run.
TEST_CASE_TEMPLATE("trainer: with 16-bit activations, N steps straight equal N/2 + N/2 bit for bit, near float32", A,
                   float16, bfloat16) {
    const auto ds = testing::bars_dataset();
    const auto fp32 = train_params<float>(ds, testing::tiny_train_options(fresh_dir("fp32"), 64));
    const auto a = train_params<A>(ds, testing::tiny_train_options(fresh_dir("straight"), 64));
    auto half = testing::tiny_train_options(fresh_dir("halves"), 32);
    train_params<A>(ds, half);
    half.duration = 64;
    const auto b = train_params<A>(ds, half);
    REQUIRE(a.size() == b.size());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    REQUIRE(a.size() == fp32.size());
    double differ = 0;
    for (size_t i = 0; i < a.size(); ++i) differ = std::max(differ, double(std::abs(a[i] - fp32[i])));
    MESSAGE(std::string(A::name), ": largest weight difference from float32 after 8 steps ", differ);
    CHECK(differ > 0);
    CHECK(differ < 0.1);
}
