// mpnet-dataset: makes training datasets as the reference implementation's dataset_tool.py
// does (docs/datasets.md). `convert` turns a folder or zip of images into a zip or folder of
// PNGs named 00000/img00000000.png with a dataset.json of labels: the same names, labels and
// pixels as the reference tool gives (its crops, and Pillow's resampling).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "cli.hpp"
#include "progress.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/data/dataset_tool.hpp"
#include "mpnet/data/npy.hpp"
#include "mpnet/io/atomic_file.hpp"
#include "mpnet/io/zip_writer.hpp"
#include "mpnet/vae/stability_vae.hpp"

namespace fs = std::filesystem;
using namespace mpnet;
using cli::UsageError;

namespace {

struct Options {
    std::string command;  // convert or encode
    std::string source, dest, transform, vae;
    std::optional<int64_t> max_images;
    std::optional<int> width, height;
    bool quiet = false, skip_bad = false;
};

const char* overview = R"(Usage: mpnet-dataset (convert | encode) --source PATH --dest PATH [options]

Makes training datasets as the reference implementation's dataset_tool.py does.

Commands:
  convert   a folder or zip of images -> a zip or folder of PNGs and dataset.json
  encode    a folder or zip of images -> their Stable Diffusion VAE posteriors as .npy
            files and dataset.json (the latent datasets of EDM2's img512 presets)

Run 'mpnet-dataset convert --help' or 'mpnet-dataset encode --help' for the options.
)";

cli::Parser make_encode_parser(Options& o) {
    cli::Parser p("mpnet-dataset encode --source PATH --dest PATH --vae FILE [options]",
                  R"(Encodes images (normally a dataset made by `convert`, e.g. 512x512 ImageNet) to
latents, as the reference's `dataset_tool.py encode` does: each image's VAE
posterior, mean and std of the pixels / 255, stored as a float32 [8, H/8, W/8]
array by np.save in 00000/img-mean-std-00000000.npy, ...; dataset.json keeps the
labels. mpnet-train samples mean + std * noise from them and normalises it as
EDM2 does (docs/datasets.md).)");
    p.section("Options")
        .value("--source", "PATH", "a folder (searched recursively) or a .zip of images; labels as\nfor convert", [&](const std::string& v) { o.source = v; })
        .value("--dest", "PATH", "the output: DIR (new or empty) or FILE.zip; written under a\ntemporary name and moved into place when complete",
               [&](const std::string& v) { o.dest = v; })
        .value("--vae", "FILE", "the autoencoder: diffusers' diffusion_pytorch_model.safetensors\nof stabilityai/sd-vae-ft-mse (the reference's default model)",
               [&](const std::string& v) { o.vae = v; })
        .value("--max-images", "N", "encode at most N images",
               [&](const std::string& v) { o.max_images = cli::parse_integer<int64_t>("--max-images", v, 1); })
        .flag("--quiet", "no progress line, only errors", [&] { o.quiet = true; });
    p.epilog(R"(Exit status: 0 on success, 1 on bad input, 2 on a command-line error.)");
    return p;
}

cli::Parser make_parser(Options& o) {
    cli::Parser p("mpnet-dataset convert --source PATH --dest PATH [options]",
                  R"(Converts a folder or zip of images into a training dataset: PNG files named
00000/img00000000.png, ... and a dataset.json with their labels, in a zip archive
(stored, like the reference's) or a folder. Images are taken in the order of their
sorted paths; labels come from the source's dataset.json or, for a folder without
one, from its top-level folder names (ImageNet's class folders). Crops and resizes
are the reference tool's, with Pillow's resampling, so the pixels are the same.)");
    p.section("Options")
        .value("--source", "PATH", "a folder (searched recursively) or a .zip of images",
               [&](const std::string& v) { o.source = v; })
        .value("--dest", "PATH", "the output: DIR (new or empty) or FILE.zip; written under a\ntemporary name and moved into place when complete",
               [&](const std::string& v) { o.dest = v; })
        .value("--max-images", "N", "convert at most N images",
               [&](const std::string& v) { o.max_images = cli::parse_integer<int64_t>("--max-images", v, 1); })
        .value("--transform", "MODE", "center-crop, center-crop-wide or center-crop-dhariwal (ImageNet as\nin the diffusion literature); needs --resolution",
               [&](const std::string& v) {
                   cli::as_usage_error([&] { (void)data::parse_transform(v); });
                   o.transform = v;
               })
        .value("--resolution", "WxH", "output size, e.g. 512x512 (default: the images' own)",
               [&](const std::string& v) {
                   static const std::regex pattern(R"((\d+)[x,](\d+))");
                   std::smatch m;
                   if (!std::regex_match(v, m, pattern)) throw UsageError("--resolution: expected WxH, got '" + v + "'");
                   o.width = cli::parse_integer<int>("--resolution", m[1].str(), 1, 1 << 15);
                   o.height = cli::parse_integer<int>("--resolution", m[2].str(), 1, 1 << 15);
               })
        .flag("--skip-bad", "leave out images that cannot be read (corrupt, truncated, another\nformat), each named on stderr, instead of stopping; their numbers\nstay unused, as center-crop-wide's skipped images' do",
              [&] { o.skip_bad = true; })
        .flag("--quiet", "no progress line", [&] { o.quiet = true; });
    p.epilog(R"(Exit status: 0 on success, 1 on bad input or a failed run, 2 on a command-line
error.)");
    return p;
}

Options parse_args(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
        if (argc >= 2) throw cli::HelpRequested{overview};
        throw UsageError("give a command: convert");
    }
    const std::string command = argv[1];
    if (command != "convert" && command != "encode")
        throw UsageError("unknown command '" + command + "' (convert, encode)");
    Options o;
    o.command = command;
    cli::Parser parser = command == "convert" ? make_parser(o) : make_encode_parser(o);
    parser.parse(argc - 1, argv + 1);
    if (command == "encode" && o.vae.empty()) throw UsageError("--vae is required");
    if (o.source.empty()) throw UsageError("--source is required");
    if (o.dest.empty()) throw UsageError("--dest is required");
    cli::as_usage_error([&] {
        check_transform(o.transform.empty() ? data::Transform::none : data::parse_transform(o.transform), o.width,
                        o.height);
    });
    return o;
}

// Where the converted files go: a zip archive, or a folder built under a temporary name and
// renamed into place at the end.
class Output {
public:
    explicit Output(const fs::path& dest) : dest_(dest) {
        std::error_code ec;
        if (dest.extension() == ".zip") {
            if (!dest.parent_path().empty()) fs::create_directories(dest.parent_path(), ec);
            zip_.emplace(dest);
            return;
        }
        check(!fs::exists(dest, ec) || (fs::is_directory(dest, ec) && fs::is_empty(dest, ec)), dest.string(),
              ": --dest folder must be new or empty");
        temp_ = io::detail::temp_path_for(dest.lexically_normal().string().ends_with('/')
                                              ? dest.lexically_normal().parent_path()
                                              : dest.lexically_normal());
        fs::create_directories(temp_, ec);
        check(!ec, temp_.string(), ": cannot create: ", ec.message());
    }
    Output(const Output&) = delete;
    Output& operator=(const Output&) = delete;
    ~Output() {
        std::error_code ec;
        if (!temp_.empty() && !finished_) fs::remove_all(temp_, ec);
    }

    void add(const std::string& name, std::span<const uint8_t> bytes) {
        if (zip_) return zip_->add(name, bytes);
        const fs::path path = temp_ / name;
        fs::create_directories(path.parent_path());
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
        check(bool(out.flush()), path.string(), ": write failed (disk full?)");
    }

    void finish() {
        if (zip_) return zip_->finish();
        std::error_code ec;
        if (fs::exists(dest_, ec)) fs::remove(dest_, ec);  // the empty folder checked at the start
        fs::rename(temp_, dest_, ec);
        check(!ec, dest_.string(), ": cannot move the finished folder into place: ", ec.message());
        finished_ = true;
    }

private:
    fs::path dest_, temp_;
    std::optional<io::ZipWriter> zip_;
    bool finished_ = false;
};

// dataset.json as Python's json.dumps writes it.
std::string dataset_json(const std::vector<std::pair<std::string, int64_t>>& labels, bool labelled) {
    if (!labelled) return R"({"labels": null})";
    std::string out = R"({"labels": [)";
    for (std::size_t i = 0; i < labels.size(); ++i)
        out += std::string(i ? ", " : "") + "[" + nlohmann::json(labels[i].first).dump() + ", " +
               std::to_string(labels[i].second) + "]";
    return out + "]}";
}

// The source's images and labels, checked to exist.
struct Source {
    data::FileTree tree;
    data::SourceImages images;
    int64_t total;
};

Source open_source(const Options& o) {
    std::error_code ec;
    const bool is_folder = fs::is_directory(o.source, ec);
    check(is_folder || fs::exists(o.source, ec), o.source, ": no such file or directory");
    check(is_folder || fs::path(o.source).extension() == ".zip", o.source, ": only folders and .zip archives are supported");
    data::FileTree tree(o.source);
    data::SourceImages images = data::list_source(tree, is_folder);
    const auto total = int64_t(std::min<std::size_t>(images.names.size(), std::size_t(o.max_images.value_or(INT64_MAX))));
    return {std::move(tree), std::move(images), total};
}

void encode(const Options& o) {
    const auto vae = vae::AutoencoderKL<float, CpuBackend>::load(o.vae);
    const Source src = open_source(o);
    const int64_t factor = vae.config().factor();
    Output out(o.dest);
    const cli::ImageProgress progress(o.quiet, src.total);
    std::vector<std::pair<std::string, int64_t>> labels;
    for (int64_t i = 0; i < src.total; ++i) {
        const std::string& name = src.images.names[std::size_t(i)];
        const std::string where = src.tree.describe(name);
        const io::Image img = data::read_rgb(src.tree.read(name), where);
        check(img.width % factor == 0 && img.height % factor == 0, where, ": ", img.width, "x", img.height,
              " is not a multiple of the autoencoder's ", factor, " pixels per latent");
        // [1, 3, H, W] valued 0..255, as the reference's torch.tensor(image).permute(2, 0, 1).
        CpuTensor<float> pixels(Shape{1, 3, img.height, img.width});
        const std::size_t plane = std::size_t(img.width) * std::size_t(img.height);
        for (std::size_t p = 0; p < plane; ++p)
            for (std::size_t c = 0; c < 3; ++c) pixels.data()[c * plane + p] = img.pixels[p * 3 + c];
        const auto latents = vae::encode_pixels(vae, pixels);  // [1, 8, H/8, W/8]: mean, std
        const std::vector<int64_t> shape{latents.size(1), latents.size(2), latents.size(3)};
        const auto bytes = data::npy_bytes(shape, std::span<const float>(latents.data(), std::size_t(latents.numel())));
        char digits[32];
        std::snprintf(digits, sizeof digits, "%08lld", static_cast<long long>(i));
        const std::string archive_name = std::string(digits).substr(0, 5) + "/img-mean-std-" + digits + ".npy";
        out.add(archive_name, bytes);
        labels.emplace_back(archive_name, src.images.labels ? (*src.images.labels)[std::size_t(i)] : -1);
        progress.update(i + 1);
    }
    const std::string json = dataset_json(labels, src.images.labels.has_value());
    out.add("dataset.json", std::span(reinterpret_cast<const uint8_t*>(json.data()), json.size()));
    out.finish();
}

void convert(const Options& o) {
    std::error_code ec;
    const bool is_folder = fs::is_directory(o.source, ec);
    check(is_folder || fs::exists(o.source, ec), o.source, ": no such file or directory");
    check(is_folder || fs::path(o.source).extension() == ".zip", o.source, ": only folders and .zip archives are supported");
    const data::FileTree tree(o.source);
    const data::SourceImages src = data::list_source(tree, is_folder);
    const auto total = int64_t(std::min<std::size_t>(src.names.size(), std::size_t(o.max_images.value_or(INT64_MAX))));
    const data::Transform transform = o.transform.empty() ? data::Transform::none : data::parse_transform(o.transform);

    Output out(o.dest);
    const cli::ImageProgress progress(o.quiet, total);
    std::vector<std::pair<std::string, int64_t>> labels;
    std::optional<std::pair<int, int>> shape;
    std::string first;
    int64_t skipped = 0;
    for (int64_t i = 0; i < total; ++i) {
        const std::string& name = src.names[std::size_t(i)];
        const std::string where = tree.describe(name);
        std::optional<io::Image> img;
        try {
            img = data::transform_image(data::read_rgb(tree.read(name), where), transform, o.width, o.height);
        } catch (const Error& e) {
            if (!o.skip_bad) throw;
            std::fprintf(stderr, "%smpnet-dataset: skipping %s\n", o.quiet ? "" : "\n", e.what());
            ++skipped;
        }
        progress.update(i + 1);
        if (!img) continue;  // unreadable (--skip-bad) or too small for center-crop-wide: its number stays unused
        char digits[32];
        std::snprintf(digits, sizeof digits, "%08lld", static_cast<long long>(i));
        const std::string archive_name = std::string(digits).substr(0, 5) + "/img" + digits + ".png";
        if (!shape) {
            shape.emplace(img->width, img->height);
            first = where;
            check(img->width == img->height, where, ": images after scale and crop must be square, got ", img->width,
                  "x", img->height, " (give --resolution, or a --transform)");
            check((img->width & (img->width - 1)) == 0, where, ": image size ", img->width,
                  " after scale and crop is not a power of two (give --resolution)");
        }
        check(*shape == std::pair(img->width, img->height), where, ": ", img->width, "x", img->height,
              " after scale and crop, but ", first, " gave ", shape->first, "x", shape->second,
              "; every image must have one size (give --resolution)");
        const std::vector<std::byte> png = io::encode_png_uncompressed(*img);  // as the reference stores them
        out.add(archive_name, std::span(reinterpret_cast<const uint8_t*>(png.data()), png.size()));
        labels.emplace_back(archive_name, src.labels ? (*src.labels)[std::size_t(i)] : -1);
    }
    check(shape.has_value(), o.source, ": no image was converted (",
          skipped ? "every one unreadable" : "center-crop-wide: all smaller than --resolution", ")");
    if (skipped) std::fprintf(stderr, "mpnet-dataset: %lld unreadable images left out\n", static_cast<long long>(skipped));
    const std::string json = dataset_json(labels, src.labels.has_value());
    out.add("dataset.json", std::span(reinterpret_cast<const uint8_t*>(json.data()), json.size()));
    out.finish();
}

}  // namespace

void run(const Options& o) {
    if (o.command == "encode") encode(o);
    else convert(o);
}

int main(int argc, char** argv) { return cli::run_main("mpnet-dataset", argc, argv, parse_args, run); }
