// Dataset readers and the batch loader: small datasets made here (PNG folders, zip archives,
// gzip'ed IDX files), every malformed input the readers must reject, Fashion-MNIST when
// installed, and the determinism of the data order across seeks and prefetch depths.
#include <doctest/doctest.h>
#include <stb_image_write.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/data/batch.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/data/fashion_mnist.hpp"
#include "mpnet/data/gzip_file.hpp"
#include "mpnet/data/idx.hpp"
#include "mpnet/data/image_folder.hpp"
#include "mpnet/data/latents.hpp"
#include "mpnet/data/load_dataset.hpp"
#include "mpnet/data/loader.hpp"
#include "mpnet/data/order.hpp"

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;
namespace data = mpnet::data;

namespace {

// A fresh directory per test, removed with everything in it afterwards.
struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("mpnet_datasets_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write_bytes(const fs::path& p, const Bytes& bytes) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                             static_cast<std::streamsize>(bytes.size()));
}

void write_text(const fs::path& p, const std::string& text) { write_bytes(p, Bytes(text.begin(), text.end())); }

Bytes read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Pixel values that differ between images, channels, rows and columns.
uint8_t pattern(int image, int c, int y, int x) { return static_cast<uint8_t>(image * 37 + c * 91 + y * 13 + x * 3); }

// An image as PNG bytes, pixels in HWC order as stb_image_write takes them.
Bytes png_bytes(int w, int h, int channels, int image) {
    Bytes hwc(static_cast<std::size_t>(w * h * channels));
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < channels; ++c) hwc[static_cast<std::size_t>((y * w + x) * channels + c)] = pattern(image, c, y, x);
    Bytes out;
    const auto append = [](void* context, void* bytes, int size) {
        auto* o = static_cast<Bytes*>(context);
        o->insert(o->end(), static_cast<uint8_t*>(bytes), static_cast<uint8_t*>(bytes) + size);
    };
    REQUIRE(stbi_write_png_to_func(append, &out, w, h, channels, hwc.data(), w * channels) != 0);
    return out;
}

// Writes {name: bytes} as a deflated zip archive; names ending in '/' become directory entries.
void write_zip(const fs::path& path, const std::map<std::string, Bytes>& members) {
    int code = 0;
    zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
    REQUIRE(z != nullptr);
    for (const auto& [name, bytes] : members) {
        if (name.back() == '/') {
            REQUIRE(zip_dir_add(z, name.c_str(), ZIP_FL_ENC_UTF_8) >= 0);
            continue;
        }
        zip_source_t* src = zip_source_buffer(z, bytes.data(), bytes.size(), 0);  // read at zip_close
        REQUIRE(src != nullptr);
        REQUIRE(zip_file_add(z, name.c_str(), src, ZIP_FL_ENC_UTF_8) >= 0);
    }
    REQUIRE(zip_close(z) == 0);
}

void write_gz(const fs::path& path, const Bytes& bytes) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
    REQUIRE(gzclose(f) == Z_OK);
}

Bytes idx_bytes(const std::vector<uint32_t>& dims, const Bytes& payload, uint8_t type = 0x08) {
    Bytes out = {0, 0, type, static_cast<uint8_t>(dims.size())};
    for (const uint32_t d : dims)
        for (const int shift : {24, 16, 8, 0}) out.push_back(static_cast<uint8_t>(d >> shift));
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
}

// A Fashion-MNIST-shaped split: n images of side x side, pixel pattern(i, 0, y, x), labels i % 10.
void write_mnist(const fs::path& dir, const std::string& split, uint32_t n, uint32_t side = 28) {
    Bytes pixels, labels;
    for (uint32_t i = 0; i < n; ++i) {
        labels.push_back(static_cast<uint8_t>(i % 10));
        for (uint32_t y = 0; y < side; ++y)
            for (uint32_t x = 0; x < side; ++x)
                pixels.push_back(pattern(static_cast<int>(i), 0, static_cast<int>(y), static_cast<int>(x)));
    }
    fs::create_directories(dir);
    write_gz(dir / (split + "-images-idx3-ubyte.gz"), idx_bytes({n, side, side}, pixels));
    write_gz(dir / (split + "-labels-idx1-ubyte.gz"), idx_bytes({n}, labels));
}

// Checks that `f` throws mpnet::Error whose message contains every one of `parts`.
template <class F>
void check_error(F&& f, std::initializer_list<std::string> parts) {
    try {
        f();
        FAIL("no error thrown; expected one mentioning '", *parts.begin(), "'");
    } catch (const mpnet::Error& e) {
        const std::string message = e.what();
        for (const std::string& part : parts) {
            INFO("message: ", message);
            CHECK(message.find(part) != std::string::npos);
        }
    }
}

// A labelled dataset of `n` gray side x side images, pixel (i, y, x) = pattern(i, 0, y, x).
data::Dataset synthetic(int64_t n, int64_t side, int64_t classes) {
    data::Dataset ds{.source = "synthetic", .size = n, .channels = 1, .resolution = side,
                     .num_classes = classes, .pixels = {}, .labels = {}, .reader = {}, .latent = false, .latent_values = {}, .bad_samples = {}};
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t y = 0; y < side; ++y)
            for (int64_t x = 0; x < side; ++x)
                ds.pixels.push_back(pattern(static_cast<int>(i), 0, static_cast<int>(y), static_cast<int>(x)));
        if (classes > 0) ds.labels.push_back(static_cast<int32_t>(i % classes));
    }
    return ds;
}

std::vector<data::Batch> take(data::Loader& loader, int count) {
    std::vector<data::Batch> out;
    for (int i = 0; i < count; ++i) out.push_back(loader.next());
    return out;
}

bool same(const data::Batch& a, const data::Batch& b) {
    return a.n == b.n && a.images == b.images && a.labels_onehot == b.labels_onehot && a.indices == b.indices;
}

}  // namespace

// ---- gzip and IDX -------------------------------------------------------------------

TEST_CASE("gzip reader: round trip, uncompressed pass-through, truncated and corrupt streams") {
    TempDir tmp;
    Bytes payload(100000);
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(i * 7919 % 251);
    write_gz(tmp.path / "a.gz", payload);
    CHECK(data::read_gzip_file(tmp.path / "a.gz") == payload);
    write_bytes(tmp.path / "plain", payload);
    CHECK(data::read_gzip_file(tmp.path / "plain") == payload);

    const Bytes gz = read_bytes(tmp.path / "a.gz");
    write_bytes(tmp.path / "cut.gz", Bytes(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(gz.size() / 2)));
    check_error([&] { (void)data::read_gzip_file(tmp.path / "cut.gz"); }, {"cut.gz", "truncated"});
    write_bytes(tmp.path / "notrailer.gz", Bytes(gz.begin(), gz.end() - 4));
    check_error([&] { (void)data::read_gzip_file(tmp.path / "notrailer.gz"); }, {"notrailer.gz", "truncated"});

    Bytes bad = gz;
    for (std::size_t i = 100; i < 120; ++i) bad[i] ^= 0x5A;
    write_bytes(tmp.path / "bad.gz", bad);
    check_error([&] { (void)data::read_gzip_file(tmp.path / "bad.gz"); }, {"bad.gz", "corrupt gzip"});
    check_error([&] { (void)data::read_gzip_file(tmp.path / "missing.gz"); }, {"missing.gz", "cannot open"});
}

