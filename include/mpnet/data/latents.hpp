// Latents of the Stability VAE (sd-vae-ft-mse), as EDM2's img512 models are trained on them:
// a latent is drawn from the stored posterior, mean + N(0, 1) * std, then normalised per
// channel to mean 0 and standard deviation 0.5 with the reference's assumed raw statistics
// (training/encoders.py, StabilityVAEEncoder.encode_latents).
#pragma once
#include <array>
#include <cstdint>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

struct LatentNormalization {
    std::array<float, 4> scale{}, bias{};
};

// scale = 0.5 / raw_std and bias = 0 - raw_mean * scale, in float32 as NumPy computes them.
inline LatentNormalization stability_vae_normalization() {
    constexpr std::array<float, 4> raw_mean{5.81f, 3.25f, 0.12f, -2.15f}, raw_std{4.17f, 4.62f, 3.71f, 3.28f};
    constexpr float final_mean = 0.0f, final_std = 0.5f;
    LatentNormalization n;
    for (int c = 0; c < 4; ++c) {
        n.scale[std::size_t(c)] = final_std / raw_std[std::size_t(c)];
        n.bias[std::size_t(c)] = final_mean - raw_mean[std::size_t(c)] * n.scale[std::size_t(c)];
    }
    return n;
}

// The final latent from the posterior's mean and std and a standard normal draw: (mean + noise
// * std) * scale + bias, each operation rounded to float32 as the reference's tensors are.
// (volatile keeps the compiler from fusing a product and a sum into one rounding, so that the
// result does not depend on the build's instruction set.)
inline float final_latent(float mean, float std, float noise, float scale, float bias) {
    volatile float spread = noise * std;
    volatile float x = mean + spread;
    volatile float scaled = x * scale;
    return scaled + bias;
}

}  // namespace mpnet::data
