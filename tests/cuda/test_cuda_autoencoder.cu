// The latent autoencoder on the GPU: each kernel against the CPU kernel on the same inputs,
// and the whole encoder and decoder against diffusers' golden outputs (tests/data/vae).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "cuda_test.cuh"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/vae/stability_vae.hpp"

using namespace mpnet;

TEST_CASE_TEMPLATE("cuda autoencoder kernels: group norm (+ SiLU), bias, upsampling, odd pixels, attention", T, float,
                   double) {
    const Shape shape{2, 8, 6, 10};
    const std::vector<CpuTensor<T>> inputs{test::random_cpu<T>(shape, 1, 3.0), test::random_cpu<T>(Shape{8}, 2),
                                           test::random_cpu<T>(Shape{8}, 3), test::random_cpu<T>(shape, 4),
                                           test::random_cpu<T>(shape, 5)};
    test::compare_backends<T>(
        [&](auto tag, const auto& in) {
            using Tn = std::decay_t<decltype(in[0])>;
            std::vector<Tn> out;
            for (const bool silu : {false, true}) {
                Tn y(shape);
                group_norm_forward(tag, in[0], 4, 1e-6, in[1], in[2], silu, y);
                out.push_back(y);
            }
            Tn biased = in[0].clone();
            add_channel_bias(tag, in[1], biased);
            out.push_back(biased);
            Tn up(Shape{2, 8, 12, 20});
            upsample_nearest2x(tag, in[0], up);
            out.push_back(up);
            Tn odd(Shape{2, 8, 3, 5});
            take_odd_pixels(tag, in[0], odd);
            out.push_back(odd);
            Tn attended(shape);
            softmax_attention_forward(tag, in[0], in[3], in[4], attended);
            out.push_back(attended);
            return out;
        },
        test::gpu_fwd_tol<T>, inputs);
}

TEST_CASE("cuda autoencoder: decoder and encoder match diffusers") {
    const std::string dir = test::test_data_dir() + "/vae/";
    const auto golden = io::SafetensorsFile::open(dir + "golden.safetensors");
    const auto vae = vae::AutoencoderKL<float, CudaBackend>::load(dir + "vae.safetensors");
    const auto& m = golden.metadata();
    const vae::LatentScaling s{nlohmann::json::parse(m.at("scale")).get<std::vector<double>>(),
                               nlohmann::json::parse(m.at("bias")).get<std::vector<double>>()};
    auto z = test::load<float>(golden, "latents");
    const int64_t hw = z.size(2) * z.size(3);
    for (int64_t i = 0; i < z.numel(); ++i) {
        const auto c = std::size_t(i / hw % z.size(1));
        z.data()[i] = (z.data()[i] - float(s.bias[c])) / float(s.scale[c]);
    }
    // The CPU autoencoder's tolerance (test_autoencoder.cpp): other summation orders only.
    MPNET_CHECK_GPU(vae.decode(test::to_gpu(z)), test::load<float>(golden, "decoded"), 2e-5);
    const auto raw = vae::encode_pixels(vae, test::to_gpu(test::load<float>(golden, "pixels")));
    MPNET_CHECK_GPU(raw, test::load<float>(golden, "raw_latents"), 2e-5);
}
