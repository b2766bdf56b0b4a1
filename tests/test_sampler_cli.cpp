// mpnet-generate end to end: the built program on tiny networks saved with save_weights.
#ifdef MPNET_GENERATE_EXE
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stb/stb_image.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "mpnet/io/image_grid.hpp"
#include "mpnet/sample/seeds.hpp"
#include "test_sampler_helpers.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

// A scratch folder with the networks the cases use, made once per test process.
struct Fixture {
    fs::path dir = fs::temp_directory_path() / ("mpnet_generate_test_" + std::to_string(::getpid()));

    Fixture() {
        fs::remove_all(dir);
        fs::create_directories(dir);
        save("net", test::tiny_network<float>(21));                // 1 channel, 3 classes
        save("uncond", test::tiny_network<float>(22, 1, 0));       // unconditional guide
        save("rgb", test::tiny_network<float>(23, 3, 3));          // other image shape
        save("labels2", test::tiny_network<float>(24, 1, 2));      // other label_dim
        std::ofstream(dir / "garbage.safetensors") << "not a safetensors file";
    }
    ~Fixture() { fs::remove_all(dir); }

    void save(const std::string& name, nn::Precond<float, CpuBackend> net) const {
        nn::save_weights(net, path(name));
    }
    [[nodiscard]] std::string path(const std::string& name) const { return (dir / (name + ".safetensors")).string(); }
};

const Fixture& fixture() {
    static const Fixture f;
    return f;
}

struct Run {
    int status;
    std::string output;  // stdout and stderr together
};

Run generate(const std::string& args) {
    const fs::path log = fixture().dir / "output.txt";
    const std::string cmd = std::string(MPNET_GENERATE_EXE) + " " + args + " > " + log.string() + " 2>&1";
    const int raw = std::system(cmd.c_str());
    std::ifstream in(log);
    return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, std::string(std::istreambuf_iterator<char>(in), {})};
}

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

struct Png {
    int width = 0, height = 0, channels = 0;
};

Png read_png(const fs::path& p) {
    Png png;
    unsigned char* pixels = stbi_load(p.c_str(), &png.width, &png.height, &png.channels, 0);
    REQUIRE_MESSAGE(pixels != nullptr, p.string(), " is not a readable PNG");
    stbi_image_free(pixels);
    return png;
}

std::string out(const std::string& name) { return (fixture().dir / name).string(); }

}  // namespace

TEST_CASE("mpnet-generate: --help documents every option") {
    const Run r = generate("--help");
    CHECK(r.status == 0);
    for (const char* opt : {"--net", "--gnet", "--guidance", "--seeds", "--class", "--class-names", "--noise",
                            "--steps", "--sigma-min", "--sigma-max", "--rho", "--S-churn", "--S-min", "--S-max",
                            "--S-noise", "--euler", "--batch", "--outdir", "--grid", "--quiet"}) {
        CAPTURE(opt);
        CHECK(r.output.find(opt) != std::string::npos);
    }
}

TEST_CASE("mpnet-generate: one PNG per seed in folders of 1000, independent of --batch") {
    const auto& f = fixture();
    const std::string a = out("layout_a"), b = out("layout_b");
    const Run r = generate("--net " + f.path("net") + " --seeds 0-2,1000 --steps 3 --batch 4 --outdir " + a);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    CHECK(r.output.find("4 images in") != std::string::npos);  // the summary line
    CHECK(r.output.find("5 network evaluations per image") != std::string::npos);
    for (const char* file : {"000000/000000.png", "000000/000001.png", "000000/000002.png", "001000/001000.png"}) {
        CAPTURE(file);
        const Png png = read_png(fs::path(a) / file);
        CHECK(png.width == 8);
        CHECK(png.height == 8);
        CHECK(png.channels == 1);
    }
    CHECK(std::distance(fs::recursive_directory_iterator(a), {}) == 6);  // 2 folders, 4 files: no leftovers
    REQUIRE(generate("--net " + f.path("net") + " --seeds 1000,2,1 --steps 3 --batch 1 --quiet --outdir " + b).status ==
            0);
    for (const char* file : {"000000/000001.png", "000000/000002.png", "001000/001000.png"})
        CHECK(read_bytes(fs::path(a) / file) == read_bytes(fs::path(b) / file));

    const std::string rgb = out("layout_rgb");
    REQUIRE(generate("--net " + f.path("rgb") + " --seeds 3 --steps 2 --quiet --outdir " + rgb).status == 0);
    CHECK(read_png(fs::path(rgb) / "000000/000003.png").channels == 3);
}

