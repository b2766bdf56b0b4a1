// Every primitive's forward and backward against the reference implementation
// (primitives.safetensors), written once for any backend. The list at the end is what a
// backend's test file instantiates: tests/test_primitives_golden.cpp on the CPU,
// tests/cuda/test_cuda_golden.cu on the GPU. A new op adds its case here.
#pragma once
#include <concepts>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "golden.hpp"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/mpconv.hpp"

namespace mpnet::test::golden_primitives {

// Tensors move through the host with the Tensor interface alone, so this header holds no
// backend's code (no CUDA outside .cu files); on the CPU they are used as they are.
template <Scalar T, Backend B>
Tensor<T, B> on_backend(const CpuTensor<T>& t) {
    if constexpr (std::same_as<B, CpuBackend>) return t;
    else return Tensor<T, B>::from_host(t.shape(), std::span<const T>(t.data(), size_t(t.numel())));
}
template <Scalar T, Backend B>
CpuTensor<T> on_host(const Tensor<T, B>& t) {
    if constexpr (std::same_as<B, CpuBackend>) return t;
    else return CpuTensor<T>::from_host(t.shape(), t.to_host());
}

inline const io::SafetensorsFile& reference() { return golden("primitives.safetensors"); }

// A reference tensor as an input on backend B, and as the expected result.
template <Scalar T, Backend B>
Tensor<T, B> input(const std::string& name) {
    return on_backend<T, B>(load<T>(reference(), name));
}
template <Scalar T>
CpuTensor<T> expected(const std::string& name) {
    return load<T>(reference(), name);
}

// A backend result against the reference tensor `name`.
#define MPNET_CHECK_GOLDEN(got, name, tol) MPNET_CHECK_CLOSE(on_host(got), expected<T>(name), (tol))

template <Scalar T, Backend B>
void normalize() {
    for (auto [name, dims] : {std::pair{std::string("normalize"), ops::Dims::all_but_first()},
                              std::pair{std::string("pixel_norm"), ops::Dims{1}}}) {
        const std::string case_name = name;  // CAPTURE is a lambda; clang 14 cannot capture a structured binding
        CAPTURE(case_name);
        const auto x = input<T, B>(name + ".x"), dy = input<T, B>(name + ".dy");
        Tensor<T, B> y(x.shape()), dx(x.shape()), scale;
        normalize_forward(B{}, x, dims, y, &scale);
        MPNET_CHECK_GOLDEN(y, name + ".y", fwd_tol<T>);
        normalize_backward(B{}, x, dy, dims, scale, dx);
        MPNET_CHECK_GOLDEN(dx, name + ".dx", grad_tol<T>);
    }
}

template <Scalar T, Backend B>
void mp_silu() {
    const auto x = input<T, B>("mp_silu.x"), dy = input<T, B>("mp_silu.dy");
    Tensor<T, B> y(x.shape()), dx(x.shape());
    mp_silu_forward(B{}, x, y);
    MPNET_CHECK_GOLDEN(y, "mp_silu.y", fwd_tol<T>);
    mp_silu_backward(B{}, x, dy, dx);
    MPNET_CHECK_GOLDEN(dx, "mp_silu.dx", grad_tol<T>);
}

template <Scalar T, Backend B>
void mp_sum() {
    const auto a = input<T, B>("mp_sum.a"), b = input<T, B>("mp_sum.b"), dy = input<T, B>("mp_sum.dy");
    Tensor<T, B> y(a.shape()), da(a.shape()), db(b.shape());
    mp_sum_forward(B{}, a, b, 0.3, y);
    MPNET_CHECK_GOLDEN(y, "mp_sum.y", fwd_tol<T>);
    mp_sum_backward(B{}, dy, 0.3, da, db);
    MPNET_CHECK_GOLDEN(da, "mp_sum.da", grad_tol<T>);
    MPNET_CHECK_GOLDEN(db, "mp_sum.db", grad_tol<T>);
}

template <Scalar T, Backend B>
void mp_cat() {
    const auto a = input<T, B>("mp_cat.a"), b = input<T, B>("mp_cat.b"), dy = input<T, B>("mp_cat.dy");
    Tensor<T, B> y(dy.shape()), da(a.shape()), db(b.shape());
    mp_cat_forward(B{}, a, b, 0.5, y);
    MPNET_CHECK_GOLDEN(y, "mp_cat.y", fwd_tol<T>);
    mp_cat_backward(B{}, dy, 0.5, da, db);
    MPNET_CHECK_GOLDEN(da, "mp_cat.da", grad_tol<T>);
    MPNET_CHECK_GOLDEN(db, "mp_cat.db", grad_tol<T>);
}

template <Scalar T, Backend B>
void mp_fourier() {
    nn::MPFourier<T, B> fourier(16, 0);
    fourier.freqs = input<T, B>("mp_fourier.freqs");
    fourier.phases = input<T, B>("mp_fourier.phases");
    const auto x = input<T, B>("mp_fourier.x");
    MPNET_CHECK_GOLDEN(fourier.forward(x), "mp_fourier.y", fwd_tol<T>);
    MPNET_CHECK_GOLDEN(fourier.backward(x, input<T, B>("mp_fourier.dy")), "mp_fourier.dx", grad_tol<T>);
}

template <Scalar T, Backend B>
void mpconv() {
    for (auto [name, gain] : {std::pair{std::string("mpconv_linear"), 0.8}, std::pair{std::string("mpconv_1x1"), 1.0},
                              std::pair{std::string("mpconv_3x3"), 1.3}}) {
        const std::string case_name = name;  // as above
        CAPTURE(case_name);
        const auto w = input<T, B>(name + ".weight");
        nn::MPConv<T, B> conv(w.size(1), w.size(0), w.rank() == 4 ? w.size(2) : 0);
        conv.weight.value = w;
        typename nn::MPConv<T, B>::Context ctx;
        MPNET_CHECK_GOLDEN(conv.forward(input<T, B>(name + ".x"), gain, &ctx), name + ".y", fwd_tol<T>);
        const auto dx = conv.backward(input<T, B>(name + ".dy"), ctx);
        MPNET_CHECK_GOLDEN(dx, name + ".dx", grad_tol<T>);
        MPNET_CHECK_GOLDEN(conv.weight.grad, name + ".dweight", grad_tol<T>);
    }
}

template <Scalar T, Backend B>
void mpconv_force_normalize() {
    for (std::string name : {"mpconv_force_linear", "mpconv_force_3x3"}) {
        CAPTURE(name);
        const auto w = input<T, B>(name + ".weight");
        nn::MPConv<T, B> conv(w.size(1), w.size(0), w.rank() == 4 ? w.size(2) : 0);
        conv.weight.value = w.clone();
        conv.force_normalize();
        MPNET_CHECK_GOLDEN(conv.weight.value, name + ".weight_after", fwd_tol<T>);
        MPNET_CHECK_GOLDEN(conv.forward(input<T, B>(name + ".x"), 1.0), name + ".y", fwd_tol<T>);
    }
}

template <Scalar T, Backend B>
void resample() {
    for (std::string name : {"resample_down_f2", "resample_down_f4", "resample_up_f2", "resample_up_f4"}) {
        CAPTURE(name);
        const auto mode = name.find("down") != std::string::npos ? ops::Resample::down : ops::Resample::up;
        const std::vector<double> filter = name.ends_with("f2") ? std::vector<double>{1, 1} : std::vector<double>{1, 3, 3, 1};
        const auto x = input<T, B>(name + ".x"), dy = input<T, B>(name + ".dy");
        Tensor<T, B> y(ops::resampled_shape(x.shape(), mode)), dx(x.shape());
        resample_forward(B{}, x, filter, mode, y);
        MPNET_CHECK_GOLDEN(y, name + ".y", fwd_tol<T>);
        resample_backward(B{}, dy, filter, mode, dx);
        MPNET_CHECK_GOLDEN(dx, name + ".dx", grad_tol<T>);
    }
}

template <Scalar T, Backend B>
void attention() {
    const auto qkv = input<T, B>("attention.qkv"), dy = input<T, B>("attention.dy");
    Tensor<T, B> y(dy.shape()), y_inference(dy.shape()), dqkv(qkv.shape());
    ops::AttentionContext<T, B> ctx;
    attention_forward(B{}, qkv, 2, y, &ctx);
    MPNET_CHECK_GOLDEN(y, "attention.y", fwd_tol<T>);
    attention_forward(B{}, qkv, 2, y_inference, nullptr);
    MPNET_CHECK_GOLDEN(y_inference, "attention.y", fwd_tol<T>);
    attention_backward(B{}, ctx, 2, dy, dqkv);
    MPNET_CHECK_GOLDEN(dqkv, "attention.dqkv", grad_tol<T>);
}

#undef MPNET_CHECK_GOLDEN

}  // namespace mpnet::test::golden_primitives

