// Every CUDA kernel against the CPU kernel on the same random inputs, in float and double;
// the RNG streams; the math modes; memory, streams and error reporting. (That both
// backends declare the same kernels is asserted by their headers: backend/kernels.hpp.)
#include <algorithm>
#include <array>
#include <limits>

#include "concurrently.hpp"
#include "cuda_test.cuh"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/host_staging.hpp"

using namespace mpnet;
using test::compare_backends;
using test::gpu_fwd_tol;
using test::gpu_grad_tol;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

namespace {

// Shorthands inside the generic lambdas: the tensor type of the tag's backend.
template <class T, class Tag>
using TensorOf = Tensor<T, Tag>;
template <class T, class Tag>
using Outputs = std::vector<Tensor<T, Tag>>;

}  // namespace

TEST_CASE_TEMPLATE("cuda kernels: mp_silu, mp_sum, mp_cat, clip, dropout", T, float, double) {
    const Shape s{3, 5, 7, 9};
    const auto x = random_cpu<T>(s, 1, 2.0), b = random_cpu<T>(s, 2), dy = random_cpu<T>(s, 3);
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(in[0].shape()), dx(in[0].shape()), inplace = in[0].clone();
            mp_silu_forward(tag, in[0], y);
            mp_silu_forward(tag, inplace, inplace);
            mp_silu_backward(tag, in[0], in[2], dx);
            TT acc = in[1].clone();
            mp_silu_backward_add(tag, in[0], in[2], acc);
            return Outputs<T, decltype(tag)>{y, inplace, dx, acc};
        },
        gpu_grad_tol<T>, {x, b, dy});
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(in[0].shape()), da(in[0].shape()), db(in[0].shape()), da_only(in[0].shape()), none;
            mp_sum_forward(tag, in[0], in[1], 0.3, y);
            mp_sum_backward(tag, in[2], 0.3, da, db);
            mp_sum_backward(tag, in[2], 0.7, da_only, none);
            return Outputs<T, decltype(tag)>{y, da, db, da_only};
        },
        gpu_fwd_tol<T>, {x, b, dy});
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(in[0].shape()), dx(in[0].shape()), drop(in[0].shape());
            clip_forward(tag, in[0], 1.5, y);
            clip_backward(tag, in[0], in[2], 1.5, dx);
            dropout_apply(tag, in[0], 0.25, 77, drop);
            return Outputs<T, decltype(tag)>{y, dx, drop};
        },
        0.0, {x, b, dy});  // exact: selections and one multiplication
    const auto a = random_cpu<T>({2, 3, 4, 5}, 4), c = random_cpu<T>({2, 6, 4, 5}, 5), dcat = random_cpu<T>({2, 9, 4, 5}, 6);
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(in[2].shape()), da(in[0].shape()), dc(in[1].shape());
            mp_cat_forward(tag, in[0], in[1], 0.4, y);
            mp_cat_backward(tag, in[2], 0.4, da, dc);
            return Outputs<T, decltype(tag)>{y, da, dc};
        },
        gpu_fwd_tol<T>, {a, c, dcat});
}

// The hardware's conversions round to nearest even like the CPU's: the same bits for every
// value but NaN (whose payload the hardware makes canonical).
TEST_CASE_TEMPLATE("cuda kernels: conversion to and from 16-bit storage, bit for bit the CPU's", A, float16, bfloat16) {
    auto x = random_cpu<float>(Shape{5, 3001}, 9, 1000);
    for (int64_t i = 0; i < x.numel(); i += 7) x.data()[i] *= 1e-9f;  // subnormal and vanishing ones too
    x.data()[1] = 70000.0f, x.data()[2] = -std::numeric_limits<float>::infinity(), x.data()[3] = -0.0f;
    CpuTensor<A> cpu_h(x.shape());
    convert(CpuBackend{}, x, cpu_h);
    CudaTensor<A> gpu_h(x.shape());
    convert(CudaBackend{}, to_gpu(x), gpu_h);
    const auto got = gpu_h.to_host();
    CudaTensor<float> back(x.shape());
    convert(CudaBackend{}, gpu_h, back);
    const auto widened = back.to_host();
    int wrong = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
        wrong += got[size_t(i)].bits != cpu_h.data()[i].bits;
        wrong += widened[size_t(i)] != cpu_h.data()[i].to_float();
    }
    CHECK(wrong == 0);
}

