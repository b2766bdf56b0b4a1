// A training set decoded once into memory: uint8 pixels in NCHW order plus optional class labels.
//
// Datasets for the examples are small enough to hold whole (Fashion-MNIST is 60 MiB at 32x32),
// which keeps batch assembly a pure memory copy and makes the data order easy to reproduce.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

struct Dataset {
    std::string source;  // the path the data came from, for messages
    int64_t size = 0, channels = 0, resolution = 0;  // images are square
    int64_t num_classes = 0;                         // 0 = no labels
    std::vector<uint8_t> pixels;                     // size * channels * resolution * resolution, NCHW
    std::vector<int32_t> labels;                     // size entries, or empty when unlabelled

    [[nodiscard]] std::size_t image_bytes() const {
        return static_cast<std::size_t>(channels * resolution * resolution);
    }
    [[nodiscard]] const uint8_t* image(int64_t index) const {
        return pixels.data() + static_cast<std::size_t>(index) * image_bytes();
    }
};

// Every level of the U-Net halves the resolution, so only powers of two can go all the way down.
inline void check_power_of_two(int64_t resolution, const std::string& source) {
    check(resolution > 0 && (resolution & (resolution - 1)) == 0, source, ": resolution ", resolution,
          " is not a power of two (the network halves it at every level)");
}

// Checks that the fields agree with each other; readers guarantee it, hand-built datasets may not.
inline void validate(const Dataset& ds) {
    check(ds.size > 0, ds.source, ": the dataset has no images");
    check(ds.channels > 0 && ds.resolution > 0, ds.source, ": the dataset has no image shape");
    check_power_of_two(ds.resolution, ds.source);
    check(ds.pixels.size() == static_cast<std::size_t>(ds.size) * ds.image_bytes(), ds.source, ": ",
          ds.pixels.size(), " pixel bytes for ", ds.size, " images of ", ds.channels, "x", ds.resolution, "x",
          ds.resolution);
    if (ds.num_classes == 0) {
        check(ds.labels.empty(), ds.source, ": labels given but num_classes is 0");
        return;
    }
    check(ds.labels.size() == static_cast<std::size_t>(ds.size), ds.source, ": ", ds.labels.size(),
          " labels for ", ds.size, " images");
    for (const int32_t label : ds.labels)
        check(label >= 0 && label < ds.num_classes, ds.source, ": label ", label, " outside [0, ",
              ds.num_classes, ")");
}

}  // namespace mpnet::data
