// mpnet-dataset against the reference dataset_tool.py (tests/data/dataset_tool.safetensors,
// made by scripts/dataset_tool_golden.py): Pillow's resize for each filter the tool uses, and
// whole conversions of a source of every kind of PNG and JPEG with each --transform, which must give
// the reference's file names, dataset.json and pixels exactly (uint8: no tolerance). Also the
// stored-zip writer (ZIP64 beyond 65 535 members) read back by libzip, and bad input.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "mpnet/data/dataset_tool.hpp"
#include "mpnet/data/file_tree.hpp"
#include "mpnet/data/npy.hpp"
#include "mpnet/data/png_image.hpp"
#include "mpnet/io/resample.hpp"
#include "mpnet/io/safetensors.hpp"
#include "mpnet/io/zip_writer.hpp"
#include "scratch_dir.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

const io::SafetensorsFile& golden() {
    static const io::SafetensorsFile f = io::SafetensorsFile::open(fs::path(MPNET_TEST_DATA) / "dataset_tool.safetensors");
    return f;
}

io::Image image_of(const std::string& name) {
    const auto& info = golden().info(name);
    REQUIRE(info.shape.size() == 3);
    io::Image img(int(info.shape[1]), int(info.shape[0]), int(info.shape[2]));
    golden().read_into(name, std::span<uint8_t>(img.pixels));
    return img;
}

fs::path fresh_dir(const std::string& name) {
    return testing::fresh_dir("mpnet-test-dataset-tool", name);
}

void write_file(const fs::path& path, std::span<const uint8_t> bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// The golden source files, written under `dir`; their relative names.
std::vector<std::string> write_sources(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& t : golden().tensors())
        if (t.name.starts_with("source/")) {
            const std::string rel = t.name.substr(7);
            write_file(dir / rel, golden().read<uint8_t>(t.name));
            names.push_back(rel);
        }
    return names;
}

int differing_pixels(const io::Image& a, const io::Image& b) {
    if (a.width != b.width || a.height != b.height || a.channels != b.channels) return -1;
    int n = 0;
    for (std::size_t i = 0; i < a.pixels.size(); ++i) n += a.pixels[i] != b.pixels[i];
    return n;
}

struct Outcome {
    int exit_code = -1;
    std::string output;
};

Outcome run_tool(const std::string& args) {
    const fs::path out = testing::scratch_path("mpnet-test-dataset-tool", "output.txt");
    const std::string cmd = std::string(MPNET_DATASET_EXE) + " " + args + " > " + out.string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    Outcome r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, {}};
    std::ifstream in(out);
    r.output.assign(std::istreambuf_iterator<char>(in), {});
    fs::remove(out);
    return r;
}

}  // namespace

TEST_CASE("dataset tool: resize equals Pillow's Image.resize bit for bit, Lanczos, bicubic and box, down and up") {
    const io::Image input = image_of("resize/input");
    const auto keys = nlohmann::json::parse(golden().metadata_or("resizes", "[]"));
    REQUIRE(keys.size() == 15);
    for (const auto& key : keys) {
        const std::string k = key.get<std::string>();
        CAPTURE(k);
        const io::Image want = image_of(k);
        const io::Filter f = k.find("lanczos") != std::string::npos   ? io::Filter::lanczos
                             : k.find("bicubic") != std::string::npos ? io::Filter::bicubic
                                                                      : io::Filter::box;
        CHECK(differing_pixels(io::resize(input, want.width, want.height, f), want) == 0);
    }
}

