// Finite-difference checks, in double, of every primitive's backward on random inputs,
// including the cases the golden data does not cover (any normalisation dims, 5x5
// kernels, trainable gains, odd filters, dropout, clip), and the attention core's results
// independent of where its buffers lie.
#include <algorithm>

#include "golden.hpp"
#include "mpnet/nn/dropout_seed.hpp"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/mpconv.hpp"

using namespace mpnet;
using test::numerical_gradient;
using test::random_tensor;
using D = CpuTensor<double>;

namespace {
constexpr double fd_tol = 1e-6;  // central differences with h = 1e-6: error ~1e-9 relative
}

TEST_CASE("fd: normalize over any dims") {
    for (ops::Dims dims : {ops::Dims::all_but_first(), ops::Dims{1}, ops::Dims{0, 2}, ops::Dims{-1}, ops::Dims{1, 3}}) {
        auto x = random_tensor({3, 4, 2, 5}, 1), dy = random_tensor({3, 4, 2, 5}, 2);
        D y(x.shape()), dx(x.shape()), scale;
        normalize_forward(CpuBackend{}, x, dims, y, &scale);
        normalize_backward(CpuBackend{}, x, dy, dims, scale, dx);
        auto num = numerical_gradient(x, [&] {
            D out(x.shape());
            normalize_forward(CpuBackend{}, x, dims, out);
            return dot(CpuBackend{}, out, dy);
        });
        MPNET_CHECK_CLOSE(dx, num, fd_tol);
    }
}

TEST_CASE("fd: mp_silu, mp_sum, mp_cat, clip, channel scaling") {
    auto x = random_tensor({2, 3, 4, 4}, 3, 2.0), b = random_tensor({2, 3, 4, 4}, 4), dy = random_tensor({2, 3, 4, 4}, 5);
    D dx(x.shape()), db(x.shape());
    auto loss_of = [&](auto&& f) {
        return [&, f] {
            D out(x.shape());
            f(out);
            return dot(CpuBackend{}, out, dy);
        };
    };
    mp_silu_backward(CpuBackend{}, x, dy, dx);
    MPNET_CHECK_CLOSE(dx, numerical_gradient(x, loss_of([&](D& o) { mp_silu_forward(CpuBackend{}, x, o); })), fd_tol);

    mp_sum_backward(CpuBackend{}, dy, 0.3, dx, db);
    MPNET_CHECK_CLOSE(dx, numerical_gradient(x, loss_of([&](D& o) { mp_sum_forward(CpuBackend{}, x, b, 0.3, o); })), fd_tol);
    MPNET_CHECK_CLOSE(db, numerical_gradient(b, loss_of([&](D& o) { mp_sum_forward(CpuBackend{}, x, b, 0.3, o); })), fd_tol);

    // clip at 1.5: values of |x| > 1.5 exist for std 2 inputs and get no gradient.
    clip_backward(CpuBackend{}, x, dy, 1.5, dx);
    MPNET_CHECK_CLOSE(dx, numerical_gradient(x, loss_of([&](D& o) { clip_forward(CpuBackend{}, x, 1.5, o); })), fd_tol);

    auto s = random_tensor({2, 3}, 6);
    D ds(s.shape());
    scale_channels_backward(CpuBackend{}, x, s, dy, dx, ds);
    auto scaled = loss_of([&](D& o) { scale_channels_forward(CpuBackend{}, x, s, o); });
    MPNET_CHECK_CLOSE(dx, numerical_gradient(x, scaled), fd_tol);
    MPNET_CHECK_CLOSE(ds, numerical_gradient(s, scaled), fd_tol);

    auto a = random_tensor({2, 2, 3, 3}, 7), c = random_tensor({2, 5, 3, 3}, 8), dcat = random_tensor({2, 7, 3, 3}, 9);
    D da(a.shape()), dc(c.shape());
    mp_cat_backward(CpuBackend{}, dcat, 0.4, da, dc);
    auto cat_loss = [&] {
        D o(dcat.shape());
        mp_cat_forward(CpuBackend{}, a, c, 0.4, o);
        return dot(CpuBackend{}, o, dcat);
    };
    MPNET_CHECK_CLOSE(da, numerical_gradient(a, cat_loss), fd_tol);
    MPNET_CHECK_CLOSE(dc, numerical_gradient(c, cat_loss), fd_tol);
}

