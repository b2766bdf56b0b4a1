// The latent autoencoder against diffusers' AutoencoderKL run through EDM2's
// StabilityVAEEncoder (tests/data/vae, made by scripts/vae_golden.py): the real
// architecture at reduced width, encoder and decoder, float32 and float16 weight files,
// diffusers' older attention names, and refusal of files that do not fit.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "golden.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/data/latents.hpp"
#include "mpnet/vae/stability_vae.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

using Vae = vae::AutoencoderKL<float, CpuBackend>;

const std::string dir = std::string(MPNET_TEST_DATA) + "/vae/";

const io::SafetensorsFile& vae_golden() {
    static const auto f = io::SafetensorsFile::open(dir + "golden.safetensors");
    return f;
}

int64_t golden_groups() { return std::stoll(vae_golden().metadata().at("groups")); }

vae::LatentScaling golden_scaling() {
    const auto& m = vae_golden().metadata();
    return {nlohmann::json::parse(m.at("scale")).get<std::vector<double>>(),
            nlohmann::json::parse(m.at("bias")).get<std::vector<double>>()};
}

// (final - bias) / scale, in T, as the reference computes it in float32.
template <class T>
CpuTensor<T> raw_latents(const CpuTensor<T>& final_latents) {
    const auto s = golden_scaling();
    auto z = final_latents.clone();
    const int64_t hw = z.size(2) * z.size(3);
    for (int64_t i = 0; i < z.numel(); ++i) {
        const auto ch = std::size_t(i / hw % z.size(1));
        z.data()[i] = (z.data()[i] - T(s.bias[ch])) / T(s.scale[ch]);
    }
    return z;
}

// Relative to the outputs' max-abs: measured 3.2e-6 (decoder) and 7e-7 (encoder) in float32,
// whose sums run in other orders than the reference's through some 40 layers, and 2.1e-6 in
// double, which is the reference's own float32 rounding. 2e-5 leaves room for other CPUs.
constexpr double vae_tol = 2e-5;

}  // namespace

TEST_CASE_TEMPLATE("autoencoder: configuration read from the weights", T, float) {
    const auto vae = vae::AutoencoderKL<T, CpuBackend>::load(dir + "vae.safetensors");  // groups from its metadata
    const auto& c = vae.config();
    CHECK(c.groups == golden_groups());
    CHECK(c.block_out_channels == std::vector<int64_t>{16, 32, 32});
    CHECK(c.layers_per_block == 2);
    CHECK(c.latent_channels == 4);
    CHECK(c.factor() == 4);
}

TEST_CASE_TEMPLATE("autoencoder: decoder matches diffusers, and EDM2's pixels", T, float, double) {
    const auto vae = vae::AutoencoderKL<T, CpuBackend>::load(dir + "vae.safetensors", golden_groups());
    const auto latents = test::load<T>(vae_golden(), "latents");
    MPNET_CHECK_CLOSE(vae.decode(raw_latents(latents)), test::load<float>(vae_golden(), "decoded"), vae_tol);

    // uint8(clamp(x, 0, 1) * 255) truncates: a value within rounding of an integer may land
    // on either side, so a few pixels may differ by one, none by more.
    const auto pixels = vae::decode_to_pixels(vae, latents, golden_scaling());
    const auto ref = vae_golden().read<float>("decoded_pixels");
    REQUIRE(pixels.size() == ref.size());
    int64_t off_by_one = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const float d = std::abs(float(pixels[i]) - ref[i]);
        CHECK(d <= 1);
        off_by_one += d == 1;
    }
    CHECK(off_by_one <= int64_t(ref.size() / 200));
}

TEST_CASE_TEMPLATE("autoencoder: encoder matches diffusers (mean and std, as EDM2 stores them)", T, float, double) {
    const auto vae = vae::AutoencoderKL<T, CpuBackend>::load(dir + "vae.safetensors", golden_groups());
    const auto raw = vae::encode_pixels(vae, test::load<T>(vae_golden(), "pixels"));
    MPNET_CHECK_CLOSE(raw, test::load<float>(vae_golden(), "raw_latents"), vae_tol);
}