TEST_CASE("IDX parser: dimensions, data and every malformed header") {
    const Bytes payload = {1, 2, 3, 4, 5, 6};
    const data::IdxArray a = data::parse_idx(idx_bytes({3, 2}, payload), 2, "f");
    CHECK(a.dims == std::vector<int64_t>{3, 2});
    CHECK(a.data == payload);

    check_error([&] { (void)data::parse_idx({0, 0}, 1, "f.idx"); }, {"f.idx", "too short"});
    check_error([&] { (void)data::parse_idx({1, 0, 8, 1, 0, 0, 0, 0}, 1, "f.idx"); }, {"f.idx", "magic"});
    check_error([&] { (void)data::parse_idx(idx_bytes({6}, payload, 0x0D), 1, "f.idx"); }, {"f.idx", "unsigned byte"});
    check_error([&] { (void)data::parse_idx(idx_bytes({6}, payload), 3, "f.idx"); }, {"f.idx", "1 dimensions, expected 3"});
    check_error([&] { (void)data::parse_idx(idx_bytes({4, 2}, payload), 2, "f.idx"); }, {"f.idx", "exceed"});
    check_error([&] { (void)data::parse_idx(idx_bytes({2, 2}, payload), 2, "f.idx"); }, {"f.idx", "6 bytes", "need 4"});
    check_error([&] { (void)data::parse_idx(idx_bytes({0, 2}, {}), 2, "f.idx"); }, {"f.idx", "zero"});
    check_error([&] { (void)data::parse_idx({0, 0, 8, 3, 0, 0}, 3, "f.idx"); }, {"f.idx", "truncated IDX header"});
    // Dimensions whose product overflows 64 bits are rejected against the bytes present.
    check_error([&] { (void)data::parse_idx(idx_bytes({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, payload), 3, "f.idx"); },
                {"f.idx", "exceed"});
}

// ---- Fashion-MNIST ------------------------------------------------------------------

TEST_CASE("Fashion-MNIST reader on generated IDX files: padding, labels, splits") {
    TempDir tmp;
    write_mnist(tmp.path, "train", 5);
    write_mnist(tmp.path, "t10k", 3);

    const data::Dataset ds = data::load_fashion_mnist(tmp.path);
    CHECK(ds.size == 5);
    CHECK(ds.channels == 1);
    CHECK(ds.resolution == 32);
    CHECK(ds.num_classes == 10);
    CHECK(ds.labels == std::vector<int32_t>{0, 1, 2, 3, 4});
    REQUIRE(ds.pixels.size() == 5u * 32 * 32);
    bool all_match = true;
    for (int i = 0; i < 5; ++i)
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x) {
                const bool inside = y >= 2 && y < 30 && x >= 2 && x < 30;
                const uint8_t want = inside ? pattern(i, 0, y - 2, x - 2) : 0;
                all_match &= ds.image(i)[y * 32 + x] == want;
            }
    CHECK(all_match);

    const data::Dataset test = data::load_fashion_mnist(tmp.path, false, 64);
    CHECK(test.size == 3);
    CHECK(test.resolution == 64);
    CHECK(test.image(2)[18 * 64 + 18] == pattern(2, 0, 0, 0));
    CHECK(test.image(2)[17 * 64 + 17] == 0);

    // An unpacked copy (no .gz) is read the same way.
    TempDir plain;
    fs::copy_file(tmp.path / "train-images-idx3-ubyte.gz", plain.path / "x.gz");
    write_bytes(plain.path / "train-images-idx3-ubyte", data::read_gzip_file(plain.path / "x.gz"));
    write_bytes(plain.path / "train-labels-idx1-ubyte", data::read_gzip_file(tmp.path / "train-labels-idx1-ubyte.gz"));
    CHECK(data::load_fashion_mnist(plain.path).pixels == ds.pixels);
}

TEST_CASE("Fashion-MNIST reader rejects bad files with the file and the cause") {
    TempDir tmp;
    const fs::path dir = tmp.path / "fm";
    write_mnist(dir, "train", 4);
    check_error([&] { (void)data::load_fashion_mnist(dir, true, 28); }, {"resolution 28 is not a power of two"});
    check_error([&] { (void)data::load_fashion_mnist(dir, true, 16); }, {"train-images-idx3-ubyte.gz", "do not fit"});
    check_error([&] { (void)data::load_fashion_mnist(dir, false); }, {"t10k-images-idx3-ubyte.gz", "no such file"});
    check_error([&] { (void)data::load_fashion_mnist(tmp.path / "nowhere"); }, {"nowhere", "no such directory"});

    const fs::path labels = dir / "train-labels-idx1-ubyte.gz";
    write_gz(labels, idx_bytes({3}, {0, 1, 2}));
    check_error([&] { (void)data::load_fashion_mnist(dir); }, {"train-labels-idx1-ubyte.gz", "3 labels", "4 images"});
    write_gz(labels, idx_bytes({4}, {0, 1, 10, 2}));
    check_error([&] { (void)data::load_fashion_mnist(dir); }, {"train-labels-idx1-ubyte.gz", "label 10"});
    // The labels file where the images file should be: wrong number of dimensions.
    fs::copy_file(labels, dir / "train-images-idx3-ubyte.gz", fs::copy_options::overwrite_existing);
    check_error([&] { (void)data::load_fashion_mnist(dir); }, {"train-images-idx3-ubyte.gz", "expected 3"});
    write_bytes(dir / "train-images-idx3-ubyte.gz", {'G', 'I', 'F', '8', '9', 'a', 0, 0, 0, 0});
    check_error([&] { (void)data::load_fashion_mnist(dir); }, {"train-images-idx3-ubyte.gz", "not an IDX file"});
    write_gz(dir / "train-images-idx3-ubyte.gz", idx_bytes({4, 28, 27}, Bytes(4 * 28 * 27)));
    check_error([&] { (void)data::load_fashion_mnist(dir); }, {"train-images-idx3-ubyte.gz", "not square"});

    write_mnist(dir, "train", 4);
    const Bytes gz = read_bytes(dir / "train-images-idx3-ubyte.gz");
    write_bytes(dir / "train-images-idx3-ubyte.gz", Bytes(gz.begin(), gz.end() - 50));
    check_error([&] { (void)data::load_fashion_mnist(dir); }, {"train-images-idx3-ubyte.gz", "truncated"});
}

