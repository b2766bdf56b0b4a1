// The reference implementation's dataset format: a directory or a .zip archive of PNG images at
// any depth of subfolders, with optional class labels in dataset.json.
//
// Images are taken in the byte order of their relative paths, so the same files always give
// the same dataset. They must all be square, of one power-of-two size, and all grayscale or all
// RGB. Images with an alpha channel are rejected rather than flattened: the reference keeps
// alpha as a fourth channel, and silently dropping it would change what transparent pixels show.
//
// A dataset whose decoded pixels would exceed memory_limit_bytes (or any, with Storage::stream)
// is streamed: StreamedPngs reads each image when a batch needs it.
//
// A source without PNG images but with .npy files is a latent dataset (the reference's
// `encode` output, img-mean-std-*.npy): [2C, R, R] float posteriors, see latents.hpp.
#pragma once
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/data/cached_reader.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/data/dataset_json.hpp"
#include "mpnet/data/file_tree.hpp"
#include "mpnet/data/npy.hpp"
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

// The files of a streamed dataset, in dataset order: a zip archive's handle serves one reader
// at a time, so reading a member is serialised; decoding, the expensive part, runs in parallel.
class DatasetFiles {
public:
    // `first`: the sample whose shape the others must have (the first readable one).
    DatasetFiles(std::shared_ptr<const FileTree> tree, std::vector<std::string> names, std::size_t first = 0)
        : tree_(std::move(tree)), names_(std::move(names)), first_(tree_->describe(names_.at(first))) {}

    // The bytes of sample `index` and how messages name its file.
    [[nodiscard]] std::pair<std::vector<uint8_t>, std::string> read(int64_t index) const {
        const std::string& name = names_.at(static_cast<std::size_t>(index));
        const std::lock_guard lock(mutex_);
        return {tree_->read(name), tree_->describe(name)};
    }
    [[nodiscard]] const std::string& first() const { return first_; }

private:
    std::shared_ptr<const FileTree> tree_;
    std::vector<std::string> names_;
    std::string first_;
    mutable std::mutex mutex_;
};

// A folder's or archive's PNG images read on demand: the file list and the first image's shape
// are known up front, every other image is read and decoded when a batch needs it (its shape
// checked then, the error naming the file).
class StreamedPngs final : public ImageReader {
public:
    StreamedPngs(std::shared_ptr<const FileTree> tree, std::vector<std::string> names, std::size_t first_index,
                 ImageInfo first)
        : files_(std::move(tree), std::move(names), first_index), first_(first) {}

    void read(int64_t index, uint8_t* chw) const override {
        const auto [bytes, where] = files_.read(index);
        const ImageInfo info = png_info(bytes, where);
        detail::check_same_shape(info, first_, where, files_.first());
        const std::vector<uint8_t> pixels = decode_png_chw(bytes, info, where);
        std::copy(pixels.begin(), pixels.end(), chw);
    }

private:
    DatasetFiles files_;
    ImageInfo first_;
};

namespace detail {

// A latent file's shape, [2C, R, R] with R a power of two.
inline void check_latent_shape(const NpyArray& a, const std::string& where) {
    check(a.shape.size() == 3 && a.shape[0] > 0 && a.shape[0] % 2 == 0 && a.shape[1] == a.shape[2], where,
          ": a latent must be a [2C, R, R] array (mean and std), got shape ", a.shape.size(), "-d");
    check_power_of_two(a.shape[1], where);
}

}  // namespace detail

// A folder's or archive's latent .npy files read on demand, like StreamedPngs.
class StreamedLatents final : public ImageReader {
public:
    StreamedLatents(std::shared_ptr<const FileTree> tree, std::vector<std::string> names, std::size_t first_index,
                    std::vector<int64_t> shape)
        : files_(std::move(tree), std::move(names), first_index), shape_(std::move(shape)) {}

    void read(int64_t, uint8_t*) const override { fail("this dataset holds latents, not images"); }
    void read_latent(int64_t index, float* mean_std) const override {
        const auto [bytes, where] = files_.read(index);
        const NpyArray a = parse_npy(bytes, where);
        check(a.shape == shape_, where, ": latent of another shape than ", files_.first());
        std::copy(a.values.begin(), a.values.end(), mean_std);
    }

private:
    DatasetFiles files_;
    std::vector<int64_t> shape_;
};

// Whether a folder's images are decoded into memory up front or read on demand.
enum class Storage {
    automatic,  // in memory up to memory_limit_bytes of decoded pixels, else streamed
    memory,
    stream,
};
inline constexpr std::size_t memory_limit_bytes = std::size_t(2) << 30;

