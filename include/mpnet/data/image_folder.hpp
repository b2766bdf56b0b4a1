// The reference implementation's dataset format: a directory or a .zip archive of PNG images at
// any depth of subfolders, with optional class labels in dataset.json.
//
// Images are taken in the byte order of their relative paths, so the same files always give
// the same dataset. They must all be square, of one power-of-two size, and all grayscale or all
// RGB. Images with an alpha channel are rejected rather than flattened: the reference keeps
// alpha as a fourth channel, and silently dropping it would change what transparent pixels show.
#pragma once
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/data/dataset_json.hpp"
#include "mpnet/data/file_tree.hpp"
#include "mpnet/data/png_image.hpp"

namespace mpnet::data {

inline constexpr const char* dataset_json_name = "dataset.json";

namespace detail {

inline bool is_png_name(const std::string& name) {
    if (name.size() < 4) return false;
    std::string ext = name.substr(name.size() - 4);
    std::ranges::transform(ext, ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return ext == ".png";
}

// The shape every image must share, taken from the first one.
inline void check_first_image(const ImageInfo& info, const std::string& where) {
    check(info.width == info.height, where, ": image is ", info.width, "x", info.height, ", not square");
    check(info.channels == 1 || info.channels == 3, where, ": image has ", info.channels,
          " channels (an alpha channel?); only grayscale and RGB are supported");
    check_power_of_two(info.width, where);
}

inline void check_same_shape(const ImageInfo& info, const ImageInfo& first, const std::string& where,
                             const std::string& first_where) {
    check(info.width == first.width && info.height == first.height, where, ": image is ", info.width, "x",
          info.height, " but ", first_where, " is ", first.width, "x", first.height,
          "; all images must have the same size");
    check(info.channels == first.channels, where, ": image has ", info.channels, " channels but ", first_where,
          " has ", first.channels, "; all images must be grayscale or all RGB");
}

}  // namespace detail

inline Dataset load_image_folder(const std::filesystem::path& dir_or_zip) {
    const FileTree tree(dir_or_zip);
    std::vector<std::string> images;
    std::ranges::copy_if(tree.files(), std::back_inserter(images), detail::is_png_name);
    check(!images.empty(), dir_or_zip.string(), ": no PNG images found");

    Dataset ds;
    ds.source = dir_or_zip.string();
    ds.size = static_cast<int64_t>(images.size());
    if (tree.contains(dataset_json_name)) {
        const std::vector<uint8_t> text = tree.read(dataset_json_name);
        const auto labels = parse_dataset_json(std::string(text.begin(), text.end()), images,
                                               tree.describe(dataset_json_name));
        if (labels) {
            ds.labels = *labels;
            ds.num_classes = *std::ranges::max_element(ds.labels) + int64_t{1};
        }
    }

    ImageInfo first;
    for (std::size_t i = 0; i < images.size(); ++i) {
        const std::string where = tree.describe(images[i]);
        const std::vector<uint8_t> bytes = tree.read(images[i]);
        const ImageInfo info = png_info(bytes, where);
        if (i == 0) {
            detail::check_first_image(info, where);
            first = info;
            ds.channels = info.channels;
            ds.resolution = info.width;
            ds.pixels.reserve(images.size() * ds.image_bytes());
        }
        detail::check_same_shape(info, first, where, tree.describe(images[0]));
        const std::vector<uint8_t> chw = decode_png_chw(bytes, info, where);
        ds.pixels.insert(ds.pixels.end(), chw.begin(), chw.end());
    }
    return ds;
}

}  // namespace mpnet::data