TEST_CASE("Fashion-MNIST as Debian installs it") {
    if (!fs::exists(data::fashion_mnist_default_dir / "train-images-idx3-ubyte.gz")) {
        MESSAGE("dataset-fashion-mnist is not installed; skipped (the IDX reader is tested on generated files)");
        return;
    }
    const data::Dataset ds = data::load_dataset("fashion-mnist");
    CHECK(ds.size == 60000);
    CHECK(ds.resolution == 32);
    CHECK(ds.channels == 1);
    CHECK(ds.num_classes == 10);
    CHECK(std::vector<int32_t>(ds.labels.begin(), ds.labels.begin() + 10) ==
          std::vector<int32_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
    std::vector<int> counts(10);
    for (const int32_t l : ds.labels) ++counts[static_cast<std::size_t>(l)];
    CHECK(counts == std::vector<int>(10, 6000));
    CHECK(std::accumulate(ds.image(0), ds.image(1), 0) == 76247);  // the padding adds only zeros

    const data::Dataset test = data::load_fashion_mnist(data::fashion_mnist_default_dir, false);
    CHECK(test.size == 10000);
    CHECK(std::accumulate(test.image(0), test.image(1), 0) == 33456);
}

// ---- PNG folders and zip archives ---------------------------------------------------

TEST_CASE("image folder: nested PNGs sorted by path, CHW pixels, labels from dataset.json") {
    TempDir tmp;
    const fs::path dir = tmp.path / "ds";
    // Sorted order: a/b/deep.png, a/z.png, b.png, c.PNG (byte order of relative paths).
    const std::vector<std::string> names = {"b.png", "a/z.png", "a/b/deep.png", "c.PNG"};
    const std::map<std::string, int> image_of = {{"a/b/deep.png", 0}, {"a/z.png", 1}, {"b.png", 2}, {"c.PNG", 3}};
    for (const auto& name : names) write_bytes(dir / name, png_bytes(8, 8, 3, image_of.at(name)));
    write_text(dir / "notes.txt", "not an image");
    write_text(dir / "dataset.json",
               R"({"labels": [["b.png", 4], ["a/z.png", 0], ["a/b/deep.png", 2], ["c.PNG", 1]]})");

    const data::Dataset ds = data::load_image_folder(dir);
    CHECK(ds.source == dir.string());
    CHECK(ds.size == 4);
    CHECK(ds.channels == 3);
    CHECK(ds.resolution == 8);
    CHECK(ds.num_classes == 5);
    CHECK(ds.labels == std::vector<int32_t>{2, 0, 4, 1});
    bool all_match = true;
    for (int i = 0; i < 4; ++i)
        for (int c = 0; c < 3; ++c)
            for (int y = 0; y < 8; ++y)
                for (int x = 0; x < 8; ++x) all_match &= ds.image(i)[(c * 8 + y) * 8 + x] == pattern(i, c, y, x);
    CHECK(all_match);

    // The same files zipped (with directory entries) give the same dataset.
    std::map<std::string, Bytes> members = {{"a/", {}}, {"a/b/", {}}, {"notes.txt", {'x'}}};
    for (const auto& name : names) members[name] = read_bytes(dir / name);
    members["dataset.json"] = read_bytes(dir / "dataset.json");
    write_zip(tmp.path / "ds.zip", members);
    const data::Dataset zipped = data::load_dataset((tmp.path / "ds.zip").string());
    CHECK(zipped.pixels == ds.pixels);
    CHECK(zipped.labels == ds.labels);
    CHECK(zipped.num_classes == 5);
}

TEST_CASE("image folder: grayscale, unlabelled without dataset.json or with null labels") {
    TempDir tmp;
    for (int i = 0; i < 3; ++i) write_bytes(tmp.path / ("img" + std::to_string(i) + ".png"), png_bytes(4, 4, 1, i));
    data::Dataset ds = data::load_image_folder(tmp.path);
    CHECK(ds.size == 3);
    CHECK(ds.channels == 1);
    CHECK(ds.num_classes == 0);
    CHECK(ds.labels.empty());
    CHECK(ds.image(1)[3 * 4 + 2] == pattern(1, 0, 3, 2));

    write_text(tmp.path / "dataset.json", R"({"labels": null})");
    ds = data::load_image_folder(tmp.path);
    CHECK(ds.num_classes == 0);
    CHECK(ds.labels.empty());
}

TEST_CASE("load_dataset dispatches on the spec") {
    TempDir tmp;
    write_mnist(tmp.path / "fm", "train", 2);
    CHECK(data::load_dataset("fashion-mnist:" + (tmp.path / "fm").string()).size == 2);
    CHECK(data::load_dataset((tmp.path / "fm").string()).num_classes == 10);  // a directory of IDX files
    write_bytes(tmp.path / "png" / "x.png", png_bytes(2, 2, 1, 0));
    CHECK(data::load_dataset((tmp.path / "png").string()).resolution == 2);
    check_error([&] { (void)data::load_dataset((tmp.path / "missing").string()); }, {"missing", "no such file"});
    check_error([&] { (void)data::load_dataset("fashion-mnist:" + (tmp.path / "png").string()); },
                {"train-images-idx3-ubyte.gz", "no such file"});
}

TEST_CASE("image folder rejects empty, unreadable and corrupt inputs with the file and the cause") {
    TempDir tmp;
    const fs::path dir = tmp.path / "ds";
    const auto load = [](const fs::path& p) { return [p] { (void)data::load_image_folder(p); }; };

    check_error(load(tmp.path / "missing"), {"missing", "no such file or directory"});
    fs::create_directories(dir);
    check_error(load(dir), {dir.string(), "no PNG images"});
    write_text(dir / "dataset.json", R"({"labels": null})");
    check_error(load(dir), {dir.string(), "no PNG images"});

    SUBCASE("empty and corrupt zip archives") {
        write_zip(tmp.path / "only-json.zip", {{"dataset.json", {'{', '}'}}});
        check_error(load(tmp.path / "only-json.zip"), {"only-json.zip", "no PNG images"});
        Bytes empty_zip = {'P', 'K', 5, 6};
        empty_zip.resize(22);
        write_bytes(tmp.path / "empty.zip", empty_zip);
        check_error(load(tmp.path / "empty.zip"), {"empty.zip", "no PNG images"});
        write_text(tmp.path / "garbage.zip", std::string(1000, 'x'));
        check_error(load(tmp.path / "garbage.zip"), {"garbage.zip", "zip archive"});

        const Bytes png = png_bytes(16, 16, 3, 0);
        write_zip(tmp.path / "good.zip", {{"a.png", png}, {"b.png", png_bytes(16, 16, 3, 1)}});
        const Bytes zip = read_bytes(tmp.path / "good.zip");
        write_bytes(tmp.path / "cut.zip", Bytes(zip.begin(), zip.begin() + static_cast<std::ptrdiff_t>(zip.size() / 2)));
        check_error(load(tmp.path / "cut.zip"), {"cut.zip", "zip archive"});
        // Damage the first member's data, right after its local header.
        Bytes damaged = zip;
        const std::size_t data_at = 30 + damaged[26] + (damaged[27] << 8) + damaged[28] + (damaged[29] << 8);
        for (std::size_t i = data_at + 8; i < data_at + 24; ++i) damaged[i] ^= 0xFF;
        write_bytes(tmp.path / "damaged.zip", damaged);
        check_error(load(tmp.path / "damaged.zip"), {"damaged.zip:a.png", "corrupt"});
    }
    SUBCASE("unreadable file") {
        fs::create_symlink(tmp.path / "nothing-here.png", dir / "dangling.png");
        check_error(load(dir), {"dangling.png", "cannot read"});
        fs::remove(dir / "dangling.png");
        write_bytes(dir / "locked.png", png_bytes(4, 4, 1, 0));
        fs::permissions(dir / "locked.png", fs::perms::none);
        if (::geteuid() != 0)  // root reads the file anyway
            check_error(load(dir), {"locked.png", "cannot read"});
    }
    SUBCASE("corrupt PNGs") {
        const Bytes png = png_bytes(8, 8, 3, 0);
        write_bytes(dir / "a.png", png);
        write_text(dir / "b.png", "this is not a picture");
        check_error(load(dir), {"b.png", "not a PNG file"});
        write_bytes(dir / "b.png", Bytes(png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() - 20)));
        check_error(load(dir), {"b.png", "truncated PNG"});
        Bytes flipped = png;
        flipped[png.size() / 2] ^= 0x10;  // inside the compressed pixels: only the CRC notices
        write_bytes(dir / "b.png", flipped);
        check_error(load(dir), {"b.png", "CRC mismatch"});
        write_bytes(dir / "b.png", {});
        check_error(load(dir), {"b.png", "not a PNG file"});
    }
    SUBCASE("shapes: mixed sizes, mixed channels, non-square, alpha, not a power of two") {
        write_bytes(dir / "a.png", png_bytes(8, 8, 3, 0));
        write_bytes(dir / "b.png", png_bytes(16, 16, 3, 1));
        check_error(load(dir), {"b.png", "16x16", "a.png", "8x8", "same size"});
        write_bytes(dir / "b.png", png_bytes(8, 8, 1, 1));
        check_error(load(dir), {"b.png", "1 channels", "a.png", "3"});
        write_bytes(dir / "a.png", png_bytes(8, 4, 3, 0));
        check_error(load(dir), {"a.png", "8x4", "not square"});
        write_bytes(dir / "a.png", png_bytes(8, 8, 4, 0));
        check_error(load(dir), {"a.png", "4 channels", "alpha"});
        write_bytes(dir / "a.png", png_bytes(8, 8, 2, 0));
        check_error(load(dir), {"a.png", "2 channels"});
        write_bytes(dir / "a.png", png_bytes(12, 12, 1, 0));
        check_error(load(dir), {"a.png", "resolution 12 is not a power of two"});
    }
    SUBCASE("dataset.json that does not describe the images") {
        write_bytes(dir / "a.png", png_bytes(4, 4, 1, 0));
        write_bytes(dir / "sub" / "b.png", png_bytes(4, 4, 1, 1));
        const fs::path json = dir / "dataset.json";
        write_text(json, R"({"labels": [["a.png", 0], )");
        check_error(load(dir), {json.string(), "not valid JSON"});
        write_text(json, R"([1, 2])");
        check_error(load(dir), {json.string(), "\"labels\""});
        write_text(json, R"({"labels": [["a.png", 0], ["sub/b.png", 1], ["c.png", 1]]})");
        check_error(load(dir), {json.string(), "'c.png'", "not an image"});
        write_text(json, R"({"labels": [["a.png", 0]]})");
        check_error(load(dir), {json.string(), "no label for 'sub/b.png'", "1 labels for 2 images"});
        write_text(json, R"({"labels": [["a.png", 0], ["sub/b.png", -1]]})");
        check_error(load(dir), {json.string(), "'sub/b.png'", "negative"});
        write_text(json, R"({"labels": [["a.png", 0], ["sub/b.png", 1.5]]})");
        check_error(load(dir), {json.string(), "not an integer"});
        write_text(json, R"({"labels": [["a.png", 0], ["a.png", 1], ["sub/b.png", 1]]})");
        check_error(load(dir), {json.string(), "twice"});
        write_text(json, R"({"labels": [["a.png", 0], ["sub/b.png", 5000000000]]})");
        check_error(load(dir), {json.string(), "limit"});
        write_text(json, R"({"labels": [["a.png"], ["sub/b.png", 1]]})");
        check_error(load(dir), {json.string(), "labels[0]"});
        write_text(json, R"({"labels": [["a.png", 3], ["sub/b.png", 1]]})");
        CHECK(data::load_image_folder(dir).labels == std::vector<int32_t>{3, 1});
    }
}