TEST_CASE("fd: the fused modulation + mp_silu and mp_silu's accumulating backward") {
    // 5x3 planes: 15 elements, so the SIMD loops run their partial last packet too.
    auto x = random_tensor({2, 3, 5, 3}, 21, 2.0), s = random_tensor({2, 3}, 22), dy = random_tensor({2, 3, 5, 3}, 23);
    const auto loss = [&] {
        D out(x.shape());
        modulated_silu_forward(CpuBackend{}, x, s, out);
        return dot(CpuBackend{}, out, dy);
    };
    D dx(x.shape()), ds(s.shape());
    modulated_silu_backward(CpuBackend{}, x, s, dy, dx, ds);
    MPNET_CHECK_CLOSE(dx, numerical_gradient(x, loss), fd_tol);
    MPNET_CHECK_CLOSE(ds, numerical_gradient(s, loss), fd_tol);
    D in_place = dy.clone();  // dx may alias dy, as Block uses it
    modulated_silu_backward(CpuBackend{}, x, s, in_place, in_place, ds);
    MPNET_CHECK_CLOSE(in_place, dx, 0.0);

    // The fused forward is the composition of its parts.
    D scaled(x.shape()), composed(x.shape()), fused(x.shape());
    scale_channels_forward(CpuBackend{}, x, s, scaled);
    mp_silu_forward(CpuBackend{}, scaled, composed);
    modulated_silu_forward(CpuBackend{}, x, s, fused);
    MPNET_CHECK_CLOSE(fused, composed, 1e-15);

    // mp_silu_backward_add adds the gradient to what dx holds.
    D acc = random_tensor(x.shape(), 24), plain(x.shape());
    const D before = acc.clone();
    mp_silu_backward_add(CpuBackend{}, x, dy, acc);
    mp_silu_backward(CpuBackend{}, x, dy, plain);
    axpby(CpuBackend{}, 1.0, before, 1.0, plain);
    MPNET_CHECK_CLOSE(acc, plain, 1e-15);
}

TEST_CASE("fd: MPFourier") {
    nn::MPFourier<double, CpuBackend> f(12, 42);
    auto x = random_tensor({5}, 10, 0.5), dy = random_tensor({5, 12}, 11);
    auto num = numerical_gradient(x, [&] { return dot(CpuBackend{}, f.forward(x), dy); });
    MPNET_CHECK_CLOSE(f.backward(x, dy), num, fd_tol);
}

// The float kernel takes vectorised float sines and cosines of angles reduced in double; the
// double kernel is the exact function. Over the angles EDM2 meets (frequencies 2 pi N(0, 1),
// noise levels to c_noise = +-6, so up to about 100 rad) they agree to within 8 float ulps.
TEST_CASE("MPFourier in float: within 8 ulps of the double-precision result, angles to 150 rad") {
    nn::MPFourier<float, CpuBackend> f32(256, 7);
    nn::MPFourier<double, CpuBackend> f64(256, 7);
    for (int i = 0; i < 256; ++i) {  // the same float buffers in both
        f64.freqs.data()[i] = f32.freqs.data()[i];
        f64.phases.data()[i] = f32.phases.data()[i];
    }
    std::vector<float> xs;
    for (int i = 0; i < 64; ++i) xs.push_back(float(-6 + 12.0 * i / 63));
    const auto x32 = CpuTensor<float>::from_host(Shape{64}, xs);
    auto x64 = D(Shape{64});
    for (int i = 0; i < 64; ++i) x64.data()[i] = xs[size_t(i)];
    const auto y32 = f32.forward(x32);
    const auto y64 = f64.forward(x64);
    double worst = 0, largest_angle = 0;
    for (int64_t i = 0; i < y64.numel(); ++i) {
        worst = std::max(worst, std::abs(double(y32.data()[i]) - y64.data()[i]));
        largest_angle = std::max(largest_angle, std::abs(double(xs[size_t(i / 256)]) * f64.freqs.data()[i % 256]));
    }
    CHECK(largest_angle > 100);
    // sqrt(2) |cos| <= 1.42: the reduced angle's rounding, the vector cosine's 1-2 ulps and
    // the final product, with room for other instruction sets' cosines.
    CHECK(worst < 8 * 1.41421356 * 0x1p-24);
    auto dy64 = random_tensor({64, 256}, 12);
    std::vector<float> dy(size_t(dy64.numel()));
    for (std::size_t i = 0; i < dy.size(); ++i) dy64.data()[i] = dy[i] = float(dy64.data()[i]);  // both sides the same floats
    const auto dx32 = f32.backward(x32, CpuTensor<float>::from_host(Shape{64, 256}, dy));
    const auto dx64 = f64.backward(x64, dy64);
    MPNET_CHECK_CLOSE(dx32, dx64, 1e-6);
}