// The native 16-bit kernels (one pass over 16-bit memory, computing in float) against the
// CPU's, which give the generic kernels' bits (widen, float kernel, round), on the same
// 16-bit inputs: each result
// within 4 units of the format's roundoff of its scale (a result may round to the other
// neighbour where the float values differ in their last bits; the modulated SiLU rounds
// x s before the SiLU on the GPU, as the reference does, and once on the CPU).
TEST_CASE_TEMPLATE("cuda kernels: the layers' kernels on 16-bit activations against the CPU's", A, float16, bfloat16) {
    const double u = std::is_same_v<A, float16> ? 1.0 / 2048 : 1.0 / 256;
    auto half_cpu = [](const CpuTensor<float>& f) { return converted<A>(f); };
    const Shape s{2, 6, 8, 8};
    const std::vector<CpuTensor<A>> in{half_cpu(random_cpu<float>(s, 1)), half_cpu(random_cpu<float>(s, 2)),
                                       half_cpu(random_cpu<float>(Shape{2, 6}, 3)),
                                       half_cpu(random_cpu<float>(Shape{5, 6, 3, 3}, 4, 0.2)),
                                       half_cpu(random_cpu<float>(Shape{2, 5, 8, 8}, 5))};
    auto run = [&](auto tag, const std::vector<Tensor<A, decltype(tag)>>& t) {
        using B = decltype(tag);
        using TA = Tensor<A, B>;
        std::vector<TA> out;
        out.reserve(32);  // references from next() stay valid; copies share the element's storage
        auto next = [&](Shape shape) -> TA& { return out.emplace_back(shape); };
        mp_silu_forward(tag, t[0], next(s));
        TA acc = t[1].clone();
        mp_silu_backward_add(tag, t[0], t[1], acc);
        out.push_back(acc);
        modulated_silu_forward(tag, t[0], t[2], next(s));
        TA mdx = next(s), mds = next(Shape{2, 6});
        modulated_silu_backward(tag, t[0], t[2], t[1], mdx, mds);
        mp_sum_forward(tag, t[0], t[1], 0.3, next(s));
        TA da = next(s), none;
        mp_sum_backward(tag, t[1], 0.3, da, none);
        mp_cat_forward(tag, t[0], t[1], 0.5, next(Shape{2, 12, 8, 8}));
        clip_forward(tag, t[0], 0.5, next(s));
        clip_backward(tag, t[0], t[1], 0.5, next(s));
        Tensor<double, B> words = Tensor<double, B>::zeros(Shape{2});
        dropout_apply(tag, t[0], 0.25, words, 3, next(s));
        append_ones_channel(tag, t[0], next(Shape{2, 7, 8, 8}));
        TA y = t[1].clone();
        axpby(tag, 0.5f, t[0], -2.0f, y);
        out.push_back(y);
        Tensor<float, B> scale;
        normalize_forward(tag, t[0], ops::Dims{1}, next(s), &scale);
        normalize_backward(tag, t[0], t[1], ops::Dims{1}, scale, next(s));
        resample_forward(tag, t[0], {1, 1}, ops::Resample::down, next(Shape{2, 6, 4, 4}));
        resample_forward(tag, t[0], {1, 3, 3, 1}, ops::Resample::up, next(Shape{2, 6, 16, 16}));
        resample_backward(tag, t[0], {1, 3, 3, 1}, ops::Resample::down, next(Shape{2, 6, 16, 16}));
        conv2d_forward(tag, t[0], t[3], next(Shape{2, 5, 8, 8}));
        TA cdx = next(s), cdw = next(Shape{5, 6, 3, 3});
        conv2d_backward(tag, t[0], t[3], t[4], cdx, cdw);
        return out;
    };
    std::vector<CudaTensor<A>> on_gpu;
    for (const auto& t : in) on_gpu.push_back(to_gpu(t));
    const auto want = run(CpuBackend{}, in);
    const auto got = run(CudaBackend{}, on_gpu);
    REQUIRE(want.size() == got.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        CAPTURE(i);
        MPNET_CHECK_CLOSE(converted<float>(to_cpu(got[i])), converted<float>(want[i]), 4 * u);
    }
}

TEST_CASE_TEMPLATE("cuda kernels: channel scaling, ones channel, arithmetic, fill", T, float, double) {
    const Shape s{3, 4, 6, 5};
    const auto x = random_cpu<T>(s, 7), k = random_cpu<T>({3, 4}, 8), dy = random_cpu<T>(s, 9);
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(in[0].shape()), dx(in[0].shape()), ds(in[1].shape()), ones(Shape{3, 5, 6, 5});
            scale_channels_forward(tag, in[0], in[1], y);
            scale_channels_backward(tag, in[0], in[1], in[2], dx, ds);
            TT my(in[0].shape()), mdx(in[0].shape()), mds(in[1].shape());
            modulated_silu_forward(tag, in[0], in[1], my);
            modulated_silu_backward(tag, in[0], in[1], in[2], mdx, mds);
            append_ones_channel(tag, in[0], ones);
            TT acc = in[2].clone(), staged = in[2].clone(), aff(in[0].shape()), filled(in[0].shape());
            axpby(tag, T(0.7), in[0], T(-1.3), acc);
            axpby_staged(tag, TT::from_host(Shape{2}, std::vector<T>{T(0.7), T(-1.3)}), in[0], staged);
            affine(tag, in[0], T(2.5), T(-0.5), aff);
            affine(tag, aff, T(1), T(1), aff);  // in place, as Block adds 1 to its modulation
            fill(tag, filled, T(3.25));
            return Outputs<T, decltype(tag)>{y, dx, ds, my, mdx, mds, ones, acc, staged, aff, filled};
        },
        gpu_grad_tol<T>, {x, k, dy});
}

