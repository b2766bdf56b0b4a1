// Fashion-MNIST (Xiao et al. 2017) as Debian's dataset-fashion-mnist installs it:
// {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz under /usr/share/datasets/fashion-mnist.
//
// The 28x28 grayscale images are zero-padded, centred, to a power-of-two resolution (32 by
// default) because the U-Net halves the resolution at every level. Zero is the background
// value of the dataset, so the padding adds no edges.
#pragma once
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/data/gzip_file.hpp"
#include "mpnet/data/idx.hpp"

namespace mpnet::data {

inline const std::filesystem::path fashion_mnist_default_dir = "/usr/share/datasets/fashion-mnist";
inline constexpr int64_t fashion_mnist_classes = 10;

namespace detail {

// The compressed file as shipped, or the same name without .gz for an unpacked copy.
inline std::filesystem::path idx_file(const std::filesystem::path& dir, const std::string& stem) {
    const std::filesystem::path gz = dir / (stem + ".gz");
    std::error_code ec;
    if (std::filesystem::exists(gz, ec)) return gz;
    if (std::filesystem::exists(dir / stem, ec)) return dir / stem;
    fail(gz.string(), ": no such file (install Debian's dataset-fashion-mnist, or give its directory)");
}

inline IdxArray read_idx_file(const std::filesystem::path& path, int ndim) {
    return parse_idx(read_gzip_file(path), ndim, path.string());
}

}  // namespace detail

// Fashion-MNIST from `dir`: the 60 000 training images if `train`, else the 10 000 test images.
inline Dataset load_fashion_mnist(const std::filesystem::path& dir = fashion_mnist_default_dir, bool train = true,
                                  int64_t pad_to = 32) {
    std::error_code ec;
    check(std::filesystem::is_directory(dir, ec), dir.string(), ": no such directory");
    check_power_of_two(pad_to, dir.string());
    const std::string split = train ? "train" : "t10k";
    const auto image_path = detail::idx_file(dir, split + "-images-idx3-ubyte");
    const auto label_path = detail::idx_file(dir, split + "-labels-idx1-ubyte");
    const IdxArray images = detail::read_idx_file(image_path, 3);
    const IdxArray labels = detail::read_idx_file(label_path, 1);

    const int64_t n = images.dims[0], rows = images.dims[1], cols = images.dims[2];
    check(labels.dims[0] == n, label_path.string(), ": ", labels.dims[0], " labels but ", image_path.string(),
          " has ", n, " images");
    check(rows == cols, image_path.string(), ": images are ", cols, "x", rows, ", not square");
    check(rows <= pad_to, image_path.string(), ": ", rows, "x", rows, " images do not fit in ", pad_to, "x",
          pad_to);

    Dataset ds{.source = dir.string(), .size = n, .channels = 1, .resolution = pad_to,
               .num_classes = fashion_mnist_classes, .pixels = {}, .labels = {}, .reader = {}, .latent = false, .latent_values = {}, .bad_samples = {}};
    ds.pixels.assign(static_cast<std::size_t>(n) * ds.image_bytes(), 0);
    const int64_t offset = (pad_to - rows) / 2;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t y = 0; y < rows; ++y) {
            const uint8_t* src = images.data.data() + (i * rows + y) * cols;
            uint8_t* dst = ds.pixels.data() + (i * pad_to + y + offset) * pad_to + offset;
            std::copy(src, src + cols, dst);
        }
    ds.labels.reserve(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const int32_t label = labels.data[static_cast<std::size_t>(i)];
        check(label < fashion_mnist_classes, label_path.string(), ": label ", label, " of image ", i,
              " is not one of the ", fashion_mnist_classes, " classes");
        ds.labels.push_back(label);
    }
    return ds;
}

}  // namespace mpnet::data
