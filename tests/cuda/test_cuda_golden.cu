// The CPU suite's golden and finite-difference checks instantiated on the CUDA backend:
// every primitive against the reference implementation (primitives.safetensors), and the
// GPU backward kernels against central differences of the GPU forward kernels in double.
#include "cuda_test.cuh"
#include "mpnet/nn/mp_fourier.hpp"
#include "mpnet/nn/mpconv.hpp"

using namespace mpnet;
using test::golden;
using test::to_cpu;
using test::to_gpu;

namespace {

const io::SafetensorsFile& prims() { return golden("primitives.safetensors"); }
template <class T>
CudaTensor<T> get(const std::string& name) {
    return to_gpu(test::load<T>(prims(), name));
}
template <class T>
CpuTensor<T> ref(const std::string& name) {
    return test::load<T>(prims(), name);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda golden: normalize and pixel norm", T, float, double) {
    for (auto [name, dims] : {std::pair{std::string("normalize"), ops::Dims::all_but_first()},
                              std::pair{std::string("pixel_norm"), ops::Dims{1}}}) {
        CAPTURE(name);
        auto x = get<T>(name + ".x"), dy = get<T>(name + ".dy");
        CudaTensor<T> y(x.shape()), dx(x.shape()), scale;
        normalize_forward(CudaBackend{}, x, dims, y, &scale);
        MPNET_CHECK_GPU(y, ref<T>(name + ".y"), test::fwd_tol<T>);
        normalize_backward(CudaBackend{}, x, dy, dims, scale, dx);
        MPNET_CHECK_GPU(dx, ref<T>(name + ".dx"), test::grad_tol<T>);
    }
}

TEST_CASE_TEMPLATE("cuda golden: mp_silu, mp_sum, mp_cat", T, float, double) {
    auto x = get<T>("mp_silu.x");
    CudaTensor<T> y(x.shape()), dx(x.shape());
    mp_silu_forward(CudaBackend{}, x, y);
    MPNET_CHECK_GPU(y, ref<T>("mp_silu.y"), test::fwd_tol<T>);
    mp_silu_backward(CudaBackend{}, x, get<T>("mp_silu.dy"), dx);
    MPNET_CHECK_GPU(dx, ref<T>("mp_silu.dx"), test::grad_tol<T>);

    auto a = get<T>("mp_sum.a"), b = get<T>("mp_sum.b");
    CudaTensor<T> s(a.shape()), da(a.shape()), db(b.shape());
    mp_sum_forward(CudaBackend{}, a, b, 0.3, s);
    MPNET_CHECK_GPU(s, ref<T>("mp_sum.y"), test::fwd_tol<T>);
    mp_sum_backward(CudaBackend{}, get<T>("mp_sum.dy"), 0.3, da, db);
    MPNET_CHECK_GPU(da, ref<T>("mp_sum.da"), test::grad_tol<T>);
    MPNET_CHECK_GPU(db, ref<T>("mp_sum.db"), test::grad_tol<T>);

    auto ca = get<T>("mp_cat.a"), cb = get<T>("mp_cat.b"), dcat = get<T>("mp_cat.dy");
    CudaTensor<T> cat(dcat.shape()), dca(ca.shape()), dcb(cb.shape());
    mp_cat_forward(CudaBackend{}, ca, cb, 0.5, cat);
    MPNET_CHECK_GPU(cat, ref<T>("mp_cat.y"), test::fwd_tol<T>);
    mp_cat_backward(CudaBackend{}, dcat, 0.5, dca, dcb);
    MPNET_CHECK_GPU(dca, ref<T>("mp_cat.da"), test::grad_tol<T>);
    MPNET_CHECK_GPU(dcb, ref<T>("mp_cat.db"), test::grad_tol<T>);
}

TEST_CASE_TEMPLATE("cuda golden: MPFourier", T, float, double) {
    nn::MPFourier<T, CudaBackend> fourier(16, 0);
    fourier.freqs = get<T>("mp_fourier.freqs");
    fourier.phases = get<T>("mp_fourier.phases");
    auto x = get<T>("mp_fourier.x");
    MPNET_CHECK_GPU(fourier.forward(x), ref<T>("mp_fourier.y"), test::fwd_tol<T>);
    MPNET_CHECK_GPU(fourier.backward(x, get<T>("mp_fourier.dy")), ref<T>("mp_fourier.dx"), test::grad_tol<T>);
}

TEST_CASE_TEMPLATE("cuda golden: MPConv linear, 1x1 and 3x3", T, float, double) {
    for (auto [name, gain] : {std::pair{std::string("mpconv_linear"), 0.8}, std::pair{std::string("mpconv_1x1"), 1.0},
                              std::pair{std::string("mpconv_3x3"), 1.3}}) {
        CAPTURE(name);
        auto w = get<T>(name + ".weight");
        nn::MPConv<T, CudaBackend> conv(w.size(1), w.size(0), w.rank() == 4 ? w.size(2) : 0);
        conv.weight.value = w;
        typename nn::MPConv<T, CudaBackend>::Context ctx;
        MPNET_CHECK_GPU(conv.forward(get<T>(name + ".x"), gain, &ctx), ref<T>(name + ".y"), test::fwd_tol<T>);
        auto dx = conv.backward(get<T>(name + ".dy"), ctx);
        MPNET_CHECK_GPU(dx, ref<T>(name + ".dx"), test::grad_tol<T>);
        MPNET_CHECK_GPU(conv.weight.grad, ref<T>(name + ".dweight"), test::grad_tol<T>);
    }
}

TEST_CASE_TEMPLATE("cuda golden: MPConv forced weight normalization", T, float, double) {
    for (std::string name : {"mpconv_force_linear", "mpconv_force_3x3"}) {
        CAPTURE(name);
        auto w = get<T>(name + ".weight");
        nn::MPConv<T, CudaBackend> conv(w.size(1), w.size(0), w.rank() == 4 ? w.size(2) : 0);
        conv.weight.value = w.clone();
        conv.force_normalize();
        MPNET_CHECK_GPU(conv.weight.value, ref<T>(name + ".weight_after"), test::fwd_tol<T>);
        MPNET_CHECK_GPU(conv.forward(get<T>(name + ".x"), 1.0), ref<T>(name + ".y"), test::fwd_tol<T>);
    }
}

TEST_CASE_TEMPLATE("cuda golden: resample", T, float, double) {
    for (std::string name : {"resample_down_f2", "resample_down_f4", "resample_up_f2", "resample_up_f4"}) {
        CAPTURE(name);
        const auto mode = name.find("down") != std::string::npos ? ops::Resample::down : ops::Resample::up;
        const std::vector<double> filter = name.ends_with("f2") ? std::vector<double>{1, 1} : std::vector<double>{1, 3, 3, 1};
        auto x = get<T>(name + ".x");
        CudaTensor<T> y(ops::resampled_shape(x.shape(), mode)), dx(x.shape());
        resample_forward(CudaBackend{}, x, filter, mode, y);
        MPNET_CHECK_GPU(y, ref<T>(name + ".y"), test::fwd_tol<T>);
        resample_backward(CudaBackend{}, get<T>(name + ".dy"), filter, mode, dx);
        MPNET_CHECK_GPU(dx, ref<T>(name + ".dx"), test::grad_tol<T>);
    }
}

TEST_CASE_TEMPLATE("cuda golden: attention core", T, float, double) {
    auto qkv = get<T>("attention.qkv"), dy = get<T>("attention.dy");
    CudaTensor<T> y(dy.shape()), y_inference(dy.shape()), dqkv(qkv.shape());
    ops::AttentionContext<T, CudaBackend> ctx;
    attention_forward(CudaBackend{}, qkv, 2, y, &ctx);
    MPNET_CHECK_GPU(y, ref<T>("attention.y"), test::fwd_tol<T>);
    attention_forward(CudaBackend{}, qkv, 2, y_inference, nullptr);
    MPNET_CHECK_GPU(y_inference, ref<T>("attention.y"), test::fwd_tol<T>);
    attention_backward(CudaBackend{}, ctx, 2, dy, dqkv);
    MPNET_CHECK_GPU(dqkv, ref<T>("attention.dqkv"), test::grad_tol<T>);
}

// ---- finite differences of the GPU kernels, in double --------------------------------

namespace {

using D = CpuTensor<double>;
using G = CudaTensor<double>;
constexpr double fd_tol = 1e-6;  // central differences with h = 1e-6

// The numerical gradient of x -> sum(f(x) * dy), where f runs on the GPU.
template <class F>
D gpu_numerical_gradient(const D& x, const D& dy, F&& f) {
    return test::numerical_gradient(x, [&] {
        const G out = f(to_gpu(x));
        return dot(CudaBackend{}, out, to_gpu(dy));
    });
}

}  // namespace

TEST_CASE("cuda fd: normalize over any dims") {
    for (ops::Dims dims : {ops::Dims::all_but_first(), ops::Dims{1}, ops::Dims{0, 2}, ops::Dims{-1}}) {
        const auto x = test::random_tensor({3, 4, 2, 5}, 1), dy = test::random_tensor({3, 4, 2, 5}, 2);
        G y(x.shape()), dx(x.shape()), scale;
        normalize_forward(CudaBackend{}, to_gpu(x), dims, y, &scale);
        normalize_backward(CudaBackend{}, to_gpu(x), to_gpu(dy), dims, scale, dx);
        const auto num = gpu_numerical_gradient(x, dy, [&](const G& in) {
            G out(in.shape());
            normalize_forward(CudaBackend{}, in, dims, out);
            return out;
        });
        MPNET_CHECK_CLOSE(to_cpu(dx), num, fd_tol);
    }
}

TEST_CASE("cuda fd: mp_silu, conv2d 3x3, resample [1,3,3,1], MPFourier") {
    const auto x = test::random_tensor({2, 3, 4, 4}, 3, 2.0), dy = test::random_tensor({2, 3, 4, 4}, 4);
    G dx(x.shape());
    mp_silu_backward(CudaBackend{}, to_gpu(x), to_gpu(dy), dx);
    MPNET_CHECK_CLOSE(to_cpu(dx), gpu_numerical_gradient(x, dy, [](const G& in) {
                          G out(in.shape());
                          mp_silu_forward(CudaBackend{}, in, out);
                          return out;
                      }),
                      fd_tol);

    const auto w = test::random_tensor({4, 3, 3, 3}, 5), dyc = test::random_tensor({2, 4, 4, 4}, 6);
    G dxc(x.shape()), dw(w.shape());
    conv2d_backward(CudaBackend{}, to_gpu(x), to_gpu(w), to_gpu(dyc), dxc, dw);
    auto conv = [](const G& in, const G& weight) {
        G out(Shape{in.size(0), weight.size(0), in.size(2), in.size(3)});
        conv2d_forward(CudaBackend{}, in, weight, out);
        return out;
    };
    const G gw = to_gpu(w), gx = to_gpu(x);
    MPNET_CHECK_CLOSE(to_cpu(dxc), gpu_numerical_gradient(x, dyc, [&](const G& in) { return conv(in, gw); }), fd_tol);
    MPNET_CHECK_CLOSE(to_cpu(dw), gpu_numerical_gradient(w, dyc, [&](const G& in) { return conv(gx, in); }), fd_tol);

    const std::vector<double> filter{1, 3, 3, 1};
    for (auto mode : {ops::Resample::down, ops::Resample::up}) {
        const Shape out = ops::resampled_shape(x.shape(), mode);
        const auto dyr = test::random_tensor(out, 7);
        G dxr(x.shape());
        resample_backward(CudaBackend{}, to_gpu(dyr), filter, mode, dxr);
        MPNET_CHECK_CLOSE(to_cpu(dxr), gpu_numerical_gradient(x, dyr, [&](const G& in) {
                              G o(out);
                              resample_forward(CudaBackend{}, in, filter, mode, o);
                              return o;
                          }),
                          fd_tol);
    }

    nn::MPFourier<double, CudaBackend> f(12, 42);
    const auto t = test::random_tensor({5}, 8, 0.5), dyf = test::random_tensor({5, 12}, 9);
    MPNET_CHECK_CLOSE(to_cpu(f.backward(to_gpu(t), to_gpu(dyf))),
                      gpu_numerical_gradient(t, dyf, [&](const G& in) { return f.forward(in); }), fd_tol);
}

TEST_CASE("cuda fd: attention core") {
    const auto qkv = test::random_tensor({2, 12, 3, 3}, 10), dy = test::random_tensor({2, 4, 3, 3}, 11);
    G y(dy.shape()), dqkv(qkv.shape());
    ops::AttentionContext<double, CudaBackend> ctx;
    attention_forward(CudaBackend{}, to_gpu(qkv), 2, y, &ctx);
    attention_backward(CudaBackend{}, ctx, 2, to_gpu(dy), dqkv);
    MPNET_CHECK_CLOSE(to_cpu(dqkv), gpu_numerical_gradient(qkv, dy, [&](const G& in) {
                          G out(dy.shape());
                          attention_forward(CudaBackend{}, in, 2, out, nullptr);
                          return out;
                      }),
                      fd_tol);
}
