// Builds a small EDM2 network from the installed headers and runs one denoising step.
#include <cmath>
#include <cstdio>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/precond.hpp"
#include "mpnet/nn/presets.hpp"

int main() {
    auto cfg = mpnet::nn::find_preset("fmnist-xs").net;
    mpnet::nn::Precond<float, mpnet::CpuBackend> net(cfg, 0);
    mpnet::CpuTensor<float> x(mpnet::Shape{2, 1, 32, 32}), sigma(mpnet::Shape{2});
    fill_normal(mpnet::CpuBackend{}, x, 1, 0);
    fill(mpnet::CpuBackend{}, sigma, 2.0f);
    const auto D = net.forward(x, sigma, {}, {}, false).D;
    for (float v : D.to_host())
        if (!std::isfinite(v)) return 1;
    std::printf("consumer ok: D %s\n", D.shape().str().c_str());
    return 0;
}
