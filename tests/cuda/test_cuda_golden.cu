// The golden list of tests/golden_primitives.hpp on the CUDA backend: every primitive
// against the reference implementation (primitives.safetensors); then the GPU backward
// kernels against central differences of the GPU forward kernels in double.
#include "golden_primitives.hpp"
#include "cuda_test.cuh"

using namespace mpnet;
using test::to_cpu;
using test::to_gpu;

MPNET_GOLDEN_PRIMITIVE_TESTS("cuda golden: ", CudaBackend)

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