TEST_CASE("fd: MPConv linear, 1x1, 3x3 and 5x5 with gain gradient") {
    for (int64_t k : {0, 1, 3, 5}) {
        CAPTURE(k);
        nn::MPConv<double, CpuBackend> conv(3, 4, k);
        conv.weight.value = random_tensor(conv.weight.value.shape(), 20 + uint64_t(k), 2.0);
        auto x = k ? random_tensor({2, 3, 6, 5}, 30) : random_tensor({4, 3}, 31);
        auto dy = random_tensor(conv.output_shape(x.shape()), 32);
        // The gain a learned one-element tensor, its gradient accumulated on the backend.
        const double gain = 0.7;
        const D g = D::from_host(Shape{1}, std::vector<double>{gain});
        nn::MPConv<double, CpuBackend>::Context ctx;
        conv.forward(x, g, &ctx);
        D dgain = D::from_host(Shape{1}, std::vector<double>{0.25});
        auto dx = conv.backward(dy, ctx, &dgain);
        auto loss = [&](double v) { return dot(CpuBackend{}, conv.forward(x, v), dy); };
        MPNET_CHECK_CLOSE(dx, numerical_gradient(x, [&] { return loss(gain); }), fd_tol);
        MPNET_CHECK_CLOSE(conv.weight.grad, numerical_gradient(conv.weight.value, [&] { return loss(gain); }), fd_tol);
        const double h = 1e-6, num_gain = (loss(gain + h) - loss(gain - h)) / (2 * h);
        CHECK(dgain.to_host()[0] - 0.25 == doctest::Approx(num_gain).epsilon(1e-7));
        // A fixed gain gives the same output as the learned one of the same value.
        MPNET_CHECK_CLOSE(conv.forward(x, gain), conv.forward(x, g), 0.0);
    }
}

TEST_CASE("fd: resample up and down with filters of length 2, 4 and 6") {
    for (auto filter : {std::vector<double>{1, 1}, std::vector<double>{1, 3, 3, 1}, std::vector<double>{1, 2, 5, 5, 2, 1}})
        for (auto mode : {ops::Resample::down, ops::Resample::up}) {
            CAPTURE(filter.size());
            auto x = random_tensor({2, 2, 6, 8}, 40);
            const Shape ys = ops::resampled_shape(x.shape(), mode);
            auto dy = random_tensor(ys, 41);
            D dx(x.shape());
            resample_backward(CpuBackend{}, dy, filter, mode, dx);
            auto num = numerical_gradient(x, [&] {
                D y(ys);
                resample_forward(CpuBackend{}, x, filter, mode, y);
                return dot(CpuBackend{}, y, dy);
            });
            MPNET_CHECK_CLOSE(dx, num, fd_tol);
        }
}

TEST_CASE("resample with [1,1] is 2x2 averaging and nearest-neighbour doubling") {
    auto x = random_tensor({1, 1, 4, 4}, 50);
    D down(Shape{1, 1, 2, 2}), up(Shape{1, 1, 8, 8});
    resample_forward(CpuBackend{}, x, {1, 1}, ops::Resample::down, down);
    resample_forward(CpuBackend{}, x, {1, 1}, ops::Resample::up, up);
    const double* p = x.data();
    CHECK(down.data()[3] == doctest::Approx((p[10] + p[11] + p[14] + p[15]) / 4));
    CHECK(up.data()[8 * 5 + 6] == p[2 * 4 + 3]);
}

TEST_CASE("fd: attention core with 1, 2 and 4 heads") {
    for (int64_t heads : {1, 2, 4}) {
        CAPTURE(heads);
        auto qkv = random_tensor({2, 24, 3, 3}, 60), dy = random_tensor({2, 8, 3, 3}, 61);
        ops::AttentionContext<double, CpuBackend> ctx;
        D y(dy.shape()), dqkv(qkv.shape());
        attention_forward(CpuBackend{}, qkv, heads, y, &ctx);
        attention_backward(CpuBackend{}, ctx, heads, dy, dqkv);
        auto num = numerical_gradient(qkv, [&] {
            D out(dy.shape());
            attention_forward(CpuBackend{}, qkv, heads, out, nullptr);
            return dot(CpuBackend{}, out, dy);
        });
        MPNET_CHECK_CLOSE(dqkv, num, fd_tol);
    }
}