// ---- data order and the loader ------------------------------------------------------

TEST_CASE("data order: every epoch a permutation, pure in (seed, epoch), different across epochs and seeds") {
    const auto p0 = data::epoch_permutation(1000, 7, 0);
    std::vector<int64_t> sorted = p0;
    std::ranges::sort(sorted);
    std::vector<int64_t> iota(1000);
    std::iota(iota.begin(), iota.end(), int64_t{0});
    CHECK(sorted == iota);
    CHECK(p0 == data::epoch_permutation(1000, 7, 0));
    CHECK(p0 != data::epoch_permutation(1000, 7, 1));
    CHECK(p0 != data::epoch_permutation(1000, 8, 0));
    CHECK(data::epoch_permutation(1, 7, 3) == std::vector<int64_t>{0});

    data::DataOrder order(1000, 7);
    const auto p2 = data::epoch_permutation(1000, 7, 2);
    CHECK(order.index_at(2000 + 17) == p2[17]);
    CHECK(order.index_at(5) == p0[5]);
}

TEST_CASE("loader: batches cross epochs, pixels in [-1, 1], one-hot labels") {
    const data::Dataset ds = synthetic(10, 4, 3);
    data::Loader loader(ds, 4, 1, false);
    const auto batches = take(loader, 5);  // 20 images: two whole epochs
    CHECK(loader.position() == 20);
    std::vector<int64_t> seen;
    for (const auto& b : batches) seen.insert(seen.end(), b.indices.begin(), b.indices.end());
    CHECK(std::vector<int64_t>(seen.begin(), seen.begin() + 10) == data::epoch_permutation(10, 1, 0));
    CHECK(std::vector<int64_t>(seen.begin() + 10, seen.end()) == data::epoch_permutation(10, 1, 1));

    const data::Batch& b = batches[1];
    REQUIRE(b.n == 4);
    REQUIRE(b.images.size() == 4u * 16);
    REQUIRE(b.labels_onehot.size() == 4u * 3);
    for (int64_t k = 0; k < 4; ++k) {
        const int64_t index = b.indices[static_cast<std::size_t>(k)];
        for (int p = 0; p < 16; ++p)
            CHECK(b.images[static_cast<std::size_t>(k * 16 + p)] == static_cast<float>(ds.image(index)[p]) / 127.5f - 1.0f);
        for (int c = 0; c < 3; ++c)
            CHECK(b.labels_onehot[static_cast<std::size_t>(k * 3 + c)] == (c == index % 3 ? 1.0f : 0.0f));
    }

    data::Dataset extremes = synthetic(1, 2, 0);
    extremes.pixels = {0, 255, 128, 1};
    data::Loader unlabelled(extremes, 1, 0, false);
    const data::Batch e = unlabelled.next();
    CHECK(e.labels_onehot.empty());
    CHECK(e.images == std::vector<float>{-1.0f, 1.0f, 128 / 127.5f - 1.0f, 1 / 127.5f - 1.0f});
}