#ifdef MPNET_DATASET_EXE
TEST_CASE("dataset tool: convert gives the reference's names, labels and pixels for every transform") {
    const fs::path root = fresh_dir("convert");
    const auto sources = write_sources(root / "source");
    {
        // The zip source: the same files with a dataset.json of its own labels.
        io::ZipWriter z(root / "source.zip");
        for (const auto& rel : sources) z.add(rel, golden().read<uint8_t>("source/" + rel));
        const std::string json = golden().metadata_or("zip_dataset_json", "");
        z.add("dataset.json", std::span(reinterpret_cast<const uint8_t*>(json.data()), json.size()));
        z.finish();
    }
    const auto runs = nlohmann::json::parse(golden().metadata_or("runs", "[]"));
    REQUIRE(runs.size() == 6);
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& run = runs[k];
        const fs::path dest = root / ("out" + std::to_string(k) + (k % 2 ? ".zip" : ""));  // zips and folders
        std::string args = "convert --quiet --source " + (root / (run["source"] == "zip" ? "source.zip" : "source")).string() +
                           " --dest " + dest.string() + " --resolution " + std::to_string(run["resolution"][0].get<int>()) +
                           "x" + std::to_string(run["resolution"][1].get<int>());
        if (!run["transform"].get<std::string>().empty()) args += " --transform " + run["transform"].get<std::string>();
        if (run["max_images"].get<int>() > 0) args += " --max-images " + std::to_string(run["max_images"].get<int>());
        CAPTURE(args);
        const Outcome r = run_tool(args);
        INFO(r.output);
        REQUIRE(r.exit_code == 0);

        const data::FileTree out(dest);
        std::vector<std::string> names;
        for (const auto& n : out.files())
            if (n.ends_with(".png")) names.push_back(n);
        CHECK(names == run["names"].get<std::vector<std::string>>());
        const auto json = out.read("dataset.json");
        CHECK(std::string(json.begin(), json.end()) == run["dataset_json"].get<std::string>());

        const auto& info = golden().info("run" + std::to_string(k));
        REQUIRE(info.shape.size() == 4);
        REQUIRE(size_t(info.shape[0]) == names.size());
        const std::vector<uint8_t> want = golden().read<uint8_t>("run" + std::to_string(k));
        const std::size_t per_image = std::size_t(info.shape[1] * info.shape[2] * info.shape[3]);
        for (std::size_t i = 0; i < names.size(); ++i) {
            CAPTURE(names[i]);
            const auto bytes = out.read(names[i]);
            const data::ImageInfo png = data::png_info(bytes, names[i]);
            CHECK(png.channels == 3);
            const auto chw = data::decode_png_chw(bytes, png, names[i]);
            int differing = 0;
            for (int64_t c = 0; c < 3; ++c)
                for (int64_t p = 0; p < info.shape[1] * info.shape[2]; ++p)
                    differing += chw[std::size_t(c * info.shape[1] * info.shape[2] + p)] != want[i * per_image + std::size_t(p * 3 + c)];
            CHECK(differing == 0);
        }
    }
}

