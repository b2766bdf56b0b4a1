// A small learnable dataset for the training tests, and the run they train on it: 64
// grayscale 16x16 images of 4 classes (class k is a bar at row 4k, plus noise), in memory or
// as a folder of PNGs.
#pragma once
#include <stb/stb_image_write.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "mpnet/core/rng.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/train/options.hpp"

namespace mpnet::testing {

// The training tests' run: fmnist-xs on the bars, 8 images a step, a status line and a
// checkpoint every 2 steps, a learning-rate rampup over the first steps, and dropout (which
// exercises the dropout streams across a resume and a replay).
inline train::TrainOptions tiny_train_options(const std::filesystem::path& dir, double duration) {
    train::TrainOptions o;
    o.outdir = dir.string();
    o.preset = "fmnist-xs";
    o.batch = 8;
    o.duration = duration;
    o.status = 16;
    o.checkpoint = 16;
    o.snapshot = 1000;
    o.lr = 0.01;
    o.rampup = 16;
    o.dropout = 0.1;
    return o;
}

inline data::Dataset bars_dataset() {
    data::Dataset ds;
    ds.source = "bars";
    ds.size = 64, ds.channels = 1, ds.resolution = 16, ds.num_classes = 4;
    for (int64_t i = 0; i < ds.size; ++i) {
        const int k = int(i % 4);
        ds.labels.push_back(k);
        for (int p = 0; p < 256; ++p) {
            const bool bar = p / 16 >= 4 * k && p / 16 < 4 * k + 3;
            ds.pixels.push_back(uint8_t((bar ? 200 : 40) + int(rng::uniform(7, uint64_t(i * 256 + p)) * 40)));
        }
    }
    return ds;
}

// Writes the bars dataset into `dir` as PNG files with a dataset.json, the reference's format.
inline void write_bars_folder(const std::filesystem::path& dir, int resolution = 16) {
    const auto ds = bars_dataset();
    nlohmann::json labels = nlohmann::json::array();
    for (int64_t i = 0; i < ds.size; ++i) {
        const std::string file = "img" + std::to_string(i) + ".png";
        std::vector<uint8_t> px(size_t(resolution * resolution));
        for (int p = 0; p < resolution * resolution; ++p) px[size_t(p)] = ds.image(i)[p % 256];
        REQUIRE(stbi_write_png((dir / file).c_str(), resolution, resolution, 1, px.data(), resolution) != 0);
        labels.push_back({file, ds.labels[size_t(i)]});
    }
    std::ofstream(dir / "dataset.json") << nlohmann::json{{"labels", labels}}.dump();
}

}  // namespace mpnet::testing