TEST_CASE_TEMPLATE("cuda kernels: sum, dot, clear_nonfinite", T, float, double) {
    auto x = random_cpu<T>({1000, 37}, 10), y = random_cpu<T>({1000, 37}, 11);
    const auto gx = to_gpu(x), gy = to_gpu(y);
    const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-12;
    CHECK(sum(CudaBackend{}, gx) == doctest::Approx(sum(CpuBackend{}, x)).epsilon(tol));
    CHECK(dot(CudaBackend{}, gx, gy) == doctest::Approx(dot(CpuBackend{}, x, y)).epsilon(tol));
    CHECK(sum(CudaBackend{}, CudaTensor<T>(Shape{0})) == 0.0);
    // Run twice: the fixed reduction grid gives the same bits.
    CHECK(dot(CudaBackend{}, gx, gy) == dot(CudaBackend{}, gx, gy));
    x.data()[3] = std::numeric_limits<T>::quiet_NaN();
    x.data()[500] = std::numeric_limits<T>::infinity();
    x.data()[36999] = -std::numeric_limits<T>::infinity();
    auto g = to_gpu(x);
    clear_nonfinite(CudaBackend{}, g);
    clear_nonfinite(CpuBackend{}, x);
    CHECK((x.data()[3] == 0 && x.data()[500] == 0 && x.data()[36999] == 0));
    MPNET_CHECK_GPU(g, x, 0.0);
}

TEST_CASE_TEMPLATE("cuda kernels: normalize over rows, columns and any dims", T, float, double) {
    struct Case {
        Shape shape;
        ops::Dims dims;
        // Float's tolerance. Groups of one element are the ill-conditioned case: there
        // dx = dy eps / s^2 is the difference of two terms |x| / eps (~1e4) times larger,
        // which the CPU forms in float and the GPU in double before rounding, so the float
        // results differ by ~1e4 float epsilons (the double comparison stays at 1e-12).
        double float_tol = gpu_grad_tol<float>;
    };
    for (const Case& c : {Case{{6, 5, 3, 3}, ops::Dims::all_but_first()},  // rows (a conv weight)
                          Case{{16, 64, 3, 3}, ops::Dims::all_but_first()},
                          Case{{3, 8, 5, 7}, ops::Dims{1}},                  // columns (pixel norm)
                          Case{{2, 40}, ops::Dims{1}},                        // rows, inner 1
                          Case{{4, 3, 5, 2}, ops::Dims{0, 2}},               // a gap: element lists
                          Case{{3, 4, 2, 5}, ops::Dims{1, 3}},
                          Case{{3, 4, 2, 5}, ops::Dims{-1}},
                          Case{{3, 4}, ops::Dims{}, 3e-3}}) {
        CAPTURE(c.shape.str());
        compare_backends<T>(
            [&](auto tag, const auto& in) {
                using TT = TensorOf<T, decltype(tag)>;
                TT y(in[0].shape()), dx(in[0].shape()), scale;
                normalize_forward(tag, in[0], c.dims, y, &scale);
                normalize_backward(tag, in[0], in[1], c.dims, scale, dx);
                TT y_only(in[0].shape());
                normalize_forward(tag, in[0], c.dims, y_only);
                return Outputs<T, decltype(tag)>{y, scale, dx, y_only};
            },
            std::is_same_v<T, float> ? c.float_tol : gpu_grad_tol<T>,
            {random_cpu<T>(c.shape, 12, 3.0), random_cpu<T>(c.shape, 13)});
    }
}