// The list: CASE(function above, test title, ...) once per case. A backend's test file
// writes MPNET_GOLDEN_PRIMITIVE_TESTS("<prefix>", Backend) to get one doctest case per
// entry, in float and in double.
#define MPNET_GOLDEN_PRIMITIVES(CASE, ...)                                          \
    CASE(normalize, "normalize and pixel norm", __VA_ARGS__)                        \
    CASE(mp_silu, "mp_silu", __VA_ARGS__)                                           \
    CASE(mp_sum, "mp_sum", __VA_ARGS__)                                             \
    CASE(mp_cat, "mp_cat", __VA_ARGS__)                                             \
    CASE(mp_fourier, "MPFourier", __VA_ARGS__)                                      \
    CASE(mpconv, "MPConv linear, 1x1 and 3x3", __VA_ARGS__)                         \
    CASE(mpconv_force_normalize, "MPConv forced weight normalization", __VA_ARGS__) \
    CASE(resample, "resample", __VA_ARGS__)                                         \
    CASE(attention, "attention core", __VA_ARGS__)

#define MPNET_GOLDEN_PRIMITIVE_TEST(function, title, prefix, B) \
    TEST_CASE_TEMPLATE(prefix title, T, float, double) { ::mpnet::test::golden_primitives::function<T, B>(); }
#define MPNET_GOLDEN_PRIMITIVE_TESTS(prefix, B) MPNET_GOLDEN_PRIMITIVES(MPNET_GOLDEN_PRIMITIVE_TEST, prefix, B)