namespace detail {

inline bool is_npy_name(const std::string& name) { return name.ends_with(".npy"); }

// A streamed dataset's reader, behind a cache of `cache_bytes` of decoded samples when asked.
inline void set_reader(Dataset& ds, std::shared_ptr<const ImageReader> reader, std::size_t sample_bytes,
                       std::size_t cache_bytes) {
    if (cache_bytes) reader = std::make_shared<const CachedReader>(std::move(reader), sample_bytes, cache_bytes);
    ds.reader = std::move(reader);
}

// Runs f(i) for the first sample that f accepts and returns i; with --skip-bad the samples
// before it that threw are noted as bad, without it the first sample must do.
template <class F>
std::size_t first_readable(const Dataset& ds, std::size_t count, F&& f) {
    for (std::size_t i = 0; i < count; ++i)
        if (ds.try_read(int64_t(i), [&](int64_t) { f(i); })) return i;
    ds.fail_all_bad(int64_t(count));
}

// Decodes all ds.size samples into `out`, `per` values each, by decode(i, destination).
// With --skip-bad a sample that throws is noted and then filled from the next readable one,
// label included, exactly as a streamed dataset substitutes it.
template <class V, class Decode>
void decode_all(Dataset& ds, std::vector<V>& out, std::size_t per, Decode&& decode) {
    const auto n = static_cast<std::size_t>(ds.size);
    out.resize(n * per);
    std::vector<char> good(n);
    for (std::size_t i = 0; i < n; ++i) good[i] = ds.try_read(int64_t(i), [&](int64_t) { decode(i, out.data() + i * per); });
    if (std::ranges::find(good, 1) == good.end()) ds.fail_all_bad(ds.size);
    for (std::size_t i = 0; i < n; ++i) {
        if (good[i]) continue;
        std::size_t j = (i + 1) % n;
        while (!good[j]) j = (j + 1) % n;
        std::copy_n(out.begin() + std::ptrdiff_t(j * per), per, out.begin() + std::ptrdiff_t(i * per));
        if (!ds.labels.empty()) ds.labels[i] = ds.labels[j];
    }
}

// The labels of `names` from the tree's dataset.json, if it has labels.
inline void read_labels(const FileTree& tree, const std::vector<std::string>& names, Dataset& ds) {
    if (!tree.contains(dataset_json_name)) return;
    const std::vector<uint8_t> text = tree.read(dataset_json_name);
    const auto labels = parse_dataset_json(std::string(text.begin(), text.end()), names, tree.describe(dataset_json_name));
    if (labels) {
        ds.labels = *labels;
        ds.num_classes = *std::ranges::max_element(ds.labels) + int64_t{1};
    }
}

// A dataset of VAE latents (the reference's img-mean-std-*.npy files).
inline Dataset load_latents(std::shared_ptr<const FileTree> tree, std::vector<std::string> names, Dataset ds,
                            Storage storage, std::size_t cache_bytes) {
    ds.latent = true;
    ds.size = static_cast<int64_t>(names.size());
    read_labels(*tree, names, ds);
    NpyArray first;
    const std::size_t first_index = first_readable(ds, names.size(), [&](std::size_t i) {
        const std::string where = tree->describe(names[i]);
        first = parse_npy(tree->read(names[i]), where);
        check_latent_shape(first, where);
    });
    const std::string first_where = tree->describe(names[first_index]);
    ds.channels = first.shape[0] / 2;
    ds.resolution = first.shape[1];
    check(ds.channels == 4, first_where, ": latents of ", ds.channels,
          " channels; the Stability VAE's (whose normalisation training applies) have 4");
    const std::size_t bytes = names.size() * ds.latent_floats() * sizeof(float);
    if (storage == Storage::stream || (storage == Storage::automatic && bytes > memory_limit_bytes)) {
        set_reader(ds, std::make_shared<StreamedLatents>(std::move(tree), std::move(names), first_index, first.shape),
                   ds.latent_floats() * sizeof(float), cache_bytes);
        return ds;
    }
    decode_all(ds, ds.latent_values, ds.latent_floats(), [&](std::size_t i, float* dst) {
        const std::string where = tree->describe(names[i]);
        const NpyArray a = parse_npy(tree->read(names[i]), where);
        check(a.shape == first.shape, where, ": latent of another shape than ", first_where);
        std::ranges::copy(a.values, dst);
    });
    return ds;
}

}  // namespace detail

// `bad_samples` (--skip-bad): unreadable samples are replaced rather than fatal (dataset.hpp).
// `cache_bytes` (--data-cache): a streamed dataset keeps up to that many bytes of decoded
// samples (cached_reader.hpp).
inline Dataset load_image_folder(const std::filesystem::path& dir_or_zip, Storage storage = Storage::automatic,
                                 std::shared_ptr<BadSamples> bad_samples = nullptr, std::size_t cache_bytes = 0) {
    auto tree = std::make_shared<const FileTree>(dir_or_zip);
    std::vector<std::string> images;
    std::ranges::copy_if(tree->files(), std::back_inserter(images), detail::is_png_name);

    Dataset ds;
    ds.source = dir_or_zip.string();
    ds.bad_samples = std::move(bad_samples);
    if (images.empty()) {
        std::vector<std::string> latents;
        std::ranges::copy_if(tree->files(), std::back_inserter(latents), detail::is_npy_name);
        check(!latents.empty(), dir_or_zip.string(), ": no PNG images or .npy latents found");
        return detail::load_latents(std::move(tree), std::move(latents), std::move(ds), storage, cache_bytes);
    }
    ds.size = static_cast<int64_t>(images.size());
    detail::read_labels(*tree, images, ds);

    ImageInfo first;
    const std::size_t first_index = detail::first_readable(ds, images.size(), [&](std::size_t i) {
        const std::string where = tree->describe(images[i]);
        first = png_info(tree->read(images[i]), where);
        detail::check_first_image(first, where);
    });
    const std::string first_where = tree->describe(images[first_index]);
    ds.channels = first.channels;
    ds.resolution = first.width;
    const bool stream = storage == Storage::stream ||
                        (storage == Storage::automatic && images.size() * ds.image_bytes() > memory_limit_bytes);
    if (stream) {
        detail::set_reader(ds, std::make_shared<StreamedPngs>(std::move(tree), std::move(images), first_index, first),
                           ds.image_bytes(), cache_bytes);
        return ds;
    }
    detail::decode_all(ds, ds.pixels, ds.image_bytes(), [&](std::size_t i, uint8_t* dst) {
        const std::string where = tree->describe(images[i]);
        const std::vector<uint8_t> bytes = tree->read(images[i]);
        const ImageInfo info = png_info(bytes, where);
        detail::check_same_shape(info, first, where, first_where);
        std::ranges::copy(decode_png_chw(bytes, info, where), dst);
    });
    return ds;
}

}  // namespace mpnet::data