TEST_CASE("loader: deterministic in the seed, exact after seek, independent of the prefetch depth") {
    const data::Dataset ds = synthetic(13, 4, 5);
    data::Loader a(ds, 5, 42, true, 1), b(ds, 5, 42, true, 8), c(ds, 5, 43, true);
    const auto ra = take(a, 12), rb = take(b, 12), rc = take(c, 12);
    bool equal = true, differs = false;
    for (std::size_t i = 0; i < ra.size(); ++i) {
        equal &= same(ra[i], rb[i]);
        differs |= !same(ra[i], rc[i]);
    }
    CHECK(equal);
    CHECK(differs);

    // Resume at a batch boundary and in the middle of a batch (a checkpoint after a batch of
    // another size): the images from the seek position on are the same.
    data::Loader r(ds, 5, 42, true);
    r.seek(35);
    CHECK(r.position() == 35);
    CHECK(same(r.next(), ra[7]));
    CHECK(r.position() == 40);
    r.seek(17);
    const data::Batch mid = r.next();
    const data::Batch& whole = ra[3];  // positions 15..19, then ra[4] holds 20..24
    CHECK(std::vector<int64_t>(mid.indices.begin(), mid.indices.begin() + 3) ==
          std::vector<int64_t>(whole.indices.begin() + 2, whole.indices.end()));
    CHECK(std::vector<int64_t>(mid.indices.begin() + 3, mid.indices.end()) ==
          std::vector<int64_t>(ra[4].indices.begin(), ra[4].indices.begin() + 2));
    CHECK(std::vector<float>(mid.images.begin(), mid.images.begin() + 3 * 16) ==
          std::vector<float>(whole.images.begin() + 2 * 16, whole.images.end()));
    r.seek(0);
    CHECK(same(r.next(), ra[0]));
}

TEST_CASE("loader: x-flip mirrors exactly the images the order says, about half of them") {
    const data::Dataset ds = synthetic(7, 4, 0);
    data::Loader flipped(ds, 7, 9, true), plain(ds, 7, 9, false);
    int count = 0, total = 0;
    for (int step = 0; step < 20; ++step) {
        const data::Batch f = flipped.next(), p = plain.next();
        CHECK(f.indices == p.indices);
        for (int64_t k = 0; k < 7; ++k) {
            const uint64_t position = static_cast<uint64_t>(step * 7 + k);
            const bool flip = data::flip_at(9, position);
            const uint8_t* src = ds.image(f.indices[static_cast<std::size_t>(k)]);
            bool ok = true, unflipped = true;
            for (int y = 0; y < 4; ++y)
                for (int x = 0; x < 4; ++x) {
                    const float value_f = f.images[static_cast<std::size_t>(k * 16 + y * 4 + x)];
                    const float value_p = p.images[static_cast<std::size_t>(k * 16 + y * 4 + x)];
                    ok &= value_f == static_cast<float>(src[y * 4 + (flip ? 3 - x : x)]) / 127.5f - 1.0f;
                    unflipped &= value_p == static_cast<float>(src[y * 4 + x]) / 127.5f - 1.0f;
                }
            CHECK(ok);
            CHECK(unflipped);
            count += flip;
            ++total;
        }
    }
    CHECK(count > total / 4);
    CHECK(count < 3 * total / 4);
}

TEST_CASE("loader: bad arguments, worker errors re-thrown, clean shutdown") {
    const data::Dataset ds = synthetic(4, 4, 2);
    check_error([&] { data::Loader l(ds, 0, 0, false); }, {"batch size 0"});
    check_error([&] { data::Loader l(ds, 2, 0, false, 0); }, {"prefetch"});
    data::Dataset broken = ds;
    broken.labels.pop_back();
    check_error([&] { data::Loader l(broken, 2, 0, false); }, {"3 labels for 4 images"});
    broken = ds;
    broken.labels[0] = 2;
    check_error([&] { data::Loader l(broken, 2, 0, false); }, {"label 2"});
    broken = synthetic(2, 6, 0);
    check_error([&] { data::Loader l(broken, 2, 0, false); }, {"resolution 6 is not a power of two"});

    {
        // A batch too large for a std::vector fails in the worker; next() reports it, every time.
        data::Loader huge(ds, int64_t{1} << 58, 0, false);  // 2^62 floats > max_size()
        CHECK_THROWS_AS(huge.next(), std::length_error);
        CHECK_THROWS_AS(huge.next(), std::length_error);
    }
    {
        data::Loader idle(ds, 2, 0, false, 2);  // destroyed with a full queue and a waiting worker
        (void)idle.next();
    }
    { data::Loader untouched(ds, 2, 0, false); }
}

// ---- streamed datasets --------------------------------------------------------------

namespace {

// 20 labelled RGB 8x8 images as a folder and as a zip.
std::pair<fs::path, fs::path> write_small_dataset(const fs::path& root) {
    std::map<std::string, Bytes> members;
    nlohmann::json labels = nlohmann::json::array();
    for (int i = 0; i < 20; ++i) {
        const std::string name = "img" + std::to_string(100 + i) + ".png";
        members[name] = png_bytes(8, 8, 3, i);
        labels.push_back({name, i % 3});
    }
    const std::string json = nlohmann::json{{"labels", labels}}.dump();
    members["dataset.json"] = Bytes(json.begin(), json.end());
    for (const auto& [name, bytes] : members) write_bytes(root / "folder" / name, bytes);
    write_zip(root / "data.zip", members);
    return {root / "folder", root / "data.zip"};
}

// AddressSanitizer keeps freed memory in quarantine and maps shadow memory: resident sizes
// then say nothing about the program's own use, and the memory checks only report.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool memory_is_measurable = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool memory_is_measurable = false;
#else
constexpr bool memory_is_measurable = true;
#endif
#else
constexpr bool memory_is_measurable = true;
#endif

// Resident memory of this process in MiB.
double resident_mib() {
    std::ifstream statm("/proc/self/statm");
    double total = 0, resident = 0;
    statm >> total >> resident;
    return resident * double(::sysconf(_SC_PAGESIZE)) / 1048576.0;
}

}  // namespace

