// Small networks and recording denoisers shared by the sampler tests.
#pragma once
#include <utility>
#include <vector>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/weights.hpp"
#include "mpnet/sample/denoiser.hpp"

namespace mpnet::test {

// 8x8 images, two levels, attention at 4x4: milliseconds per evaluation.
inline nn::NetworkConfig tiny_config(int64_t img_channels = 1, int64_t label_dim = 3) {
    nn::NetworkConfig c;
    c.img_resolution = 8;
    c.img_channels = img_channels;
    c.label_dim = label_dim;
    c.model_channels = 8;
    c.channel_mult = {1, 2};
    c.num_blocks = 1;
    c.attn_resolutions = {4};
    c.channels_per_head = 8;
    c.logvar_channels = 8;
    return c;
}

// A freshly initialised network has every gain at 0, so its output would ignore the U-Net;
// nonzero gains make it a real function of x, sigma and the labels.
template <Scalar T>
nn::Precond<T, CpuBackend> tiny_network(uint64_t seed, int64_t img_channels = 1, int64_t label_dim = 3) {
    nn::Precond<T, CpuBackend> net(tiny_config(img_channels, label_dim), seed);
    net.visit([&](const std::string& name, nn::Param<T, CpuBackend>& p) {
        if (name.ends_with("gain")) fill_normal(CpuBackend{}, p.value, seed + 7, 0, 1.0, 0.3);
    });
    return net;
}

// Wraps a denoiser and keeps every call's input, noise level and output.
template <class D, Scalar T>
struct Recorder {
    explicit Recorder(D d) : inner(std::move(d)) {}

    D inner;
    std::vector<CpuTensor<T>> x, out;
    std::vector<double> t;

    CpuTensor<T> operator()(const CpuTensor<T>& xi, double sigma, const CpuTensor<T>& labels) {
        x.push_back(xi.clone());
        t.push_back(sigma);
        out.push_back(inner(xi, sigma, labels).clone());
        return out.back();
    }
};

}  // namespace mpnet::test
