// Block, UNet and Precond against the reference implementation: forward outputs,
// activations, the EDM2 loss and every parameter gradient (blocks/unet.safetensors).
#include "golden.hpp"
#include "mpnet/nn/weights.hpp"

using namespace mpnet;
using test::golden;
using test::load;

namespace {

struct BlockCase {
    const char* name;
    bool encoder;
    int64_t in, out;
    ops::Resample resample;
    bool attention;
};

// The per-element tolerance of gradients that pass through long chains: the golden README
// measured float32 at 3.5e-6 of each gradient's scale; 1e-4 leaves room for summation order.
template <class T>
constexpr double net_grad_tol = std::is_same_v<T, float> ? 1e-4 : 1e-6;

}  // namespace

TEST_CASE_TEMPLATE("golden: Block forward and backward, all four cases", T, float, double) {
    const auto& f = golden("blocks.safetensors");
    for (const BlockCase& bc : {BlockCase{"enc_down", true, 16, 16, ops::Resample::down, false},
                                BlockCase{"enc_skip_attn", true, 8, 16, ops::Resample::keep, true},
                                BlockCase{"dec_up", false, 16, 16, ops::Resample::up, false},
                                BlockCase{"dec_skip_attn", false, 24, 16, ops::Resample::keep, true}}) {
        const std::string p = bc.name;
        CAPTURE(p);
        nn::NetworkConfig cfg;
        cfg.model_channels = 20;  // cemb = 20
        cfg.channel_mult = {1};
        cfg.channels_per_head = 8;
        nn::BlockSpec spec{p, bc.encoder, false, bc.in, bc.out, 8, bc.resample, bc.attention};
        nn::Block<T, CpuBackend> block(spec, cfg);
        block.visit("", [&](const std::string& name, nn::Param<T, CpuBackend>& param) {
            param.value = load<T>(f, p + "." + name).view(param.value.shape());
        });
        typename nn::Block<T, CpuBackend>::Context ctx;
        auto x = load<T>(f, p + ".x"), emb = load<T>(f, p + ".emb");
        auto y = block.forward(x, emb, {}, &ctx);
        MPNET_CHECK_CLOSE(y, load<T>(f, p + ".y"), test::fwd_tol<T>);
        auto demb = CpuTensor<T>::zeros(emb.shape());
        auto dx = block.backward(load<T>(f, p + ".dy"), ctx, demb);
        MPNET_CHECK_CLOSE(dx, load<T>(f, p + ".dx"), net_grad_tol<T>);
        MPNET_CHECK_CLOSE(demb, load<T>(f, p + ".demb"), net_grad_tol<T>);
        int checked = 0;
        block.visit("", [&](const std::string& name, nn::Param<T, CpuBackend>& param) {
            CAPTURE(name);
            MPNET_CHECK_CLOSE(param.grad, load<T>(f, p + ".grad." + name), net_grad_tol<T>);
            ++checked;
        });
        CHECK(checked == (bc.attention ? 7 : 4));
    }
}

TEST_CASE_TEMPLATE("golden: Precond D, logvar and activations for three sigmas", T, float, double) {
    const auto& f = golden("unet.safetensors");
    nn::Precond<T, CpuBackend> net(test::golden_unet_config());
    nn::load_state(net, f, "", true);
    auto out = net.forward(load<T>(f, "x"), load<T>(f, "sigma"), load<T>(f, "labels"), {}, true);
    MPNET_CHECK_CLOSE(out.D, load<T>(f, "D"), test::fwd_tol<T>);
    MPNET_CHECK_CLOSE(out.logvar, load<T>(f, "logvar"), test::fwd_tol<T>);
}

TEST_CASE_TEMPLATE("golden: EDM2 loss and the gradient of every parameter", T, float, double) {
    const auto& f = golden("unet.safetensors");
    nn::Precond<T, CpuBackend> net(test::golden_unet_config());
    nn::load_state(net, f, "", true);
    auto x = load<T>(f, "x"), sigma = load<T>(f, "sigma"), noise = load<T>(f, "noise");
    // x_noisy = x + noise * sigma
    CpuTensor<T> noisy(x.shape());
    const int64_t inner = x.shape().numel_from(1);
    for (int64_t i = 0; i < x.numel(); ++i) noisy.data()[i] = x.data()[i] + noise.data()[i] * sigma.data()[i / inner];
    typename nn::Precond<T, CpuBackend>::Context ctx;
    auto out = net.forward(noisy, sigma, load<T>(f, "labels"), {}, true, &ctx);
    MPNET_CHECK_CLOSE(out.D, load<T>(f, "loss_D"), test::fwd_tol<T>);
    CpuTensor<T> dD(x.shape()), dlogvar(sigma.shape());
    const double count = double(x.numel());
    const double loss = edm2_loss(CpuBackend{}, out.D, x, sigma, out.logvar, 0.5, 1 / count, dD, dlogvar) / count;
    const double ref_loss = load<double>(f, "loss").data()[0];
    CHECK(loss == doctest::Approx(ref_loss).epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-7));
    net.zero_grad();
    net.backward(dD, dlogvar, ctx);
    int checked = 0;
    net.visit([&](const std::string& name, nn::Param<T, CpuBackend>& p) {
        CAPTURE(name);
        MPNET_CHECK_CLOSE(p.grad, load<T>(f, "grad." + name).view(p.grad.shape()), net_grad_tol<T>);
        ++checked;
    });
    const auto names = f.metadata().at("param_names");
    CHECK(checked == std::count(names.begin(), names.end(), ',') + 1);
}
