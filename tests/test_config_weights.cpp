// Configurations, presets and weights files: parameter counts of the reference presets,
// JSON round-trip, and save/load with clear errors for mismatches.
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "golden.hpp"
#include "scratch_dir.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/nn/weights.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

TEST_CASE("parameter counts of the reference presets equal the EDM2 paper's (millions, rounded)") {
    // EDM2 paper, Table 2 (parameters of ImageNet-512 and -64 models).
    for (const auto& preset : {std::pair{"edm2-img512-xs", 125}, {"edm2-img512-s", 280}, {"edm2-img512-m", 498},
                               {"edm2-img512-l", 777}, {"edm2-img512-xl", 1119}, {"edm2-img512-xxl", 1523},
                               {"edm2-img64-s", 280}, {"edm2-img64-m", 498}, {"edm2-img64-l", 777},
                               {"edm2-img64-xl", 1119}}) {
        const auto [name, millions] = preset;
        CAPTURE(preset.first);  // CAPTURE is a lambda; clang 14 cannot capture a structured binding
        CHECK(std::llround(double(nn::network_cost(nn::find_preset(name).net).params) / 1e6) == millions);
    }
}

TEST_CASE("the counted parameters are exactly those a built network holds") {
    for (const char* name : {"fmnist-s", "fmnist-xs", "rgb32-s"}) {
        CAPTURE(name);
        const auto cfg = nn::find_preset(name).net;
        nn::Precond<float, CpuBackend> net(cfg);
        int64_t n = 0;
        net.visit([&](const std::string&, nn::Param<float, CpuBackend>& p) { n += p.value.numel(); });
        CHECK(n == nn::network_cost(cfg).params);
    }
    CHECK(nn::network_cost(nn::find_preset("fmnist-s").net).params == doctest::Approx(2.0e6).epsilon(0.01));
}

TEST_CASE("configurations round-trip through JSON, accept the reference's, and reject nonsense") {
    auto cfg = nn::find_preset("rgb32-s").net;
    cfg.attn_resolutions = {16, 8};
    cfg.dropout = 0.1;
    CHECK(nn::to_json(nn::config_from_json(nn::to_json(cfg))) == nn::to_json(cfg));
    const auto ref = nn::config_from_json(test::golden("unet.safetensors").metadata().at("config"));
    CHECK(ref.model_channels == 16);
    CHECK(ref.channel_mult_noise == 0);
    CHECK_THROWS_WITH_AS(nn::config_from_json(R"({"model_chanels": 3})"), doctest::Contains("model_chanels"), Error);
    CHECK_THROWS_WITH_AS(nn::config_from_json(R"({"img_resolution": 24})"), doctest::Contains("power of two"), Error);
    CHECK_THROWS_WITH_AS(nn::config_from_json("{"), doctest::Contains("not valid JSON"), Error);
}

