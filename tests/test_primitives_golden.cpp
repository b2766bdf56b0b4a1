// Every primitive's forward and backward against the reference implementation
// (primitives.safetensors), in float and in double.
#include "golden.hpp"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/mpconv.hpp"

using namespace mpnet;
using test::golden;
using test::load;

namespace {
const io::SafetensorsFile& prims() { return golden("primitives.safetensors"); }
template <class T>
CpuTensor<T> get(const std::string& name) {
    return load<T>(prims(), name);
}
}  // namespace

TEST_CASE_TEMPLATE("golden: normalize and pixel norm", T, float, double) {
    for (auto [name, dims] : {std::pair{std::string("normalize"), ops::Dims::all_but_first()},
                              std::pair{std::string("pixel_norm"), ops::Dims{1}}}) {
        const std::string case_name = name;  // CAPTURE is a lambda; clang 14 cannot capture a structured binding
        CAPTURE(case_name);
        auto x = get<T>(name + ".x"), dy = get<T>(name + ".dy");
        CpuTensor<T> y(x.shape()), dx(x.shape()), scale;
        normalize_forward(CpuBackend{}, x, dims, y, &scale);
        MPNET_CHECK_CLOSE(y, get<T>(name + ".y"), test::fwd_tol<T>);
        normalize_backward(CpuBackend{}, x, dy, dims, scale, dx);
        MPNET_CHECK_CLOSE(dx, get<T>(name + ".dx"), test::grad_tol<T>);
    }
}

TEST_CASE_TEMPLATE("golden: mp_silu", T, float, double) {
    auto x = get<T>("mp_silu.x"), dy = get<T>("mp_silu.dy");
    CpuTensor<T> y(x.shape()), dx(x.shape());
    mp_silu_forward(CpuBackend{}, x, y);
    MPNET_CHECK_CLOSE(y, get<T>("mp_silu.y"), test::fwd_tol<T>);
    mp_silu_backward(CpuBackend{}, x, dy, dx);
    MPNET_CHECK_CLOSE(dx, get<T>("mp_silu.dx"), test::grad_tol<T>);
}

TEST_CASE_TEMPLATE("golden: mp_sum", T, float, double) {
    auto a = get<T>("mp_sum.a"), b = get<T>("mp_sum.b"), dy = get<T>("mp_sum.dy");
    CpuTensor<T> y(a.shape()), da(a.shape()), db(b.shape());
    mp_sum_forward(CpuBackend{}, a, b, 0.3, y);
    MPNET_CHECK_CLOSE(y, get<T>("mp_sum.y"), test::fwd_tol<T>);
    mp_sum_backward(CpuBackend{}, dy, 0.3, da, db);
    MPNET_CHECK_CLOSE(da, get<T>("mp_sum.da"), test::grad_tol<T>);
    MPNET_CHECK_CLOSE(db, get<T>("mp_sum.db"), test::grad_tol<T>);
}

TEST_CASE_TEMPLATE("golden: mp_cat", T, float, double) {
    auto a = get<T>("mp_cat.a"), b = get<T>("mp_cat.b"), dy = get<T>("mp_cat.dy");
    CpuTensor<T> y(dy.shape()), da(a.shape()), db(b.shape());
    mp_cat_forward(CpuBackend{}, a, b, 0.5, y);
    MPNET_CHECK_CLOSE(y, get<T>("mp_cat.y"), test::fwd_tol<T>);
    mp_cat_backward(CpuBackend{}, dy, 0.5, da, db);
    MPNET_CHECK_CLOSE(da, get<T>("mp_cat.da"), test::grad_tol<T>);
    MPNET_CHECK_CLOSE(db, get<T>("mp_cat.db"), test::grad_tol<T>);
}

TEST_CASE_TEMPLATE("golden: MPFourier", T, float, double) {
    nn::MPFourier<T, CpuBackend> fourier(16, 0);
    fourier.freqs = get<T>("mp_fourier.freqs");
    fourier.phases = get<T>("mp_fourier.phases");
    auto x = get<T>("mp_fourier.x");
    MPNET_CHECK_CLOSE(fourier.forward(x), get<T>("mp_fourier.y"), test::fwd_tol<T>);
    MPNET_CHECK_CLOSE(fourier.backward(x, get<T>("mp_fourier.dy")), get<T>("mp_fourier.dx"), test::grad_tol<T>);
}