TEST_CASE_TEMPLATE("cuda kernels: conv2d 1x1, 3x3, 5x5 and linear", T, float, double) {
    struct Case {
        int64_t n, cin, cout, h, w, k;
        bool need_dx;
    };
    for (const Case& c : {Case{3, 5, 6, 9, 7, 3, true}, Case{1, 5, 6, 9, 7, 3, true}, Case{3, 5, 6, 9, 7, 1, true},
                          Case{1, 4, 3, 8, 8, 1, true}, Case{2, 3, 4, 6, 5, 5, true}, Case{3, 5, 6, 9, 7, 3, false},
                          Case{4, 64, 32, 8, 8, 3, true}}) {
        CAPTURE(c.n);
        CAPTURE(c.k);
        CAPTURE(c.cin);
        compare_backends<T>(
            [&](auto tag, const auto& in) {
                using TT = TensorOf<T, decltype(tag)>;
                TT y(Shape{c.n, c.cout, c.h, c.w}), dw(in[1].shape());
                TT dx = c.need_dx ? TT(in[0].shape()) : TT();
                conv2d_forward(tag, in[0], in[1], y);
                conv2d_backward(tag, in[0], in[1], in[2], dx, dw);
                return c.need_dx ? Outputs<T, decltype(tag)>{y, dx, dw} : Outputs<T, decltype(tag)>{y, dw};
            },
            gpu_grad_tol<T>,
            {random_cpu<T>({c.n, c.cin, c.h, c.w}, 14), random_cpu<T>({c.cout, c.cin, c.k, c.k}, 15),
             random_cpu<T>({c.n, c.cout, c.h, c.w}, 16)});
    }
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(Shape{7, 9}), dx(in[0].shape()), dw(in[1].shape()), none;
            TT dw_only(in[1].shape());
            linear_forward(tag, in[0], in[1], y);
            linear_backward(tag, in[0], in[1], in[2], dx, dw);
            linear_backward(tag, in[0], in[1], in[2], none, dw_only);
            return Outputs<T, decltype(tag)>{y, dx, dw, dw_only};
        },
        gpu_grad_tol<T>, {random_cpu<T>({7, 11}, 17), random_cpu<T>({9, 11}, 18), random_cpu<T>({7, 9}, 19)});
}

TEST_CASE_TEMPLATE("cuda kernels: conv2d unfolded a chunk of images at a time", T, float, double) {
    const auto x = random_cpu<T>({5, 4, 6, 6}, 20), w = random_cpu<T>({3, 4, 3, 3}, 21),
               dy = random_cpu<T>({5, 3, 6, 6}, 22);
    const std::size_t saved = CudaBackend::scratch_limit();
    // One image per chunk, then two (the last chunk partial), then all at once.
    for (std::size_t limit : {std::size_t{1}, 2 * (2 * 36 + 3) * 36 * sizeof(T), saved}) {
        CAPTURE(limit);
        CudaBackend::set_scratch_limit(limit);
        for (int64_t k : {1, 3}) {
            CAPTURE(k);
            const auto wk = k == 3 ? w : random_cpu<T>({3, 4, 1, 1}, 23);
            compare_backends<T>(
                [](auto tag, const auto& in) {
                    using TT = TensorOf<T, decltype(tag)>;
                    TT y(in[2].shape()), dx(in[0].shape()), dw(in[1].shape());
                    conv2d_forward(tag, in[0], in[1], y);
                    conv2d_backward(tag, in[0], in[1], in[2], dx, dw);
                    return Outputs<T, decltype(tag)>{y, dx, dw};
                },
                gpu_grad_tol<T>, {x, wk, dy});
        }
    }
    CudaBackend::set_scratch_limit(saved);
}

TEST_CASE_TEMPLATE("cuda kernels: resample up and down, [1,1] and [1,3,3,1]", T, float, double) {
    for (const auto& filter : {std::vector<double>{1, 1}, std::vector<double>{1, 3, 3, 1}})
        for (auto mode : {ops::Resample::down, ops::Resample::up, ops::Resample::keep}) {
            CAPTURE(filter.size());
            CAPTURE(ops::to_string(mode));
            const Shape s{2, 3, 8, 6}, out = ops::resampled_shape(s, mode);
            compare_backends<T>(
                [&](auto tag, const auto& in) {
                    using TT = TensorOf<T, decltype(tag)>;
                    TT y(out), dx(s);
                    resample_forward(tag, in[0], filter, mode, y);
                    resample_backward(tag, in[1], filter, mode, dx);
                    return Outputs<T, decltype(tag)>{y, dx};
                },
                gpu_grad_tol<T>, {random_cpu<T>(s, 24), random_cpu<T>(out, 25)});
        }
}

TEST_CASE_TEMPLATE("cuda kernels: attention core, with and without a saved context", T, float, double) {
    struct Case {
        int64_t n, channels, heads, h, w;
    };
    // The last case has more pixels than a block has threads (row loops in the softmax).
    for (const Case& c : {Case{2, 8, 2, 4, 5}, Case{1, 16, 1, 8, 8}, Case{2, 32, 2, 16, 20}}) {
        CAPTURE(c.channels);
        CAPTURE(c.h * c.w);
        const Shape qkv{c.n, 3 * c.channels, c.h, c.w}, out{c.n, c.channels, c.h, c.w};
        compare_backends<T>(
            [&](auto tag, const auto& in) {
                using TT = TensorOf<T, decltype(tag)>;
                TT y(out), y_inference(out), dqkv(qkv);
                ops::AttentionContext<T, decltype(tag)> ctx;
                attention_forward(tag, in[0], c.heads, y, &ctx);
                attention_forward(tag, in[0], c.heads, y_inference, nullptr);
                attention_backward(tag, ctx, c.heads, in[1], dqkv);
                return Outputs<T, decltype(tag)>{y, y_inference, dqkv};
            },
            gpu_grad_tol<T>, {random_cpu<T>(qkv, 26), random_cpu<T>(out, 27)});
    }
}