TEST_CASE("weights save and load; F16/BF16 files load into float32; mismatches are named") {
    const fs::path dir = fs::temp_directory_path() / ("mpnet-test-weights-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const auto cfg = nn::find_preset("fmnist-xs").net;
    nn::Precond<float, CpuBackend> a(cfg, 1), b(cfg, 2);
    nn::save_weights(a, dir / "a.safetensors");
    nn::load_weights(b, dir / "a.safetensors");
    auto same = [&](nn::Precond<float, CpuBackend>& x, nn::Precond<float, CpuBackend>& y, double tol) {
        std::vector<float> vx, vy;
        nn::for_each_state_tensor(x, [&](const std::string&, CpuTensor<float>& t) { auto h = t.to_host(); vx.insert(vx.end(), h.begin(), h.end()); });
        nn::for_each_state_tensor(y, [&](const std::string&, CpuTensor<float>& t) { auto h = t.to_host(); vy.insert(vy.end(), h.begin(), h.end()); });
        REQUIRE(vx.size() == vy.size());
        double err = 0;
        for (size_t i = 0; i < vx.size(); ++i) err = std::max(err, double(std::abs(vx[i] - vy[i])) / (1 + std::abs(vx[i])));
        return err <= tol;
    };
    CHECK(same(a, b, 0));

    // Half-precision copies of the same weights load with their rounding error only.
    for (auto [dtype_, tol] : {std::pair{io::DType::F16, 1e-3}, std::pair{io::DType::BF16, 8e-3}}) {
        const io::DType dtype = dtype_;  // captured below; clang 14 cannot capture a structured binding
        io::SafetensorsWriter w;
        nn::for_each_state_tensor(a, [&](const std::string& name, CpuTensor<float>& t) {
            const auto h = t.to_host();
            w.add_converted(name, t.shape().vec(), h, dtype);
        });
        w.set_metadata("config", nn::to_json(cfg));
        w.write(dir / "half.safetensors");
        nn::Precond<float, CpuBackend> c(cfg, 3);
        nn::load_weights(c, dir / "half.safetensors");
        CHECK(same(a, c, tol));
    }

    // A different configuration, a missing tensor, a wrong shape, an extra tensor.
    auto other = cfg;
    other.model_channels = 24;
    nn::Precond<float, CpuBackend> wrong(other);
    CHECK_THROWS_WITH_AS(nn::load_weights(wrong, dir / "a.safetensors"), doctest::Contains("configuration"), Error);
    auto rewrite = [&](const std::string& skip, const std::string& reshape, bool extra) {
        io::SafetensorsWriter w;
        nn::for_each_state_tensor(a, [&](const std::string& name, CpuTensor<float>& t) {
            if (name == skip) return;
            const auto h = t.to_host();
            auto shape = t.shape().vec();
            if (name == reshape) shape = {int64_t(h.size())};
            w.add<float>(name, shape, h);
        });
        if (extra) w.add<float>("unet.bogus", {1}, std::vector<float>{1});
        w.set_metadata("config", nn::to_json(cfg));
        w.write(dir / "bad.safetensors");
    };
    rewrite("unet.enc.32x32_conv.weight", "", false);
    CHECK_THROWS_WITH_AS(nn::load_weights(b, dir / "bad.safetensors"), doctest::Contains("missing tensor 'unet.enc.32x32_conv.weight'"), Error);
    rewrite("", "unet.out_conv.weight", false);
    CHECK_THROWS_WITH_AS(nn::load_weights(b, dir / "bad.safetensors"), doctest::Contains("unet.out_conv.weight' has shape"), Error);
    rewrite("", "", true);
    CHECK_THROWS_WITH_AS(nn::load_weights(b, dir / "bad.safetensors"), doctest::Contains("unet.bogus"), Error);
}

#ifdef MPNET_MINIMAL_EXE
TEST_CASE("the minimal example loads the golden network's weights and prints the checksum we compute here") {
    const fs::path dir = testing::fresh_dir("mpnet-test-minimal");
    const auto& f = test::golden("unet.safetensors");
    nn::Precond<float, CpuBackend> net(nn::config_from_json(f.metadata().at("config")));
    nn::load_state(net, f, "", true);
    nn::save_weights(net, dir / "golden-unet.safetensors");
    const std::string out = (dir / "out.txt").string();
    REQUIRE(std::system((std::string(MPNET_MINIMAL_EXE) + " " + (dir / "golden-unet.safetensors").string() + " 1.0 > " + out).c_str()) == 0);
    std::ifstream in(out);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    CpuTensor<float> x(Shape{4, 2, 16, 16}), sigma(Shape{4});
    fill_normal(CpuBackend{}, x, 0, 0);
    fill(CpuBackend{}, sigma, 1.0f);
    double sum = 0;
    for (float v : net.forward(x, sigma, CpuTensor<float>{}, {}, false).D.to_host()) sum += v;
    char expect[64];
    std::snprintf(expect, sizeof expect, "sum %.6f", sum);
    INFO(text);
    CHECK(text.find(expect) != std::string::npos);
}
#endif
