// What the reference dataset tool's `convert` does to a source of images (its
// dataset_tool.py, docs/datasets.md): which files are images and in which order, their
// labels, and the crop and resize of each image, with Pillow's resampling (io/resample.hpp),
// so that a dataset made here has the names, labels and pixels of one made there.
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/core/error.hpp"
#include "mpnet/data/file_tree.hpp"
#include "mpnet/data/jpeg_image.hpp"
#include "mpnet/data/png_image.hpp"
#include "mpnet/io/png.hpp"
#include "mpnet/io/resample.hpp"

namespace mpnet::data {

enum class Transform { none, center_crop, center_crop_wide, center_crop_dhariwal };

inline Transform parse_transform(const std::string& name) {
    if (name == "center-crop") return Transform::center_crop;
    if (name == "center-crop-wide") return Transform::center_crop_wide;
    if (name == "center-crop-dhariwal") return Transform::center_crop_dhariwal;
    fail("unknown transform '", name, "' (center-crop, center-crop-wide or center-crop-dhariwal)");
}

namespace detail {

inline std::string lower_extension(const std::string& name) {
    const auto dot = name.rfind('.');
    std::string ext = dot == std::string::npos ? "" : name.substr(dot);
    std::ranges::transform(ext, ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return ext;
}

// Python's round(): halves to even (and NumPy's np.round the same).
inline int64_t round_half_even(double v) { return int64_t(std::nearbyint(v)); }

inline io::Image crop(const io::Image& img, int x0, int y0, int w, int h) {
    io::Image out(w, h, img.channels);
    const std::size_t row = std::size_t(w) * std::size_t(img.channels);
    for (int y = 0; y < h; ++y)
        std::copy_n(&img.pixels[(std::size_t(y0 + y) * std::size_t(img.width) + std::size_t(x0)) * std::size_t(img.channels)],
                    row, &out.pixels[std::size_t(y) * row]);
    return out;
}

}  // namespace detail

// The file names Pillow takes for images (its registered extensions): the reference tool
// reads every one of them, so a source holding any it cannot be read here is refused rather
// than converted with images missing.
inline bool is_image_name(const std::string& name) {
    static const std::set<std::string> extensions = {
        ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".icb", ".vda", ".vst", ".ico", ".icns", ".pcx", ".psd", ".jp2",
        ".j2k", ".jpc", ".jpf", ".jpx", ".j2c", ".sgi", ".rgb", ".rgba", ".bw", ".ras", ".xbm", ".xpm", ".dds",
        ".im", ".msp", ".blp", ".cur", ".dcx", ".eps", ".ps", ".fli", ".flc", ".gbr", ".iim", ".mpo", ".pcd",
        ".pxr", ".qoi", ".fit", ".fits", ".ftc", ".ftu", ".bufr", ".grib", ".h5", ".hdf", ".mpg", ".mpeg",
        ".emf", ".wmf", ".pdf"};
    return extensions.contains(detail::lower_extension(name));
}

// A source's images in the reference's order (sorted names) with its labels: from
// dataset.json, or, for a folder without labels, from the top-level folder names (sorted,
// numbered from 0) when there are at least two. An image without a label makes the whole
// dataset unlabelled, as there.
struct SourceImages {
    std::vector<std::string> names;
    std::optional<std::vector<int64_t>> labels;
};

inline SourceImages list_source(const FileTree& tree, bool is_folder) {
    SourceImages s;
    std::ranges::copy_if(tree.files(), std::back_inserter(s.names), is_image_name);
    check(!s.names.empty(), tree.describe(""), ": no images found");
    std::map<std::string, int64_t> labels;
    if (tree.contains("dataset.json")) {
        const std::vector<uint8_t> text = tree.read("dataset.json");
        const std::string where = tree.describe("dataset.json");
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(text.begin(), text.end());
        } catch (const nlohmann::json::exception& e) {
            fail(where, ": not valid JSON: ", e.what());
        }
        check(j.is_object() && j.contains("labels"), where, ": expected an object with \"labels\"");
        if (!j["labels"].is_null()) {
            check(j["labels"].is_array(), where, ": \"labels\" is neither a list nor null");
            for (const auto& entry : j["labels"]) {
                check(entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_number_integer() &&
                          entry[1].get<int64_t>() >= 0,
                      where, ": every label must be [\"name\", class >= 0], got ", entry.dump());
                labels[entry[0].get<std::string>()] = entry[1].get<int64_t>();
            }
        }
    }
    if (labels.empty() && is_folder) {
        std::map<std::string, int64_t> folders;
        auto top = [](const std::string& n) { return n.find('/') == std::string::npos ? std::string() : n.substr(0, n.find('/')); };
        for (const auto& n : s.names) folders[top(n)] = 0;
        if (folders.size() > 1) {
            int64_t k = 0;
            for (auto& [name, index] : folders) index = k++;
            for (const auto& n : s.names) labels[n] = folders[top(n)];
        }
    }
    if (labels.empty()) return s;
    std::vector<int64_t> out;
    for (const auto& n : s.names) {
        const auto it = labels.find(n);
        if (it == labels.end()) return s;  // one image without a label: no labels at all
        out.push_back(it->second);
    }
    s.labels = std::move(out);
    return s;
}

// An image file as RGB, as Pillow's Image.open(f).convert('RGB') gives it: PNG (gray
// replicated, alpha dropped, palettes expanded, 16-bit colour reduced to its high byte) or
// JPEG (jpeg_image.hpp), told apart by their contents as Pillow does, not by the file name.
inline io::Image read_rgb(const std::vector<uint8_t>& bytes, const std::string& where) {
    if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) return read_jpeg_rgb(bytes, where);
    static constexpr uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    check(bytes.size() >= 8 && std::equal(png_signature, png_signature + 8, bytes.begin()), where,
          ": not a PNG or JPEG file (mpnet-dataset reads those two formats)");
    const ImageInfo info = png_info(bytes, where);
    // Pillow opens 16-bit grayscale as 32-bit integers and clips them to 255 on conversion:
    // neither scaled nor the high byte. Refused instead of converted differently.
    check(!(bytes.size() > 25 && bytes[24] == 16 && bytes[25] == 0), where,
          ": 16-bit grayscale PNG is not supported (the reference clips it to 8 bits); convert it first");
    stbi_set_flip_vertically_on_load_thread(0);
    int w = 0, h = 0, n = 0;
    const std::unique_ptr<stbi_uc, void (*)(void*)> px(
        stbi_load_from_memory(bytes.data(), int(bytes.size()), &w, &h, &n, 3), stbi_image_free);
    check(px != nullptr, where, ": corrupt PNG (", stbi_failure_reason(), ")");
    check(w == info.width && h == info.height, where, ": decoded size ", w, "x", h, " differs from the header");
    io::Image img(w, h, 3);
    std::copy_n(px.get(), img.pixels.size(), img.pixels.begin());
    return img;
}