TEST_CASE_TEMPLATE("cuda kernels: MPFourier and the EDM2 loss", T, float, double) {
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(Shape{in[0].numel(), in[1].numel()}), dx(in[0].shape());
            mp_fourier_forward(tag, in[0], in[1], in[2], y);
            mp_fourier_backward(tag, in[0], in[1], in[2], in[3], dx);
            return Outputs<T, decltype(tag)>{y, dx};
        },
        gpu_grad_tol<T>,
        {random_cpu<T>({9}, 28), random_cpu<T>({300}, 29, 6.0), random_cpu<T>({300}, 30, 3.0),
         random_cpu<T>({9, 300}, 31)});
    const Shape s{4, 3, 5, 5};
    auto sigma = random_cpu<T>({4}, 32);
    for (int64_t i = 0; i < 4; ++i) sigma.data()[i] = T(std::exp(sigma.data()[i]));
    double loss_cpu = 0, loss_gpu = 0;
    compare_backends<T>(
        [&](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT dD(in[0].shape()), dlogvar(in[2].shape());
            const double l = edm2_loss(tag, in[0], in[1], in[2], in[3], 0.5, 0.01, dD, dlogvar);
            (std::is_same_v<decltype(tag), CpuBackend> ? loss_cpu : loss_gpu) = l;
            return Outputs<T, decltype(tag)>{dD, dlogvar};
        },
        gpu_grad_tol<T>, {random_cpu<T>(s, 33), random_cpu<T>(s, 34), sigma, random_cpu<T>({4}, 35, 0.5)});
    CHECK(loss_gpu == doctest::Approx(loss_cpu).epsilon(std::is_same_v<T, float> ? 1e-6 : 1e-12));
}

// The kernels that keep a training step's scalars on the device (core/host_reads.hpp).
TEST_CASE_TEMPLATE("cuda kernels: scalars on the device: gains, their gradients, coefficients, the loss", T, float,
                   double) {
    auto sigma = random_cpu<T>({6}, 50);
    for (int64_t i = 0; i < 6; ++i) sigma.data()[i] = T(std::exp(1.5 * sigma.data()[i]));
    compare_backends<T>(
        [](auto tag, const auto& in) {
            using TT = TensorOf<T, decltype(tag)>;
            TT y(in[0].shape()), acc = in[2].clone(), finite = in[0].clone();
            scale_by_scalar(tag, in[0], in[2], 3.0, y);
            dot_accumulate(tag, in[0], in[1], 3.0, acc);
            dot_accumulate(tag, in[1], in[1], 1.0, acc);
            clear_nonfinite(tag, finite);
            TT skip(in[3].shape()), out(in[3].shape()), cin(in[3].shape()), noise(in[3].shape());
            precond_coefficients(tag, in[3], 0.5, skip, out, cin, noise);
            return Outputs<T, decltype(tag)>{y, acc, finite, skip, out, cin, noise};
        },
        gpu_grad_tol<T>, {random_cpu<T>({7, 300}, 51), random_cpu<T>({7, 300}, 52), random_cpu<T>({1}, 53), sigma});
    // Non-finite values become zero, the others stay.
    auto x = random_cpu<T>({1000}, 54);
    x.data()[3] = std::numeric_limits<T>::quiet_NaN(), x.data()[999] = -std::numeric_limits<T>::infinity();
    auto g = to_gpu(x);
    clear_nonfinite(CudaBackend{}, g);
    x.data()[3] = x.data()[999] = T(0);
    MPNET_CHECK_GPU(g, x, 0.0);
    // The loss written to a device tensor: the CPU's loss and gradients.
    const Shape s{4, 3, 5, 5};
    const std::vector<CpuTensor<T>> in{random_cpu<T>(s, 55), random_cpu<T>(s, 56), sigma.slice(0, 4).clone(),
                                       random_cpu<T>({4}, 57, 0.5)};
    CpuTensor<T> dD(s), dlogvar(Shape{4});
    const double want = edm2_loss(CpuBackend{}, in[0], in[1], in[2], in[3], 0.5, 0.01, dD, dlogvar);
    CudaTensor<T> gdD(s), gdlogvar(Shape{4});
    CudaTensor<double> total(Shape{1});
    edm2_loss(CudaBackend{}, to_gpu(in[0]), to_gpu(in[1]), to_gpu(in[2]), to_gpu(in[3]), 0.5, 0.01, gdD, gdlogvar,
              total);
    CHECK(total.to_host()[0] == doctest::Approx(want).epsilon(std::is_same_v<T, float> ? 1e-6 : 1e-12));
    MPNET_CHECK_GPU(gdD, dD, gpu_grad_tol<T>);
    MPNET_CHECK_GPU(gdlogvar, dlogvar, gpu_grad_tol<T>);
}