TEST_CASE("streamed datasets: the batches of the in-memory dataset, from a folder and a zip, for any decode threads") {
    TempDir tmp;
    const auto [folder, zip] = write_small_dataset(tmp.path);
    for (const fs::path& source : {folder, zip}) {
        CAPTURE(source);
        const data::Dataset memory = data::load_dataset(source.string(), data::Storage::memory);
        const data::Dataset automatic = data::load_dataset(source.string());
        const data::Dataset streamed = data::load_dataset(source.string(), data::Storage::stream);
        CHECK(!memory.streamed());
        CHECK(!automatic.streamed());  // 3.75 KiB of pixels: far below the limit
        CHECK(streamed.streamed());
        CHECK(streamed.pixels.empty());
        CHECK(streamed.labels == memory.labels);
        CHECK(streamed.num_classes == 3);
        CHECK(streamed.resolution == 8);
        CHECK(streamed.channels == 3);
        std::vector<uint8_t> pixels(streamed.image_bytes());
        streamed.read_image(7, pixels.data());
        CHECK(std::equal(pixels.begin(), pixels.end(), memory.image(7)));
        for (int threads : {1, 3}) {
            CAPTURE(threads);
            data::Loader a(memory, 6, 3, true), b(streamed, 6, 3, true, 2, {}, threads);
            const auto want = take(a, 8), got = take(b, 8);  // 48 images: across two epochs
            for (std::size_t i = 0; i < want.size(); ++i) CHECK(same(want[i], got[i]));
        }
    }
}

TEST_CASE("streamed datasets: a bounded cache of decoded images changes no batch, and serves the later epochs") {
    TempDir tmp;
    const auto [folder, zip] = write_small_dataset(tmp.path);  // 20 images of 8x8x3
    const data::Dataset memory = data::load_dataset(zip.string(), data::Storage::memory);
    for (const std::size_t cache_images : {std::size_t(20), std::size_t(3)}) {
        CAPTURE(cache_images);
        const data::Dataset streamed =
            data::load_dataset(zip.string(), data::Storage::stream, nullptr, cache_images * memory.image_bytes());
        const auto* cache = data::CachedReader::of(streamed);
        REQUIRE(cache);
        data::Loader a(memory, 5, 9, true), b(streamed, 5, 9, true, 2, {}, 3);
        for (int batch = 0; batch < 16; ++batch) CHECK(same(a.next(), b.next()));  // four epochs
        const auto stats = cache->stats();
        CHECK(stats.samples <= cache_images);
        CHECK(stats.bytes <= cache_images * memory.image_bytes());
        CHECK(stats.hits + stats.misses >= 80);
        if (cache_images == 20) CHECK(stats.misses == 20);  // each image decoded once, then served
        else CHECK(stats.misses > 40);
    }
    CHECK_FALSE(data::CachedReader::of(data::load_dataset(zip.string(), data::Storage::stream)));  // none unless asked
}

TEST_CASE("streamed datasets: a corrupt or mis-shaped image stops the batch that reaches it, naming the file") {
    TempDir tmp;
    const fs::path dir = tmp.path / "ds";
    const Bytes good = png_bytes(8, 8, 3, 0);
    write_bytes(dir / "a.png", good);
    SUBCASE("corrupt") {
        Bytes flipped = png_bytes(8, 8, 3, 1);
        flipped[flipped.size() / 2] ^= 0x10;
        write_bytes(dir / "b.png", flipped);
        const data::Dataset ds = data::load_image_folder(dir, data::Storage::stream);  // opening reads a.png alone
        data::Loader loader(ds, 2, 0, false);
        check_error([&] { (void)loader.next(); }, {"b.png", "CRC mismatch"});
    }
    SUBCASE("another size") {
        write_bytes(dir / "b.png", png_bytes(16, 16, 3, 1));
        const data::Dataset ds = data::load_image_folder(dir, data::Storage::stream);
        std::vector<uint8_t> pixels(ds.image_bytes());
        check_error([&] { ds.read_image(1, pixels.data()); }, {"b.png", "16x16", "a.png", "8x8", "same size"});
    }
    SUBCASE("a member that went missing") {
        write_bytes(dir / "b.png", good);
        const data::Dataset ds = data::load_image_folder(dir, data::Storage::stream);
        fs::remove(dir / "b.png");
        std::vector<uint8_t> pixels(ds.image_bytes());
        check_error([&] { ds.read_image(1, pixels.data()); }, {"b.png", "cannot read"});
    }
}

TEST_CASE("--skip-bad: a bad sample is replaced by the next readable one, image and label, in memory as streamed") {
    TempDir tmp;
    const fs::path dir = tmp.path / "ds";
    nlohmann::json labels = nlohmann::json::array();
    for (int i = 0; i < 6; ++i) {
        const std::string name = std::string(1, char('a' + i)) + ".png";
        Bytes bytes = png_bytes(8, 8, 3, i);
        if (i == 0 || i == 2) bytes[bytes.size() / 2] ^= 0x10;  // corrupt: a.png, the first, and c.png
        if (i == 4) bytes = png_bytes(16, 16, 3, i);             // another size: e.png
        write_bytes(dir / name, bytes);
        labels.push_back({name, i % 3});
    }
    std::ofstream(dir / "dataset.json") << nlohmann::json{{"labels", labels}}.dump();
    // The good images alone, as the stand-ins' expected pixels.
    write_bytes(tmp.path / "b" / "b.png", png_bytes(8, 8, 3, 1));
    write_bytes(tmp.path / "d" / "d.png", png_bytes(8, 8, 3, 3));
    write_bytes(tmp.path / "f" / "f.png", png_bytes(8, 8, 3, 5));
    const data::Dataset b = data::load_image_folder(tmp.path / "b"), d = data::load_image_folder(tmp.path / "d"),
                        f = data::load_image_folder(tmp.path / "f");

    check_error([&] { (void)data::load_image_folder(dir, data::Storage::memory); }, {"a.png", "CRC mismatch"});
    std::vector<std::string> reports;
    std::mutex reports_mutex;
    auto skipping = [&] {
        return std::make_shared<data::BadSamples>([&](const std::string& m) {
            const std::lock_guard lock(reports_mutex);
            reports.push_back(m);
        });
    };
    const data::Dataset memory = data::load_image_folder(dir, data::Storage::memory, skipping());
    REQUIRE(reports.size() == 3);
    CHECK(reports[0].find("a.png") != std::string::npos);
    CHECK(reports[1].find("c.png") != std::string::npos);
    CHECK(reports[2].find("e.png") != std::string::npos);
    CHECK(memory.bad_samples->count() == 3);
    // a -> b, c -> d, e -> f, each with the label of the image that stands in for it.
    CHECK(memory.labels == std::vector<int32_t>{1, 1, 0, 0, 2, 2});
    for (const auto& [index, standin] : std::vector<std::pair<int, const data::Dataset*>>{{0, &b}, {2, &d}, {4, &f}})
        CHECK(std::equal(standin->pixels.begin(), standin->pixels.end(), memory.image(index)));

    reports.clear();
    const data::Dataset streamed = data::load_image_folder(dir, data::Storage::stream, skipping());
    for (int threads : {1, 3}) {
        data::Loader a(memory, 4, 7, true), c(streamed, 4, 7, true, 2, {}, threads);
        for (int batch = 0; batch < 6; ++batch) {  // four epochs
            const auto want = a.next(), got = c.next();
            CHECK(got.images == want.images);
            CHECK(got.labels_onehot == want.labels_onehot);
            for (const int64_t i : got.indices) CHECK((i == 1 || i == 3 || i == 5));
        }
    }
    CHECK(reports.size() == 3);  // each bad file reported once, whatever the threads and epochs
    CHECK(streamed.bad_samples->count() == 3);

    for (const char* name : {"b.png", "d.png", "e.png", "f.png"}) write_bytes(dir / name, Bytes{1, 2, 3});
    check_error([&] { (void)data::load_image_folder(dir, data::Storage::memory, skipping()); },
                {"no sample can be read (every one of the 6 is bad)"});
}