// An image's attention is the same alone and within a batch, in training (weights saved per
// job) and inference (per thread): with 5x3 pixels the rows of its softmax weights lie at
// another alignment in each, and the softmax's exponentials and sums and the backward's row
// dots must not depend on it (Eigen's own loops peel to an aligned address).
TEST_CASE("attention core: an image's results are the same bits alone and within a batch") {
    const CpuBackend b;
    const int64_t heads = 2, per_in = 24 * 15, per_out = 8 * 15;
    CpuTensor<float> qkv(Shape{3, 24, 5, 3}), dy(Shape{3, 8, 5, 3});
    fill_normal(b, qkv, 62, 0, 0.0, 2.0);
    fill_normal(b, dy, 63, 0, 0.0, 1.0);
    ops::AttentionContext<float, CpuBackend> ctx;
    CpuTensor<float> y(dy.shape()), dqkv(qkv.shape());
    attention_forward(b, qkv, heads, y, &ctx);
    attention_backward(b, ctx, heads, dy, dqkv);
    for (int64_t image = 0; image < 3; ++image) {
        CAPTURE(image);
        ops::AttentionContext<float, CpuBackend> alone;
        CpuTensor<float> qkv1(Shape{1, 24, 5, 3}), dy1(Shape{1, 8, 5, 3}), y1(dy1.shape()), inferred(dy1.shape()),
            dqkv1(qkv1.shape());
        std::copy_n(qkv.data() + image * per_in, per_in, qkv1.data());
        std::copy_n(dy.data() + image * per_out, per_out, dy1.data());
        attention_forward(b, qkv1, heads, y1, &alone);
        attention_forward(b, qkv1, heads, inferred, nullptr);
        attention_backward(b, alone, heads, dy1, dqkv1);
        CHECK(std::equal(y1.data(), y1.data() + per_out, y.data() + image * per_out));
        CHECK(std::equal(inferred.data(), inferred.data() + per_out, y.data() + image * per_out));
        CHECK(std::equal(dqkv1.data(), dqkv1.data() + per_in, dqkv.data() + image * per_in));
    }
}

TEST_CASE("dropout keeps about 1-p of the elements, rescaled, and backward uses the same mask") {
    auto x = CpuTensor<double>::zeros({1 << 16});
    fill(CpuBackend{}, x, 1.0);
    D y(x.shape()), dx(x.shape());
    dropout_apply(CpuBackend{}, x, 0.25, 7, y);
    int64_t kept = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
        REQUIRE((y.data()[i] == 0.0 || y.data()[i] == doctest::Approx(1 / 0.75)));
        kept += y.data()[i] != 0;
    }
    CHECK(double(kept) / double(x.numel()) == doctest::Approx(0.75).epsilon(0.01));
    dropout_apply(CpuBackend{}, x, 0.25, 7, dx);  // the backward of a mask is the same mask
    MPNET_CHECK_CLOSE(dx, y, 0.0);
}

// The seed read from the backend (nn/dropout_seed.hpp) gives the mask of substream(seed,
// stream) exactly, for seeds that use all 64 bits; and a new seed written over it is seen.
TEST_CASE("dropout with its seed on the backend: the mask of substream(seed, stream), and a rewritten seed is used") {
    const auto x = random_tensor(Shape{4099}, 3);
    const nn::DropoutSeed<CpuBackend> seed;
    for (const uint64_t s : {uint64_t{0}, uint64_t{7}, uint64_t{0xFFFFFFFFFFFFFFFF}, uint64_t{0x8000000100000001}}) {
        CAPTURE(s);
        seed.set(s);
        for (const uint64_t stream : {uint64_t{0}, uint64_t{5}}) {
            D keyed(x.shape()), direct(x.shape());
            dropout_apply(CpuBackend{}, x, 0.3, seed.words, stream, keyed);
            dropout_apply(CpuBackend{}, x, 0.3, rng::substream(s, stream), direct);
            MPNET_CHECK_CLOSE(keyed, direct, 0.0);
        }
        CHECK(rng::from_words(seed.words.data()[0], seed.words.data()[1]) == s);
    }
    D a(x.shape()), b(x.shape());
    seed.set(1);
    dropout_apply(CpuBackend{}, x, 0.3, seed.words, 0, a);
    seed.set(2);
    dropout_apply(CpuBackend{}, x, 0.3, seed.words, 0, b);
    int64_t differ = 0;
    for (int64_t i = 0; i < a.numel(); ++i) differ += a.data()[i] != b.data()[i];
    CHECK(differ > 100);
}