TEST_CASE_TEMPLATE("cuda kernels: adam_step", T, float, double) {
    const Shape s{33, 17};
    auto m0 = random_cpu<T>(s, 45, 0.1), v0 = random_cpu<T>(s, 46, 0.1);
    for (int64_t i = 0; i < v0.numel(); ++i) v0.data()[i] = v0.data()[i] * v0.data()[i];
    compare_backends<T>(
        [](auto tag, const auto& in) {
            auto p = in[0].clone(), m = in[2].clone(), v = in[3].clone();
            for (int64_t step : {1, 2, 50}) {
                const auto c = TensorOf<double, decltype(tag)>::from_host(
                    Shape{3}, train::adam_step_coefficients(0.01, 0.9, 0.99, step));
                adam_step(tag, p, in[1], m, v, c, 0.9, 0.99, 1e-8);
            }
            return Outputs<T, decltype(tag)>{p, m, v};
        },
        gpu_fwd_tol<T>, {random_cpu<T>(s, 47), random_cpu<T>(s, 48), m0, v0});
}

TEST_CASE_TEMPLATE("cuda rng: fill_uniform, fill_normal and dropout give the CPU's streams", T, float, double) {
    const Shape s{1 << 20};
    CpuTensor<T> c(s);
    CudaTensor<T> g(s);
    for (uint64_t seed : {uint64_t{0}, uint64_t{12345}, uint64_t{0xDEADBEEFCAFE}})
        for (uint64_t offset : {uint64_t{0}, uint64_t{1} << 40}) {
            CAPTURE(seed);
            CAPTURE(offset);
            fill_uniform(CpuBackend{}, c, seed, offset);
            fill_uniform(CudaBackend{}, g, seed, offset);
            MPNET_CHECK_GPU(g, c, 0.0);
            fill_normal(CpuBackend{}, c, seed, offset, 0.5, 2.0);
            fill_normal(CudaBackend{}, g, seed, offset, 0.5, 2.0);
            // Rounded to float the streams are identical; in double the device's log and cos
            // may differ from the host's in the last bit.
            MPNET_CHECK_GPU(g, c, (std::is_same_v<T, float> ? 0.0 : 1e-15));
        }
    // An offset continues the stream: elements [k, n) of one fill are a fill at offset k.
    CudaTensor<T> head(Shape{1000}), tail(Shape{700});
    fill_normal(CudaBackend{}, head, 9, 0);
    fill_normal(CudaBackend{}, tail, 9, 300);
    MPNET_CHECK_CLOSE(to_cpu(tail), to_cpu(head.slice(300, 1000)), 0.0);
}

TEST_CASE("cuda math modes: tensor-core products stay close to the fp32 result") {
    using mpnet::cuda::Math;
    struct Mode {
        Math math;
        double tol;  // fp16 and tf32 keep 11 significant bits, bf16 8
    };
    for (const Mode& m : {Mode{Math::fp32, 1e-4}, Mode{Math::tf32, 1e-2}, Mode{Math::fp16, 1e-2},
                          Mode{Math::bf16, 5e-2}}) {
        CAPTURE(mpnet::cuda::to_string(m.math));
        mpnet::cuda::MathScope scope(m.math);
        CHECK(CudaBackend::math() == m.math);
        compare_backends<float>(
            [](auto tag, const auto& in) {
                using TT = TensorOf<float, decltype(tag)>;
                TT y(in[2].shape()), dx(in[0].shape()), dw(in[1].shape());
                conv2d_forward(tag, in[0], in[1], y);
                conv2d_backward(tag, in[0], in[1], in[2], dx, dw);
                return Outputs<float, decltype(tag)>{y, dx, dw};
            },
            m.tol,
            {random_cpu<float>({4, 32, 16, 16}, 36), random_cpu<float>({64, 32, 3, 3}, 37),
             random_cpu<float>({4, 64, 16, 16}, 38)});
        compare_backends<float>(
            [](auto tag, const auto& in) {
                using TT = TensorOf<float, decltype(tag)>;
                TT y(Shape{2, 64, 8, 8}), dqkv(in[0].shape());
                ops::AttentionContext<float, decltype(tag)> ctx;
                attention_forward(tag, in[0], 2, y, &ctx);
                attention_backward(tag, ctx, 2, in[1], dqkv);
                return Outputs<float, decltype(tag)>{y, dqkv};
            },
            2 * m.tol, {random_cpu<float>({2, 192, 8, 8}, 39), random_cpu<float>({2, 64, 8, 8}, 40)});
    }
    CHECK(CudaBackend::math() == Math::fp32);
    CHECK(mpnet::cuda::parse_math("bf16") == Math::bf16);
    CHECK_THROWS_AS((void)mpnet::cuda::parse_math("fp8"), Error);
}