TEST_CASE("autoencoder: a float16 weights file") {
    const auto vae = vae::AutoencoderKL<float, CpuBackend>::load(dir + "vae_f16.safetensors", golden_groups());
    const auto z = raw_latents(test::load<float>(vae_golden(), "latents"));
    MPNET_CHECK_CLOSE(vae.decode(z), test::load<float>(vae_golden(), "decoded_f16"), vae_tol);
}

TEST_CASE("autoencoder: older attention names, and files that do not fit") {
    const auto src = io::SafetensorsFile::open(dir + "vae.safetensors");
    const fs::path scratch = fs::temp_directory_path() / ("mpnet_vae_" + std::to_string(::getpid()));
    fs::create_directories(scratch);
    // Writes the source's tensors, renamed or left out by `rename` (an empty name drops it),
    // plus `extra` if given.
    auto rewrite = [&](const std::string& name, auto rename, bool extra = false) {
        io::SafetensorsWriter w;
        for (const auto& info : src.tensors()) {
            const std::string to = rename(info.name);
            if (to.empty()) continue;
            const auto values = src.read<float>(info.name);
            w.add(to, info.shape, std::span<const float>(values));
        }
        if (extra) {
            const std::vector<float> v{1};
            w.add("decoder.extra.weight", {1}, std::span<const float>(v));
        }
        const auto path = scratch / name;
        w.write(path);
        return path;
    };
    auto replace = [](std::string s, const std::string& from, const std::string& to) {
        if (const auto at = s.find(from); at != std::string::npos) s.replace(at, from.size(), to);
        return s;
    };
    const auto old_names = rewrite("old.safetensors", [&](const std::string& n) {
        return replace(replace(replace(replace(n, ".to_q.", ".query."), ".to_k.", ".key."), ".to_v.", ".value."),
                       ".to_out.0.", ".proj_attn.");
    });
    const auto vae = vae::AutoencoderKL<float, CpuBackend>::load(old_names, golden_groups());
    MPNET_CHECK_CLOSE(vae.decode(raw_latents(test::load<float>(vae_golden(), "latents"))),
                      test::load<float>(vae_golden(), "decoded"), vae_tol);

    const auto missing = rewrite("missing.safetensors", [](const std::string& n) {
        return n == "decoder.conv_out.bias" ? std::string() : n;
    });
    CHECK_THROWS_WITH_AS(Vae::load(missing, golden_groups()),
                         doctest::Contains("missing tensor 'decoder.conv_out.bias'"), Error);
    const auto extra = rewrite("extra.safetensors", [](const std::string& n) { return n; }, true);
    CHECK_THROWS_WITH_AS(Vae::load(extra, golden_groups()),
                         doctest::Contains("'decoder.extra.weight' is not part of the autoencoder"), Error);
    CHECK_THROWS_WITH_AS(Vae::load(dir + "vae.safetensors", 5),
                         doctest::Contains("do not split into 5 groups"), Error);
    CHECK_THROWS_WITH_AS(Vae::load(std::string(MPNET_TEST_DATA) + "/reference/unet.safetensors"),
                         doctest::Contains("not an AutoencoderKL"), Error);
    fs::remove_all(scratch);
}

TEST_CASE("autoencoder: EDM2's latent normalisation, both directions") {
    // mpnet's built-in normalisation (used for datasets and for networks without `encoder`
    // metadata) is the pickled encoder's, in float32 exactly.
    const auto s = golden_scaling();
    const auto builtin = data::stability_vae_normalization();
    for (std::size_t c = 0; c < 4; ++c) {
        CHECK(double(builtin.scale[c]) == s.scale[c]);
        CHECK(double(builtin.bias[c]) == s.bias[c]);
    }
    // Final latents from the stored mean (no noise) come back to the mean within float32
    // rounding: decoding undoes what encoding applies.
    const auto raw = vae_golden().read<float>("raw_latents");  // [2, 8, 8, 8]: mean, then std
    const int64_t plane = 64;
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 4; ++c)
            for (int64_t i = 0; i < plane; ++i) {
                const float mean = raw[std::size_t((n * 8 + c) * plane + i)];
                const float final = data::final_latent(mean, 1.0f, 0.0f, builtin.scale[std::size_t(c)], builtin.bias[std::size_t(c)]);
                const float back = (final - builtin.bias[std::size_t(c)]) / builtin.scale[std::size_t(c)];
                CHECK(back == doctest::Approx(mean).epsilon(1e-6).scale(10));
            }
}
