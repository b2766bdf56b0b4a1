// One entry point for the trainer's --data option.
//
//   "fashion-mnist"        Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist
//   "fashion-mnist:DIR"    the same IDX files in DIR
//   DIR                    Fashion-MNIST if DIR holds train-images-idx3-ubyte(.gz), else a PNG folder
//   FILE.zip               a zip archive of PNG images
//
// `storage` decides whether a PNG folder or archive is decoded into memory or streamed
// (image_folder.hpp); Fashion-MNIST is always held in memory (60 MiB). `bad_samples`
// (--skip-bad) makes a folder's or archive's unreadable samples replaced rather than fatal;
// `cache_bytes` (--data-cache) bounds a streamed dataset's cache of decoded samples.
#pragma once
#include <filesystem>
#include <string>
#include <system_error>

#include "mpnet/core/error.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/data/fashion_mnist.hpp"
#include "mpnet/data/image_folder.hpp"

namespace mpnet::data {

inline Dataset load_dataset(const std::string& spec, Storage storage = Storage::automatic,
                            std::shared_ptr<BadSamples> bad_samples = nullptr, std::size_t cache_bytes = 0) {
    const std::string prefix = "fashion-mnist";
    if (spec == prefix) return load_fashion_mnist(fashion_mnist_default_dir);
    if (spec.starts_with(prefix + ":")) return load_fashion_mnist(spec.substr(prefix.size() + 1));

    const std::filesystem::path path = spec;
    std::error_code ec;
    check(std::filesystem::exists(path, ec), spec, ": no such file or directory");
    const bool has_idx = std::filesystem::exists(path / "train-images-idx3-ubyte.gz", ec) ||
                         std::filesystem::exists(path / "train-images-idx3-ubyte", ec);
    if (std::filesystem::is_directory(path, ec) && has_idx) return load_fashion_mnist(path);
    return load_image_folder(path, storage, std::move(bad_samples), cache_bytes);
}

}  // namespace mpnet::data