TEST_CASE("cuda memory: a repeated step takes nothing new from the driver") {
    auto x = to_gpu(random_cpu<float>({4, 16, 16, 16}, 41));
    auto w = to_gpu(random_cpu<float>({32, 16, 3, 3}, 42));
    auto step = [&] {
        CudaTensor<float> y(Shape{4, 32, 16, 16}), dx(x.shape()), dw(w.shape());
        conv2d_forward(CudaBackend{}, x, w, y);
        conv2d_backward(CudaBackend{}, x, w, y, dx, dw);
        CudaBackend::synchronize();
    };
    step();
    int device = 0;
    mpnet::cuda::cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    cudaMemPool_t pool = nullptr;
    mpnet::cuda::cuda_check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    auto reserved = [&] {
        uint64_t bytes = 0;
        mpnet::cuda::cuda_check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &bytes),
                                "cudaMemPoolGetAttribute");
        return bytes;
    };
    const uint64_t before = reserved();
    CudaBackend::reset_peak();
    step();
    step();
    CHECK(reserved() == before);
    CHECK(CudaBackend::peak_bytes() > mpnet::cuda::DevicePool::instance().bytes_in_use());
}

namespace {
// Keeps the stream busy for about `cycles` clock cycles, so that copies queued behind it are
// still pending when the host moves on.
__global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
}  // namespace

// The trainer's uploads through two page-locked slots (train/host_staging.hpp): each upload
// takes its values when called (the host buffer is overwritten at once), kernels queued after
// it see them, and a slot is refilled only once the copies out of it ran: each batch waits
// behind a kernel of some 20 ms, so a slot refilled without waiting would change the copies
// still pending from it and the sum. A batch larger than the room given is refused, and so
// is an upload into a stream being captured.
TEST_CASE("cuda host staging: pinned uploads arrive in order, each slot refilled only once read") {
    static_assert(train::PinnedUploads<CudaBackend>);
    const int64_t n = 1 << 16;
    train::HostStaging<CudaBackend> staging(std::array<std::size_t, 2>{n * sizeof(float), sizeof(double)});
    CudaTensor<float> staged(Shape{n}), sum = CudaTensor<float>::zeros(Shape{n});
    CudaTensor<double> scalar(Shape{1});
    std::vector<float> host(static_cast<size_t>(n));
    for (int k = 1; k <= 8; ++k) {
        std::fill(host.begin(), host.end(), float(k));
        const std::array<double, 1> one{double(k)};
        spin<<<1, 1, 0, CudaBackend::stream()>>>(30'000'000);
        {
            auto uploads = staging.next();
            uploads(staged, std::span<const float>(host));
            uploads(scalar, std::span<const double>(one));
        }
        std::fill(host.begin(), host.end(), -100.0f);
        axpby(CudaBackend{}, 1.0f, staged, 1.0f, sum);
    }
    const auto got = sum.to_host();
    CHECK(std::count(got.begin(), got.end(), 36.0f) == n);
    CHECK(scalar.to_host()[0] == 8.0);
    auto uploads = staging.next();
    CudaTensor<float> big(Shape{2 * n});
    const std::vector<float> values(size_t(2 * n), 1.0f);
    CHECK_THROWS_WITH_AS(uploads(big, std::span<const float>(values)), doctest::Contains("room for"), Error);
}

TEST_CASE("cuda host staging: an upload into a stream being captured is refused") {
    mpnet::cuda::Context ctx(mpnet::cuda::detail::current_device());
    const mpnet::cuda::ContextScope scope(ctx);
    train::HostStaging<CudaBackend> staging(std::array<std::size_t, 1>{sizeof(float)});
    CudaTensor<float> t(Shape{1});
    const std::array<float, 1> one{1.0f};
    auto uploads = staging.next();
    mpnet::cuda::cuda_check(cudaStreamBeginCapture(ctx.stream(), cudaStreamCaptureModeThreadLocal), "begin capture");
    CHECK_THROWS_WITH_AS(uploads(t, std::span<const float>(one)), doctest::Contains("captured"), Error);
    cudaGraph_t graph = nullptr;
    mpnet::cuda::cuda_check(cudaStreamEndCapture(ctx.stream(), &graph), "end capture");
    if (graph) (void)cudaGraphDestroy(graph);
}