// The reference's --transform and --resolution applied to an RGB image; nothing when
// center-crop-wide skips an image too small for it.
inline std::optional<io::Image> transform_image(const io::Image& img, Transform t, std::optional<int> width,
                                                std::optional<int> height) {
    const int w = img.width, h = img.height;
    switch (t) {
        case Transform::none: {
            if (width == w && height == h) return img;
            return io::resize(img, width.value_or(w), height.value_or(h), io::Filter::lanczos);
        }
        case Transform::center_crop: {
            const int side = std::min(w, h);
            return io::resize(detail::crop(img, (w - side) / 2, (h - side) / 2, side, side), *width, *height,
                              io::Filter::lanczos);
        }
        case Transform::center_crop_wide: {
            const auto ch = int(detail::round_half_even(double(*width) * h / w));
            if (w < *width || ch < *height) return std::nullopt;
            const int y0 = (h - ch) / 2;
            const io::Image band = io::resize(detail::crop(img, 0, y0, w, (h + ch) / 2 - y0), *width, *height,
                                              io::Filter::lanczos);
            io::Image canvas(*width, *width, 3);
            std::copy(band.pixels.begin(), band.pixels.end(),
                      canvas.pixels.begin() + std::ptrdiff_t((*width - *height) / 2) * *width * 3);
            return canvas;
        }
        case Transform::center_crop_dhariwal: {
            const int size = *width;
            io::Image cur = img;
            while (std::min(cur.width, cur.height) >= 2 * size)
                cur = io::resize(cur, cur.width / 2, cur.height / 2, io::Filter::box);
            const double scale = double(size) / std::min(cur.width, cur.height);
            cur = io::resize(cur, int(detail::round_half_even(cur.width * scale)),
                             int(detail::round_half_even(cur.height * scale)), io::Filter::bicubic);
            return detail::crop(cur, (cur.width - size) / 2, (cur.height - size) / 2, size, size);
        }
    }
    fail("transform_image: unknown transform");
}

// The checks of the reference's --transform and --resolution combinations.
inline void check_transform(Transform t, std::optional<int> width, std::optional<int> height) {
    if (t == Transform::none) return;
    check(width && height, "--transform needs --resolution WxH");
    if (t == Transform::center_crop_dhariwal)
        check(*width == *height, "--transform center-crop-dhariwal needs a square --resolution");
    if (t == Transform::center_crop_wide)
        check(*height <= *width && (*width - *height) % 2 == 0,
              "--transform center-crop-wide needs a --resolution WxH with H <= W and W - H even");
}

}  // namespace mpnet::data