TEST_CASE("dataset tool: bad sources, destinations and options are named, and nothing half-written is left") {
    const fs::path root = fresh_dir("bad");
    write_sources(root / "source");
    const std::string src = " --source " + (root / "source").string();
    auto expect = [&](const std::string& args, const std::string& part, int code) {
        CAPTURE(args);
        const Outcome r = run_tool(args);
        CHECK(r.exit_code == code);
        CHECK(r.output.find(part) != std::string::npos);
        return r;
    };
    expect("", "give a command", 2);
    expect("shrink" + src, "unknown command 'shrink'", 2);
    expect("convert --dest x.zip", "--source is required", 2);
    expect("convert" + src + " --dest x.zip --transform center-crop", "--transform needs --resolution", 2);
    expect("convert" + src + " --dest x.zip --transform centre", "unknown transform 'centre'", 2);
    expect("convert" + src + " --dest x.zip --resolution 32", "expected WxH", 2);
    expect("convert" + src + " --dest x.zip --transform center-crop-dhariwal --resolution 32x16", "square", 2);
    // Without a resolution: a first image that is not square; squares of two sizes; a size that
    // is not a power of two.
    expect("convert" + src + " --dest " + (root / "a.zip").string(), "must be square", 1);
    write_file(root / "squares" / "a.png", golden().read<uint8_t>("source/cat/b_gray.png"));
    write_file(root / "squares" / "b.png", golden().read<uint8_t>("source/fish/f_small.png"));
    expect("convert --source " + (root / "squares").string() + " --dest " + (root / "a.zip").string(),
           "every image must have one size", 1);
    expect("convert" + src + " --dest " + (root / "b.zip").string() + " --resolution 24x24", "not a power of two", 1);
    CHECK(!fs::exists(root / "a.zip"));
    CHECK(!fs::exists(root / "b.zip"));
    // A corrupt image stops the run, naming the file; the folder destination is not created.
    auto bytes = golden().read<uint8_t>("source/cat/b_gray.png");
    bytes[bytes.size() / 2] ^= 0x20;
    write_file(root / "source" / "cat" / "b_gray.png", bytes);
    expect("convert" + src + " --dest " + (root / "c").string() + " --resolution 32x32", "b_gray.png", 1);
    CHECK(!fs::exists(root / "c"));
    // --skip-bad leaves it out, names it, and keeps its number unused.
    const Outcome skipped = expect("convert --skip-bad" + src + " --dest " + (root / "c").string() + " --resolution 32x32",
                                   "skipping " + (root / "source" / "cat" / "b_gray.png").string(), 0);
    CHECK(skipped.output.find("1 unreadable images left out") != std::string::npos);
    CHECK(fs::exists(root / "c" / "00000" / "img00000000.png"));
    CHECK(!fs::exists(root / "c" / "00000" / "img00000001.png"));  // cat/b_gray.png's number
    CHECK(fs::exists(root / "c" / "00000" / "img00000002.png"));   // cat/j_gray.jpg
    {
        const data::FileTree out(root / "c");
        std::size_t pngs = 0;
        for (const auto& n : out.files()) pngs += n.ends_with(".png");
        CHECK(pngs == 11);  // the 12 sources less the corrupt one
    }
    write_file(root / "source" / "cat" / "b_gray.png", golden().read<uint8_t>("source/cat/b_gray.png"));
    // Unsupported formats are refused rather than left out (the reference would read them).
    write_file(root / "source" / "cat" / "z.gif", std::vector<uint8_t>{'G', 'I', 'F', '8', '9', 'a'});
    expect("convert" + src + " --dest " + (root / "d.zip").string() + " --resolution 32x32", "z.gif: not a PNG or JPEG", 1);
    fs::remove(root / "source" / "cat" / "z.gif");
    // A truncated JPEG is refused, as Pillow refuses it.
    const auto jpeg = golden().read<uint8_t>("source/fish/i_photo.jpg");
    write_file(root / "source" / "fish" / "i_photo.jpg", std::vector<uint8_t>(jpeg.begin(), jpeg.begin() + std::ptrdiff_t(jpeg.size() / 2)));
    expect("convert" + src + " --dest " + (root / "e.zip").string() + " --resolution 32x32", "i_photo.jpg: corrupt JPEG (truncated", 1);
    write_file(root / "source" / "fish" / "i_photo.jpg", jpeg);
    // A folder destination must be new or empty.
    fs::create_directories(root / "full");
    write_file(root / "full" / "x", std::vector<uint8_t>{1});
    expect("convert" + src + " --dest " + (root / "full").string() + " --resolution 32x32", "new or empty", 1);
    CHECK(fs::exists(root / "full" / "x"));
    // Temporary files never stay behind.
    for (const auto& e : fs::directory_iterator(root)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}
#endif

TEST_CASE("dataset tool: the zip writer's archives, ZIP64 beyond 65 535 members included, read back with libzip") {
    const fs::path root = fresh_dir("zip");
    for (const int count : {3, 70000}) {
        CAPTURE(count);
        const fs::path path = root / ("a" + std::to_string(count) + ".zip");
        {
            io::ZipWriter z(path);
            for (int i = 0; i < count; ++i) {
                const std::string text = "member " + std::to_string(i);
                z.add("d" + std::to_string(i % 7) + "/m" + std::to_string(i),
                      std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
            }
            z.finish();
        }
        const data::FileTree tree(path);  // libzip, with its consistency checks
        REQUIRE(tree.files().size() == std::size_t(count));
        for (const int i : {0, count / 2, count - 1}) {
            const auto bytes = tree.read("d" + std::to_string(i % 7) + "/m" + std::to_string(i));
            CHECK(std::string(bytes.begin(), bytes.end()) == "member " + std::to_string(i));
        }
    }
    {
        io::ZipWriter unfinished(root / "never.zip");
        const std::string text = "x";
        unfinished.add("x", std::span(reinterpret_cast<const uint8_t*>(text.data()), 1));
    }
    CHECK(!fs::exists(root / "never.zip"));
    for (const auto& e : fs::directory_iterator(root)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("npy: NumPy's own files read back (float32, float16, float64, a 0-d array, format 2.0), bad ones named") {
    for (const char* name : {"latent_f4", "half_f2", "double_f8", "scalar_f4"}) {
        CAPTURE(name);
        const auto bytes = golden().read<uint8_t>(std::string("npy/") + name);
        const data::NpyArray a = data::parse_npy(bytes, name);
        const auto want = golden().read<float>(std::string("npy/") + name + ".values");
        CHECK(a.values == want);
    }
    const auto latent = golden().read<uint8_t>("npy/latent_f4");
    CHECK(data::parse_npy(latent, "x").shape == std::vector<int64_t>{8, 4, 4});
    CHECK(data::parse_npy(golden().read<uint8_t>("npy/latent_f4_v2"), "v2").values == data::parse_npy(latent, "x").values);
    CHECK(data::parse_npy(golden().read<uint8_t>("npy/scalar_f4"), "s").shape.empty());

    auto expect = [](std::vector<uint8_t> bytes, const std::string& part) {
        CAPTURE(part);
        try {
            (void)data::parse_npy(bytes, "f.npy");
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(std::string(e.what()).find("f.npy") != std::string::npos);
            CHECK(std::string(e.what()).find(part) != std::string::npos);
        }
    };
    expect({'x', 'y'}, "not a .npy file");
    expect(std::vector<uint8_t>(latent.begin(), latent.end() - 4), "truncated or padded");
    expect(std::vector<uint8_t>(latent.begin(), latent.begin() + 12), "truncated .npy header");
    auto big_endian = latent;
    const std::string header(latent.begin(), latent.begin() + 128);
    big_endian[header.find("<f4") + 0] = '>';
    expect(big_endian, "not little-endian");
    auto integers = latent;
    integers[header.find("<f4") + 1] = 'i';
    expect(integers, "float16, float32 or float64");
    auto fortran = latent;
    const auto at = header.find("False");
    fortran.erase(fortran.begin() + std::ptrdiff_t(at), fortran.begin() + std::ptrdiff_t(at) + 5);
    fortran.insert(fortran.begin() + std::ptrdiff_t(at), {'T', 'r', 'u', 'e', ' '});
    expect(fortran, "Fortran-ordered");
}

#ifdef MPNET_DATASET_EXE
TEST_CASE("dataset tool: encode writes the reference's latent archive (names, headers, labels, values)") {
    // tests/data/vae/encode.safetensors: dataset_tool.py encode of three PNGs with the test VAE.
    const auto ref = io::SafetensorsFile::open(std::string(MPNET_TEST_DATA) + "/vae/encode.safetensors");
    const fs::path src = fresh_dir("encode-source");
    std::map<std::string, std::vector<uint8_t>> expected;
    for (const auto& info : ref.tensors()) {
        const auto bytes = ref.read<uint8_t>(info.name);
        if (info.name.starts_with("source/")) write_file(src / info.name.substr(7), bytes);
        else expected[info.name.substr(4)] = bytes;
    }
    const fs::path dest = fresh_dir("encode-dest") / "latents.zip";
    const std::string vae = std::string(MPNET_TEST_DATA) + "/vae/vae.safetensors";
    const auto r = run_tool("encode --source " + src.string() + " --dest " + dest.string() + " --vae " + vae + " --quiet");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const data::FileTree tree(dest);
    REQUIRE(tree.files().size() == expected.size());
    for (const auto& [name, want] : expected) {
        CAPTURE(name);
        REQUIRE(tree.contains(name));
        const auto got = tree.read(name);
        if (!name.ends_with(".npy")) {
            CHECK(got == want);  // dataset.json, byte for byte
            continue;
        }
        REQUIRE(got.size() == want.size());
        CHECK(std::equal(got.begin(), got.begin() + 128, want.begin()));  // np.save's header, byte for byte
        const auto a = data::parse_npy(got, name), b = data::parse_npy(want, name);
        CHECK(a.shape == std::vector<int64_t>{8, 8, 8});
        double err = 0, scale = 0;
        for (std::size_t i = 0; i < b.values.size(); ++i) {
            err = std::max(err, double(std::abs(a.values[i] - b.values[i])));
            scale = std::max(scale, double(std::abs(b.values[i])));
        }
        CHECK(err <= 2e-5 * scale);  // the autoencoder's float32 tolerance (test_autoencoder.cpp)
    }
#ifdef MPNET_TRAIN_EXE
    // The archive trains a reduced img512 network (latents 4x8x8 here: the test VAE's 4x).
    const fs::path run = fresh_dir("encode-train");
    const std::string cmd = std::string(MPNET_TRAIN_EXE) + " --outdir " + run.string() + " --data " + dest.string() +
                            " --preset edm2-img512-xs --model-channels 16 --channel-mult 1,2 --num-blocks 1"
                            " --attn-resolutions 4 --channels-per-head 16 --batch 4 --duration 8 --status 4 --quiet"
                            " > " + (run / "out.txt").string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    std::ifstream log(run / "log.txt");
    const std::string text{std::istreambuf_iterator<char>(log), {}};
    CHECK(text.find("4x8x8, 2 classes, VAE latents") != std::string::npos);
#endif
    // A missing --vae is a usage error; an autoencoder file that is not one is named.
    CHECK(run_tool("encode --source " + src.string() + " --dest " + dest.string() + "2.zip").exit_code == 2);
    const auto bad = run_tool("encode --source " + src.string() + " --dest " + (dest.string() + "3.zip") + " --vae " +
                              std::string(MPNET_TEST_DATA) + "/reference/unet.safetensors");
    CHECK(bad.exit_code == 1);
    CHECK(bad.output.find("not an AutoencoderKL") != std::string::npos);
    CHECK_FALSE(fs::exists(dest.string() + "3.zip"));
}
#endif
