// Named presets: the reference's EDM2 configurations (network and training recipe) and
// small ones sized for a 2-core CPU.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mpnet/nn/config.hpp"

namespace mpnet::nn {

// The training recipe of docs/design.md section 4 (names as in the reference trainer).
struct TrainingDefaults {
    double duration_mimg = 0;  // training length in millions of images
    int64_t batch = 2048;
    double lr = 0.01;          // ref_lr
    double decay = 70000;      // ref_batches: lr decays as 1/sqrt(t) after this many batches
    double rampup_mimg = 10;   // linear warm-up length
    double P_mean = -0.4, P_std = 1.0;
};

struct Preset {
    std::string name;
    NetworkConfig net;
    TrainingDefaults train;
};

// n Mi images (n * 2^20, the unit of the reference's table) in millions of images.
constexpr double mebi_images(std::int64_t n) { return double(n << 20) / 1e6; }

inline std::vector<Preset> presets() {
    std::vector<Preset> out;
    // Settings not passed here keep the defaults of NetworkConfig and TrainingDefaults, which
    // are the reference's (tests/test_presets.cpp compares every field with its table).
    auto edm2 = [&](std::string name, bool img512, std::int64_t duration_mi, std::int64_t channels, double lr,
                    double dropout) {
        NetworkConfig n;
        n.img_resolution = 64;
        n.img_channels = img512 ? 4 : 3;  // img512 runs in the 64x64x4 latent space
        n.label_dim = 1000;
        n.model_channels = channels;
        n.dropout = dropout;
        TrainingDefaults t;
        t.duration_mimg = mebi_images(duration_mi);
        t.batch = 2048;
        t.lr = lr;
        t.decay = img512 ? 70000 : 35000;
        t.P_mean = img512 ? -0.4 : -0.8;
        t.P_std = img512 ? 1.0 : 1.6;
        out.push_back({std::move(name), n, t});
    };
    // The reference's config_presets: name, duration (Mi images), channels, lr, dropout.
    edm2("edm2-img512-xxs", true, 2048, 64, 0.0170, 0.00);
    edm2("edm2-img512-xs", true, 2048, 128, 0.0120, 0.00);
    edm2("edm2-img512-s", true, 2048, 192, 0.0100, 0.00);
    edm2("edm2-img512-m", true, 2048, 256, 0.0090, 0.10);
    edm2("edm2-img512-l", true, 1792, 320, 0.0080, 0.10);
    edm2("edm2-img512-xl", true, 1280, 384, 0.0070, 0.10);
    edm2("edm2-img512-xxl", true, 896, 448, 0.0065, 0.10);
    edm2("edm2-img64-xs", false, 1024, 128, 0.0120, 0.00);
    edm2("edm2-img64-s", false, 1024, 192, 0.0100, 0.00);
    edm2("edm2-img64-m", false, 2048, 256, 0.0090, 0.10);
    edm2("edm2-img64-l", false, 1024, 320, 0.0080, 0.10);
    edm2("edm2-img64-xl", false, 640, 384, 0.0070, 0.10);

    // CPU presets for 32x32 data: three levels (32, 16, 8) with attention at 8x8.
    // fmnist-s has about 2 M parameters and 0.38 G multiply-adds per image; fmnist-xs is a
    // 0.3 M-parameter model for quick demonstrations and tests.
    auto small = [&](std::string name, int64_t img_channels, int64_t model_channels, std::vector<int64_t> mult) {
        NetworkConfig n;
        n.img_resolution = 32;
        n.img_channels = img_channels;
        n.label_dim = 10;
        n.model_channels = model_channels;
        n.channel_mult = std::move(mult);
        n.num_blocks = 1;
        n.attn_resolutions = {8};
        n.channels_per_head = model_channels;
        n.logvar_channels = 64;
        TrainingDefaults t;
        t.duration_mimg = 2;
        t.batch = 64;
        t.lr = 0.01;
        t.decay = 2000;
        t.rampup_mimg = 0.01;
        t.P_mean = -0.8;
        t.P_std = 1.6;
        out.push_back({std::move(name), n, t});
    };
    small("fmnist-s", 1, 32, {1, 2, 3});
    small("fmnist-xs", 1, 16, {1, 2, 2});
    small("rgb32-s", 3, 32, {1, 2, 3});
    return out;
}

inline Preset find_preset(const std::string& name) {
    std::string known;
    for (auto& p : presets()) {
        if (p.name == name) return p;
        known += (known.empty() ? "" : ", ") + p.name;
    }
    fail("unknown preset '", name, "' (known: ", known, ")");
}

}  // namespace mpnet::nn