TEST_CASE("mpnet-generate: grids, labelled by class when conditional") {
    const auto& f = fixture();
    const std::string one = out("one_class.png");
    Run r = generate("--net " + f.path("net") + " --seeds 0-3 --class 1 --steps 2 --quiet --grid " + one);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    Png png = read_png(one);
    CHECK(png.width == 2 + io::detail::text_width("1", 1) + 2 + 4 * (8 + 2));
    CHECK(png.height == 2 + (8 + 2));
    CHECK(png.channels == 1);

    const std::string mixed = out("random_classes.png");
    REQUIRE(generate("--net " + f.path("net") + " --seeds 0-9 --steps 2 --quiet --grid " + mixed).status == 0);
    std::set<int64_t> classes;
    for (uint64_t s = 0; s < 10; ++s) classes.insert(sample::seed_class(s, 3));
    CHECK(read_png(mixed).height == 2 + int(classes.size()) * (8 + 2));

    const std::string plain = out("unconditional.png");
    REQUIRE(generate("--net " + f.path("uncond") + " --seeds 0-4 --steps 2 --quiet --grid " + plain).status == 0);
    png = read_png(plain);
    CHECK(png.width == 2 + 3 * (8 + 2));
    CHECK(png.height == 2 + 2 * (8 + 2));
}

TEST_CASE("mpnet-generate: --noise reproduces the seeded run; guidance changes the images") {
    const auto& f = fixture();
    const std::vector<uint64_t> seeds{5, 6};
    CpuTensor<float> noise(Shape{2, 1, 8, 8});
    sample::fill_seed_noise(noise, std::span<const uint64_t>(seeds));
    const std::vector<int64_t> classes{sample::seed_class(5, 3), sample::seed_class(6, 3)};
    const auto labels = sample::one_hot<float, CpuBackend>(classes, 3);
    io::SafetensorsWriter w;
    const auto nv = noise.to_host(), lv = labels.to_host();
    w.add("noise", {2, 1, 8, 8}, std::span<const float>(nv));
    w.add("labels", {2, 3}, std::span<const float>(lv));
    w.write(fixture().dir / "noise.safetensors");

    const std::string seeded = out("seeded"), given = out("given"), guided = out("guided");
    const std::string common = "--net " + f.path("net") + " --steps 3 --quiet ";
    REQUIRE(generate(common + "--seeds 5,6 --outdir " + seeded).status == 0);
    const Run r = generate(common + "--noise " + out("noise.safetensors") + " --seeds 5,6 --outdir " + given);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    for (const char* file : {"000000/000005.png", "000000/000006.png"})
        CHECK(read_bytes(fs::path(seeded) / file) == read_bytes(fs::path(given) / file));

    const Run g = generate(common + "--seeds 5,6 --gnet " + f.path("uncond") + " --guidance 2 --outdir " + guided);
    REQUIRE_MESSAGE(g.status == 0, g.output);
    CHECK(read_bytes(fs::path(seeded) / "000000/000005.png") != read_bytes(fs::path(guided) / "000000/000005.png"));
}

TEST_CASE("mpnet-generate: clear errors naming the file and the cause") {
    const auto& f = fixture();
    const std::string net = "--net " + f.path("net") + " --steps 2 --seeds 0 ";
    const auto fails = [](const std::string& args, int status, std::initializer_list<std::string> words) {
        const Run r = generate(args);
        CAPTURE(args);
        CAPTURE(r.output);
        CHECK(r.status == status);
        for (const auto& word : words) CHECK(r.output.find(word) != std::string::npos);
    };
    fails("--net " + out("missing.safetensors") + " --grid " + out("x.png"), 1,
          {"missing.safetensors", "cannot open"});
    fails("--net " + f.path("garbage") + " --grid " + out("x.png"), 1, {"garbage.safetensors"});
    fails(net + "--gnet " + out("nogui.safetensors") + " --guidance 2 --grid " + out("x.png"), 1,
          {"--gnet", "nogui.safetensors", "cannot open"});
    fails(net + "--gnet " + f.path("rgb") + " --guidance 2 --grid " + out("x.png"), 1,
          {"--gnet", "rgb.safetensors", "3x8x8 images"});
    fails(net + "--gnet " + f.path("labels2") + " --guidance 2 --grid " + out("x.png"), 1,
          {"labels2.safetensors", "label_dim 2"});
    fails("--net " + f.path("net") + " --seeds 3-1 --grid " + out("x.png"), 2, {"--seeds", "3-1"});
    fails("--net " + f.path("net") + " --seeds 1,x --grid " + out("x.png"), 2, {"--seeds", "'x'"});
    fails(net + "--class 3 --grid " + out("x.png"), 1, {"--class 3", "outside"});
    fails(net + "--outdir " + f.path("net") + "/sub", 1, {"--outdir", "cannot create"});
    fails(net + "--grid " + out("no/such/dir/x.png"), 1, {"--grid", "does not exist"});
    fails(net, 2, {"--outdir or --grid"});
    fails(net + "--guidance 2 --grid " + out("x.png"), 2, {"--gnet"});
    fails("--net " + f.path("net") + " --steps 0 --grid " + out("x.png"), 2, {"steps must be at least 1"});
    fails(net + "--steps 3 --grid " + out("x.png"), 2, {"--steps: given twice"});
    CHECK_FALSE(fs::exists(out("x.png")));
}
TEST_CASE("mpnet-generate: --math bf16 samples close to float32 where the CPU has AVX512-BF16, else is refused") {
    const auto& f = fixture();
    const std::string common = "--net " + f.path("net") + " --seeds 0-3 --steps 4 --quiet --out-tensor ";
    const Run bf16 = generate(common + out("bf16.safetensors") + " --math bf16");
    if (!cpu::bf16_unavailable().empty()) {
        CHECK(bf16.status == 2);
        CHECK(bf16.output.find("--math bf16: " + cpu::bf16_unavailable()) != std::string::npos);
        CHECK_FALSE(fs::exists(out("bf16.safetensors")));
        return;
    }
    REQUIRE_MESSAGE(bf16.status == 0, bf16.output);
    REQUIRE(generate(common + out("fp32.safetensors")).status == 0);
    const auto a = io::SafetensorsFile::open(out("bf16.safetensors")).read<float>("images");
    const auto b = io::SafetensorsFile::open(out("fp32.safetensors")).read<float>("images");
    REQUIRE(a.size() == b.size());
    double largest = 0;
    for (std::size_t i = 0; i < a.size(); ++i) largest = std::max(largest, double(std::abs(a[i] - b[i])));
    CHECK(largest < 0.05);  // the same samples, to bf16's precision over 7 evaluations
}

