// EDM2's use of the Stability VAE (training/encoders.py, StabilityVAEEncoder): pixels to the
// raw latents its datasets store, and the networks' final latents back to pixels.
//
//   encode_pixels: the autoencoder's posterior of pixels / 255 (not [-1, 1]: EDM2's
//                  convention, which its raw_mean / raw_std statistics assume), stored as
//                  mean and std = exp(logvar / 2), logvar clamped to [-30, 20].
//   decode:        z = (final - bias) / scale per channel, decoded, then
//                  uint8(clamp(x, 0, 1) * 255) with truncation, as torch's .to(uint8) does.
// Images go through the autoencoder one at a time, which bounds memory and changes nothing:
// every layer treats the images of a batch independently.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/vae/autoencoder_kl.hpp"

namespace mpnet::vae {

// final latent = raw latent * scale + bias, per channel (the encoder's pickled scale, bias).
struct LatentScaling {
    std::vector<double> scale, bias;
};

// Raw latents [N, 2 latent, H/8, W/8] (mean, then std) of pixels [N, 3, H, W] valued 0..255.
template <Scalar T, Backend B>
Tensor<T, B> encode_pixels(const AutoencoderKL<T, B>& vae, const Tensor<T, B>& pixels) {
    const int64_t n = pixels.size(0), lc = vae.config().latent_channels, f = vae.config().factor();
    std::vector<T> out;
    for (int64_t i = 0; i < n; ++i) {
        auto host = pixels.slice(i, i + 1).to_host();
        for (auto& v : host) v = T(float(v) / 255.0f);
        const Shape in_shape{1, pixels.size(1), pixels.size(2), pixels.size(3)};
        auto m = vae.encode_moments(Tensor<T, B>::from_host(in_shape, host)).to_host();
        for (std::size_t j = m.size() / 2; j < m.size(); ++j) m[j] = std::exp(T(0.5) * std::clamp(m[j], T(-30), T(20)));
        out.insert(out.end(), m.begin(), m.end());
    }
    return Tensor<T, B>::from_host(Shape{n, 2 * lc, pixels.size(2) / f, pixels.size(3) / f}, out);
}

// Pixels [N, 3, H 8, W 8] (uint8, channel-major) of final latents [N, latent, H, W].
template <Scalar T, Backend B>
std::vector<uint8_t> decode_to_pixels(const AutoencoderKL<T, B>& vae, const Tensor<T, B>& latents,
                                      const LatentScaling& s) {
    const auto& c = vae.config();
    check(latents.rank() == 4 && latents.size(1) == c.latent_channels, "decode: latents ", latents.shape(),
          " do not have the autoencoder's ", c.latent_channels, " channels");
    check(s.scale.size() == std::size_t(c.latent_channels) && s.bias.size() == s.scale.size(),
          "decode: the latent scaling has ", s.scale.size(), " channels, the autoencoder ", c.latent_channels);
    const int64_t n = latents.size(0), hw = latents.size(2) * latents.size(3);
    std::vector<uint8_t> pixels;
    for (int64_t i = 0; i < n; ++i) {
        auto z = latents.slice(i, i + 1).to_host();
        for (int64_t ch = 0; ch < c.latent_channels; ++ch)
            for (int64_t j = 0; j < hw; ++j) {
                T& v = z[std::size_t(ch * hw + j)];
                v = (v - T(s.bias[std::size_t(ch)])) / T(s.scale[std::size_t(ch)]);
            }
        const Shape zs{1, c.latent_channels, latents.size(2), latents.size(3)};
        const auto x = vae.decode(Tensor<T, B>::from_host(zs, z)).to_host();
        for (const T v : x) {
            const float f = std::isnan(float(v)) ? 0.0f : std::clamp(float(v), 0.0f, 1.0f) * 255.0f;
            pixels.push_back(uint8_t(f));
        }
    }
    return pixels;
}

}  // namespace mpnet::vae