TEST_CASE("streamed datasets: 200 000 images in a zip train in the memory of 2 000 plus their index, not growing") {
    TempDir tmp;
    // 64x64 grayscale images (800 MB decoded), a few distinct contents sharing buffers.
    constexpr int count = 200000, side = 64;
    std::vector<Bytes> variants;
    for (int v = 0; v < 4; ++v) {
        Bytes hw(side * side);
        for (int p = 0; p < side * side; ++p) hw[std::size_t(p)] = uint8_t(v * 50 + (p / side) / 8 * 8);
        Bytes png;
        const auto append = [](void* context, void* bytes, int size) {
            auto* o = static_cast<Bytes*>(context);
            o->insert(o->end(), static_cast<uint8_t*>(bytes), static_cast<uint8_t*>(bytes) + size);
        };
        REQUIRE(stbi_write_png_to_func(append, &png, side, side, 1, hw.data(), side) != 0);
        variants.push_back(std::move(png));
    }
    const fs::path zip_path = tmp.path / "big.zip";
    {
        int code = 0;
        zip_t* z = zip_open(zip_path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
        REQUIRE(z != nullptr);
        char name[32];
        for (int i = 0; i < count; ++i) {
            std::snprintf(name, sizeof name, "%05d/img%08d.png", i / 1000, i);
            const Bytes& png = variants[std::size_t(i % 4)];
            zip_source_t* src = zip_source_buffer(z, png.data(), png.size(), 0);
            REQUIRE(src != nullptr);
            const zip_int64_t at = zip_file_add(z, name, src, ZIP_FL_ENC_UTF_8);
            REQUIRE(at >= 0);
            REQUIRE(zip_set_file_compression(z, zip_uint64_t(at), ZIP_CM_STORE, 0) == 0);  // PNG is compressed already
        }
        REQUIRE(zip_close(z) == 0);
    }
    const data::Dataset streamed = data::load_dataset(zip_path.string(), data::Storage::stream);
    REQUIRE(streamed.size == count);
    data::Loader loader(streamed, 64, 1, true, 4, {}, 2);
    auto consume = [&](int batches) {  // one batch at a time, as the trainer does
        for (int i = 0; i < batches; ++i) (void)loader.next();
    };
    consume(20);
    const double after_20 = resident_mib();
    consume(200);  // 12 800 images more
    const double after_220 = resident_mib();
    MESSAGE("200 000 64x64 images (781 MiB decoded), streamed: 200 more batches of 64 +" << (after_220 - after_20)
                                                                                       << " MiB resident");
    if (memory_is_measurable) CHECK(after_220 - after_20 < 16);  // no growth with the images seen
#ifdef MPNET_TRAIN_EXE
    // The trainer on the 200 000 images and on 2 000 of them: the same resident memory but for
    // the file list. (A zip of 2 000 made from the first members of the same content.)
    {
        int code = 0;
        zip_t* z = zip_open((tmp.path / "small.zip").c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
        REQUIRE(z != nullptr);
        char name[32];
        for (int i = 0; i < 2000; ++i) {
            std::snprintf(name, sizeof name, "%05d/img%08d.png", i / 1000, i);
            const Bytes& png = variants[std::size_t(i % 4)];
            REQUIRE(zip_file_add(z, name, zip_source_buffer(z, png.data(), png.size(), 0), ZIP_FL_ENC_UTF_8) >= 0);
        }
        REQUIRE(zip_close(z) == 0);
    }
    double rss[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
        const fs::path data = tmp.path / (k == 0 ? "small.zip" : "big.zip"), out = tmp.path / ("run" + std::to_string(k));
        const std::string cmd = "OMP_NUM_THREADS=1 " + std::string(MPNET_TRAIN_EXE) + " --outdir " + out.string() +
                                " --data " + data.string() +
                                " --data-storage stream --cond false --preset fmnist-xs --batch 8 --duration 48 "
                                "--status 8 --checkpoint 1M --snapshot 1M --quiet";
        REQUIRE(std::system(cmd.c_str()) == 0);
        std::ifstream stats(out / "stats.jsonl");
        for (std::string line; std::getline(stats, line);) rss[k] = nlohmann::json::parse(line).at("rss_mb").get<double>();
    }
    MESSAGE("mpnet-train, streamed, resident memory after 6 steps: 2 000 images " << rss[0] << " MB, 200 000 images "
                                                                                 << rss[1] << " MB");
    CHECK(rss[0] > 0);
    // The index of 198 000 more images (their names, twice, and libzip's directory entries:
    // about 0.4 KiB per image); their decoded pixels would be 773 MiB.
    if (memory_is_measurable) CHECK(rss[1] - rss[0] < 100);
#endif
}

// ---- latent datasets ----------------------------------------------------------------

namespace {

// A float32 array as np.save writes it (format 1.0, header padded to 64 bytes).
Bytes npy_bytes(const std::vector<int64_t>& shape, const std::vector<float>& values) {
    std::string dims;
    for (const int64_t d : shape) dims += std::to_string(d) + ", ";
    if (shape.size() > 1) dims.resize(dims.size() - 1);  // "(8, 8, 8)"; one dimension keeps its comma
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    header.resize(((10 + header.size() + 1 + 63) / 64) * 64 - 10 - 1, ' ');
    header += '\n';
    Bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, uint8_t(header.size()), uint8_t(header.size() >> 8)};
    out.insert(out.end(), header.begin(), header.end());
    const auto* p = reinterpret_cast<const uint8_t*>(values.data());
    out.insert(out.end(), p, p + values.size() * sizeof(float));
    return out;
}

// n latents [8, R, R] named as the reference's encode names them, mean(i, c, y, x) and std given.
std::map<std::string, Bytes> latent_members(int n, int res, const std::function<float(int, int, int)>& mean,
                                            const std::function<float(int, int, int)>& stdev) {
    std::map<std::string, Bytes> members;
    nlohmann::json labels = nlohmann::json::array();
    for (int i = 0; i < n; ++i) {
        std::vector<float> v;
        for (int c = 0; c < 8; ++c)
            for (int p = 0; p < res * res; ++p) v.push_back(c < 4 ? mean(i, c, p) : stdev(i, c - 4, p));
        char name[64];
        std::snprintf(name, sizeof name, "00000/img-mean-std-%08d.npy", i);
        members[name] = npy_bytes({8, res, res}, v);
        labels.push_back({name, i % 2});
    }
    const std::string json = nlohmann::json{{"labels", labels}}.dump();
    members["dataset.json"] = Bytes(json.begin(), json.end());
    return members;
}

}  // namespace

TEST_CASE("latent datasets: .npy posteriors drawn as mean + noise * std and normalised, in memory and streamed") {
    TempDir tmp;
    const auto norm = data::stability_vae_normalization();
    // The reference's constants: scale = 0.5 / raw_std, bias = -raw_mean * scale (float32).
    CHECK(norm.scale[0] == 0.5f / 4.17f);
    CHECK(norm.bias[3] == 0.0f - -2.15f * (0.5f / 3.28f));
    SUBCASE("std 0: the batch is the normalised mean, pixel for pixel, flipped where the order says") {
        auto mean = [](int i, int c, int p) { return float(i * 100 + c * 10) + float(p) * 0.25f; };
        write_zip(tmp.path / "l.zip", latent_members(6, 8, mean, [](int, int, int) { return 0.0f; }));
        const data::Dataset ds = data::load_dataset((tmp.path / "l.zip").string());
        REQUIRE(ds.latent);
        CHECK(ds.channels == 4);
        CHECK(ds.resolution == 8);
        CHECK(ds.num_classes == 2);
        data::Loader loader(ds, 3, 5, true);
        data::DataOrder order(6, 5);
        for (int batch = 0; batch < 4; ++batch) {
            const auto b = loader.next();
            for (int k = 0; k < 3; ++k) {
                const uint64_t position = uint64_t(batch * 3 + k);
                const int i = int(order.index_at(position));
                const bool flip = order.flip(position);
                bool all = true;
                for (int c = 0; c < 4; ++c)
                    for (int y = 0; y < 8; ++y)
                        for (int x = 0; x < 8; ++x) {
                            const float m = mean(i, c, y * 8 + (flip ? 7 - x : x));
                            all &= b.images[std::size_t(((k * 4 + c) * 8 + y) * 8 + x)] ==
                                   data::final_latent(m, 0.0f, 0.0f, norm.scale[std::size_t(c)], norm.bias[std::size_t(c)]);
                        }
                CHECK(all);
            }
        }
    }
    SUBCASE("mean 0, std 1: the normalised noise has the normalisation's mean and spread; streamed is the same") {
        write_zip(tmp.path / "n.zip", latent_members(16, 16, [](int, int, int) { return 0.0f; }, [](int, int, int) { return 1.0f; }));
        const data::Dataset ds = data::load_dataset((tmp.path / "n.zip").string());
        const data::Dataset streamed = data::load_dataset((tmp.path / "n.zip").string(), data::Storage::stream);
        CHECK(!ds.streamed());
        CHECK(streamed.streamed());
        data::Loader a(ds, 16, 1, false), b(streamed, 16, 1, false, 2, {}, 2);
        const auto batch = a.next();
        CHECK(same(batch, b.next()));
        for (int c = 0; c < 4; ++c) {
            double sum = 0, sq = 0;
            for (int k = 0; k < 16; ++k)
                for (int p = 0; p < 256; ++p) {
                    const double v = batch.images[std::size_t((k * 4 + c) * 256 + p)];
                    sum += v, sq += v * v;
                }
            const double m = sum / 4096, s = std::sqrt(sq / 4096 - m * m);
            CHECK(std::abs(m - norm.bias[std::size_t(c)]) < 0.05 * norm.scale[std::size_t(c)]);  // 3 standard errors
            CHECK(s == doctest::Approx(norm.scale[std::size_t(c)]).epsilon(0.05));
        }
    }
    SUBCASE("bad latents are named") {
        auto members = latent_members(2, 8, [](int, int, int) { return 0.0f; }, [](int, int, int) { return 1.0f; });
        members["00000/img-mean-std-00000001.npy"] = npy_bytes({8, 4, 4}, std::vector<float>(128));
        write_zip(tmp.path / "shapes.zip", members);
        check_error([&] { (void)data::load_dataset((tmp.path / "shapes.zip").string(), data::Storage::memory); },
                    {"img-mean-std-00000001.npy", "another shape"});
        const data::Dataset lazy = data::load_dataset((tmp.path / "shapes.zip").string(), data::Storage::stream);
        std::vector<float> out(lazy.latent_floats());
        check_error([&] { lazy.read_latent(1, out.data()); }, {"img-mean-std-00000001.npy", "another shape"});
        write_zip(tmp.path / "six.zip", {{"a.npy", npy_bytes({6, 8, 8}, std::vector<float>(384))}});
        check_error([&] { (void)data::load_dataset((tmp.path / "six.zip").string()); }, {"a.npy", "latents of 3 channels"});
        write_zip(tmp.path / "flat.zip", {{"a.npy", npy_bytes({8, 64}, std::vector<float>(512))}});
        check_error([&] { (void)data::load_dataset((tmp.path / "flat.zip").string()); }, {"a.npy", "[2C, R, R]"});
        Bytes cut = npy_bytes({8, 8, 8}, std::vector<float>(512));
        cut.resize(cut.size() - 10);
        write_zip(tmp.path / "cut.zip", {{"a.npy", cut}});
        check_error([&] { (void)data::load_dataset((tmp.path / "cut.zip").string()); }, {"a.npy", "truncated"});
    }
}

TEST_CASE("--skip-bad: a corrupt latent .npy is replaced the same way in memory and streamed") {
    TempDir tmp;
    auto members = latent_members(6, 8, [](int i, int c, int p) { return float(i * 100 + c * 10 + p); },
                                  [](int, int, int) { return 0.5f; });
    members["00000/img-mean-std-00000002.npy"] = Bytes{0x93, 'N', 'U', 'M'};  // truncated
    write_zip(tmp.path / "l.zip", members);
    const std::string zip = (tmp.path / "l.zip").string();
    check_error([&] { (void)data::load_dataset(zip, data::Storage::memory); }, {"img-mean-std-00000002.npy"});
    const auto memory = data::load_dataset(zip, data::Storage::memory, std::make_shared<data::BadSamples>());
    const auto streamed = data::load_dataset(zip, data::Storage::stream, std::make_shared<data::BadSamples>());
    CHECK(memory.labels[2] == memory.labels[3]);
    data::Loader a(memory, 4, 1, false), b(streamed, 4, 1, false, 2, {}, 2);
    for (int batch = 0; batch < 6; ++batch) {
        const auto want = a.next(), got = b.next();
        CHECK(got.images == want.images);
        CHECK(got.labels_onehot == want.labels_onehot);
        CHECK(std::ranges::find(got.indices, 2) == got.indices.end());
    }
    CHECK(memory.bad_samples->count() == 1);
    CHECK(streamed.bad_samples->count() == 1);
}
