// The training step and the sampler run of the host-read tests, on any backend: the CPU suite
// (test_host_reads.cpp) and the CUDA suite (cuda/test_cuda_network.cu) both count what they read.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "mpnet/core/host_reads.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/sample/denoiser.hpp"
#include "mpnet/sample/edm_sampler.hpp"
#include "mpnet/sample/seeds.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/ema.hpp"
#include "test_sampler_helpers.hpp"

namespace mpnet::test {

// tiny_network's weights and gains, built on backend B.
template <Backend B>
nn::Precond<float, B> tiny_network_on(uint64_t seed) {
    nn::Precond<float, B> net(tiny_config(), seed);
    net.visit([&](const std::string& name, nn::Param<float, B>& p) {
        if (name.ends_with("gain")) fill_normal(B{}, p.value, seed + 7, 0, 1.0, 0.3);
    });
    return net;
}

// Two EDM2 training steps (noise, forced weight normalisation, forward with the uncertainty
// head, the loss, backward, non-finite gradients cleared, Adam, the EMA) must read nothing
// back to the host.
template <Backend B>
void check_training_step_reads_nothing() {
    using F = Tensor<float, B>;
    auto net = tiny_network_on<B>(3);
    train::Adam<float, B> adam(net);
    train::PowerEma<float, B> ema({0.05, 0.1}, net.arena().layout(), net.flat_values());
    const int64_t n = 4;
    F images(Shape{n, 1, 8, 8}), noisy(Shape{n, 1, 8, 8}), dD(Shape{n, 1, 8, 8}), dlogvar(Shape{n});
    fill_normal(B{}, images, 1, 0, 0.0, 0.5);
    std::vector<float> sig(n);
    for (int64_t i = 0; i < n; ++i) sig[size_t(i)] = float(std::exp(-1.2 + 1.2 * rng::normal(2, uint64_t(i))));
    const F sigma = F::from_host(Shape{n}, sig);
    const std::vector<int64_t> classes{0, 1, 2, 0};
    const F labels = sample::one_hot<float, B>(classes, 3);
    Tensor<double, B> loss(Shape{1});

    const uint64_t before = host_reads();
    for (int step = 0; step < 2; ++step) {
        net.force_normalize();
        net.zero_grad();
        fill_normal(B{}, noisy, 5, uint64_t(step) * 1000);
        const Shape per_image{n, 1, 64};
        F scaled = noisy.view(per_image);
        scale_channels_forward(B{}, noisy.view(per_image), sigma, scaled);
        axpby(B{}, 1.0f, images, 1.0f, noisy);
        typename nn::Precond<float, B>::Context ctx;
        const auto out = net.forward(noisy, sigma, labels, {true, uint64_t(step), true}, true, &ctx);
        edm2_loss(B{}, out.D, images, sigma, out.logvar, 0.5, 1.0 / double(n), dD, dlogvar, loss);
        net.backward(dD, dlogvar, ctx);
        clear_nonfinite(B{}, net.flat_grads());
        adam.step(1e-3);
        ema.update(net.flat_values(), double((step + 1) * n), double(n));
    }
    CHECK(host_reads() == before);
    // The step did train: the loss is finite and the output gain's gradient reached it.
    CHECK(std::isfinite(loss.to_host()[0]));
    float gain_grad = 0;
    net.visit([&](const std::string& name, nn::Param<float, B>& p) {
        if (name == "unet.out_gain") gain_grad = p.grad.to_host()[0];
    });
    CHECK(gain_grad != 0.0f);
}

// Guided EDM sampling with churn must read nothing back to the host.
template <Backend B>
void check_sampling_reads_nothing() {
    using F = Tensor<float, B>;
    auto net = tiny_network_on<B>(4), guide = tiny_network_on<B>(5);
    sample::NetworkDenoiser<float, B> d_net(net), d_guide(guide);
    const std::vector<uint64_t> seeds{3, 4};
    F noise(Shape{2, 1, 8, 8});
    sample::fill_seed_noise(noise, seeds);
    const std::vector<int64_t> classes{1, 2};
    const F labels = sample::one_hot<float, B>(classes, 3);
    sample::SamplerOptions o;
    o.steps = 4, o.S_churn = 10, o.guidance = 2;
    const sample::SampleHooks hooks{seeds, {}};
    const uint64_t before = host_reads();
    const auto result = sample::edm_sample(d_net, &d_guide, noise, labels, o, hooks);
    CHECK(host_reads() == before);
    for (const float v : result.images.to_host()) CHECK(std::isfinite(v));
}

}  // namespace mpnet::test