TEST_CASE("cuda contexts: work follows the current context, on its stream, device and math") {
    const int device = mpnet::cuda::detail::current_device();
    mpnet::cuda::Context ctx(device, mpnet::cuda::Math::tf32);
    const cudaStream_t before = CudaBackend::stream();
    const auto default_math = CudaBackend::math();
    {
        mpnet::cuda::ContextScope scope(ctx);
        CHECK(CudaBackend::stream() == ctx.stream());
        CHECK(CudaBackend::stream() != before);
        CHECK(CudaBackend::math() == mpnet::cuda::Math::tf32);
        CHECK(mpnet::cuda::detail::current_device() == device);
        mpnet::cuda::MathScope fp32(mpnet::cuda::Math::fp32);  // a MathScope changes the current context only
        compare_backends<float>(
            [](auto tag, const auto& in) {
                using TT = TensorOf<float, decltype(tag)>;
                TT y(Shape{2, 6, 8, 8}), n(Shape{2, 6, 8, 8});
                conv2d_forward(tag, in[0], in[1], y);
                normalize_forward(tag, y, ops::Dims{1}, n);
                return Outputs<float, decltype(tag)>{y, n};
            },
            1e-5, {random_cpu<float>({2, 4, 8, 8}, 43), random_cpu<float>({6, 4, 3, 3}, 44)});
        CudaBackend::synchronize();
    }
    CHECK(CudaBackend::stream() == before);
    CHECK(CudaBackend::math() == default_math);
    CHECK(ctx.math() == mpnet::cuda::Math::tf32);
}

TEST_CASE("cuda contexts: two contexts on two threads run at once, each as it runs alone") {
    // On two devices where there are two, else two streams of one; fp32 beside bf16.
    const int last = mpnet::cuda::device_count() - 1;
    mpnet::cuda::Context a(0, mpnet::cuda::Math::fp32), b(last, mpnet::cuda::Math::bf16);
    const auto x = random_cpu<float>({4, 32, 16, 16}, 45), w = random_cpu<float>({32, 32, 3, 3}, 46);
    auto forward = [&](mpnet::cuda::Context& ctx) {
        mpnet::cuda::ContextScope scope(ctx);
        const CudaTensor<float> xg = to_gpu(x), wg = to_gpu(w);
        CudaTensor<float> y(Shape{4, 32, 16, 16});
        conv2d_forward(CudaBackend{}, xg, wg, y);
        return y.to_host();
    };
    const std::vector<float> alone_a = forward(a), alone_b = forward(b);
    CHECK(alone_a != alone_b);  // bf16 operands change the last bits
    std::vector<std::vector<float>> got_a, got_b;
    mpnet::test::run_concurrently(
        [&] {
            for (int i = 0; i < 8; ++i) got_a.push_back(forward(a));
        },
        [&] {
            for (int i = 0; i < 8; ++i) got_b.push_back(forward(b));
        });
    REQUIRE(got_a.size() == 8);
    REQUIRE(got_b.size() == 8);
    for (const auto& y : got_a) CHECK(y == alone_a);
    for (const auto& y : got_b) CHECK(y == alone_b);
}

TEST_CASE("cuda contexts: a tensor may outlive the context that allocated it") {
    const auto values = random_cpu<float>({3, 5}, 47);
    CudaTensor<float> kept;
    {
        mpnet::cuda::Context ctx(mpnet::cuda::detail::current_device());
        mpnet::cuda::ContextScope scope(ctx);
        kept = to_gpu(values);
        affine(CudaBackend{}, kept, 2.0f, 0.0f, kept);  // work on the context's stream before it goes
    }
    // Freed on the legacy stream once its own stream is gone (DevicePool::retire_stream).
    const std::vector<float> host = kept.to_host();
    REQUIRE(host.size() == 15);
    for (std::size_t i = 0; i < host.size(); ++i) CHECK(host[i] == 2.0f * values.data()[i]);
    kept = CudaTensor<float>();
    CudaBackend::synchronize();
}

TEST_CASE("cuda errors name the operation and the shapes") {
    CudaTensor<float> x(Shape{2, 3, 4, 4}), w(Shape{5, 2, 3, 3}), y(Shape{2, 5, 4, 4});
    CHECK_THROWS_WITH_AS(conv2d_forward(CudaBackend{}, x, w, y), doctest::Contains("conv2d_forward: weight [5,2,3,3]"),
                         Error);
    CHECK_THROWS_WITH_AS(mp_silu_forward(CudaBackend{}, x, y), doctest::Contains("mp_silu_forward"), Error);
    CHECK_THROWS_WITH_AS(CudaTensor<float>(Shape{int64_t{1} << 46}), doctest::Contains("allocate of"), Error);
    // The failed allocation leaves nothing behind for the next launch to report.
    CudaTensor<float> ok(Shape{8});
    fill(CudaBackend{}, ok, 1.0f);
    CHECK(sum(CudaBackend{}, ok) == 8.0);
}