TEST_CASE_TEMPLATE("golden: MPConv linear, 1x1 and 3x3", T, float, double) {
    for (auto [name, gain] : {std::pair{std::string("mpconv_linear"), 0.8}, std::pair{std::string("mpconv_1x1"), 1.0},
                              std::pair{std::string("mpconv_3x3"), 1.3}}) {
        const std::string case_name = name;  // CAPTURE is a lambda; clang 14 cannot capture a structured binding
        CAPTURE(case_name);
        auto w = get<T>(name + ".weight");
        const int64_t k = w.rank() == 4 ? w.size(2) : 0;
        nn::MPConv<T, CpuBackend> conv(w.size(1), w.size(0), k);
        conv.weight.value = w;
        typename nn::MPConv<T, CpuBackend>::Context ctx;
        MPNET_CHECK_CLOSE(conv.forward(get<T>(name + ".x"), gain, &ctx), get<T>(name + ".y"), test::fwd_tol<T>);
        auto dx = conv.backward(get<T>(name + ".dy"), ctx);
        MPNET_CHECK_CLOSE(dx, get<T>(name + ".dx"), test::grad_tol<T>);
        MPNET_CHECK_CLOSE(conv.weight.grad, get<T>(name + ".dweight"), test::grad_tol<T>);
    }
}

TEST_CASE_TEMPLATE("golden: MPConv forced weight normalization", T, float, double) {
    for (std::string name : {"mpconv_force_linear", "mpconv_force_3x3"}) {
        CAPTURE(name);
        auto w = get<T>(name + ".weight");
        nn::MPConv<T, CpuBackend> conv(w.size(1), w.size(0), w.rank() == 4 ? w.size(2) : 0);
        conv.weight.value = w.clone();
        conv.force_normalize();
        MPNET_CHECK_CLOSE(conv.weight.value, get<T>(name + ".weight_after"), test::fwd_tol<T>);
        MPNET_CHECK_CLOSE(conv.forward(get<T>(name + ".x"), 1.0), get<T>(name + ".y"), test::fwd_tol<T>);
    }
}

TEST_CASE_TEMPLATE("golden: resample", T, float, double) {
    for (std::string name : {"resample_down_f2", "resample_down_f4", "resample_up_f2", "resample_up_f4"}) {
        CAPTURE(name);
        const auto mode = name.find("down") != std::string::npos ? ops::Resample::down : ops::Resample::up;
        const std::vector<double> filter = name.ends_with("f2") ? std::vector<double>{1, 1} : std::vector<double>{1, 3, 3, 1};
        auto x = get<T>(name + ".x"), dy = get<T>(name + ".dy");
        CpuTensor<T> y(ops::resampled_shape(x.shape(), mode)), dx(x.shape());
        resample_forward(CpuBackend{}, x, filter, mode, y);
        MPNET_CHECK_CLOSE(y, get<T>(name + ".y"), test::fwd_tol<T>);
        resample_backward(CpuBackend{}, dy, filter, mode, dx);
        MPNET_CHECK_CLOSE(dx, get<T>(name + ".dx"), test::grad_tol<T>);
    }
}

TEST_CASE_TEMPLATE("golden: attention core", T, float, double) {
    auto qkv = get<T>("attention.qkv"), dy = get<T>("attention.dy");
    CpuTensor<T> y(dy.shape()), dqkv(qkv.shape());
    ops::AttentionContext<T, CpuBackend> ctx;
    attention_forward(CpuBackend{}, qkv, 2, y, &ctx);
    MPNET_CHECK_CLOSE(y, get<T>("attention.y"), test::fwd_tol<T>);
    CpuTensor<T> y_inference(dy.shape());
    attention_forward(CpuBackend{}, qkv, 2, y_inference, nullptr);
    MPNET_CHECK_CLOSE(y_inference, get<T>("attention.y"), test::fwd_tol<T>);
    attention_backward(CpuBackend{}, ctx, 2, dy, dqkv);
    MPNET_CHECK_CLOSE(dqkv, get<T>("attention.dqkv"), test::grad_tol<T>);
}