// 16-bit activations round every op's result: samples land near the float32 ones, within a
// few units of each format's roundoff of the images' scale over the 7 evaluations.
TEST_CASE("mpnet-generate: --precision fp16 and bf16 sample near float32, to each format's precision") {
    const auto& f = fixture();
    const std::string common = "--net " + f.path("net") + " --gnet " + f.path("uncond") +
                               " --guidance 1.5 --seeds 0-3 --steps 4 --quiet --out-tensor ";
    const Run fp32 = generate(common + out("p32.safetensors"));
    REQUIRE_MESSAGE(fp32.status == 0, fp32.output);
    auto largest_difference = [&](const std::string& precision) {
        const Run r = generate(common + out("p" + precision + ".safetensors") + " --precision " + precision);
        REQUIRE_MESSAGE(r.status == 0, r.output);
        const auto a = io::SafetensorsFile::open(out("p" + precision + ".safetensors")).read<float>("images");
        const auto b = io::SafetensorsFile::open(out("p32.safetensors")).read<float>("images");
        REQUIRE(a.size() == b.size());
        double largest = 0, scale = 0;
        for (std::size_t i = 0; i < a.size(); ++i) {
            largest = std::max(largest, double(std::abs(a[i] - b[i])));
            scale = std::max(scale, double(std::abs(b[i])));
        }
        return largest / scale;
    };
    const double fp16 = largest_difference("fp16"), bf16 = largest_difference("bf16");
    MESSAGE("largest difference from float32, relative to the images' scale: fp16 ", fp16, ", bf16 ", bf16);
    CHECK(fp16 > 0);
    CHECK(fp16 < 4.0 / 2048);  // 4 units of fp16's roundoff (measured 1.5)
    CHECK(bf16 < 4.0 / 256);   // and of bf16's (measured 1.6)
    const Run bad = generate(common + out("p8.safetensors") + " --precision fp8");
    CHECK(bad.status == 2);
    CHECK(bad.output.find("--precision: 'fp8' is not one of fp32, fp16, bf16") != std::string::npos);
}

TEST_CASE("mpnet-generate: --out-tensor writes the raw images that the PNGs quantise") {
    const auto& f = fixture();
    const std::string dir = out("tensor_png"), file = out("raw.safetensors");
    const Run r = generate("--net " + f.path("net") + " --seeds 3,1 --steps 3 --quiet --gnet " + f.path("uncond") +
                           " --guidance 2 --guidance-interval 0.5,20 --outdir " + dir + " --out-tensor " + file);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    const auto t = io::SafetensorsFile::open(file);
    CHECK(t.info("images").shape == std::vector<int64_t>{2, 1, 8, 8});
    CHECK(t.metadata_or("seeds", "") == "[3,1]");
    const auto raw = t.read<float>("images");
    int w = 0, h = 0, c = 0;
    unsigned char* px = stbi_load((fs::path(dir) / "000000/000001.png").c_str(), &w, &h, &c, 1);
    REQUIRE(px != nullptr);
    for (int k = 0; k < 64; ++k) {
        CAPTURE(k);
        CHECK(int(px[k]) == int(std::clamp(double(raw[64 + std::size_t(k)]) * 127.5 + 128, 0.0, 255.0)));
    }
    stbi_image_free(px);
    const Run bad = generate("--net " + f.path("net") + " --seeds 0 --out-tensor " + out("x.st") + " --guidance-interval 3");
    CHECK(bad.status == 2);
    CHECK(bad.output.find("--guidance-interval: expected LO,HI, got '3'") != std::string::npos);
}

#endif
