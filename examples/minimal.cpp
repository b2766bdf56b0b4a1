// The smallest use of mpnet: load a weights file, denoise a batch, print a checksum.
//   minimal WEIGHTS.safetensors [SIGMA]
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/weights.hpp"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s WEIGHTS.safetensors [SIGMA]\n", argv[0]);
        return 2;
    }
    try {
        using Tensor = mpnet::CpuTensor<float>;
        const double sigma_value = argc > 2 ? mpnet::cli::parse_real("SIGMA", argv[2], mpnet::cli::positive) : 1.0;
        auto net = mpnet::nn::load_network<float, mpnet::CpuBackend>(argv[1]);
        const auto& cfg = net.config();
        const int64_t n = 4;
        Tensor x(mpnet::Shape{n, cfg.img_channels, cfg.img_resolution, cfg.img_resolution});
        fill_normal(mpnet::CpuBackend{}, x, /*seed=*/0, /*offset=*/0);
        Tensor sigma(mpnet::Shape{n});
        fill(mpnet::CpuBackend{}, sigma, float(sigma_value));
        const auto D = net.forward(x, sigma, Tensor{}, {}, /*want_logvar=*/false).D;  // labels: none (zeros)
        double sum = 0, sum_abs = 0;
        for (float v : D.to_host()) sum += v, sum_abs += std::abs(v);
        std::printf("D %s  sum %.6f  mean|D| %.6f\n", D.shape().str().c_str(), sum, sum_abs / double(D.numel()));
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
