// The authors' network pickles (tests/data/edm2_pickle, made by scripts/edm2_pickle_golden.py
// with the NVlabs/edm2 code): tensors, configuration and encoder read without running the
// pickle, samples of the converted networks against the authors' sampler, refusal of
// pickles that name other globals, and no crash on damaged ones.
#include <doctest/doctest.h>
#include <unistd.h>
#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>

#include "golden.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/edm2_pickle.hpp"
#include "mpnet/sample/edm_sampler.hpp"
#include "mpnet/vae/stability_vae.hpp"
#include <stb/stb_image.h>

using namespace mpnet;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

const std::string dir = std::string(MPNET_TEST_DATA) + "/edm2_pickle/";

const io::SafetensorsFile& pickle_golden() {
    static const auto f = io::SafetensorsFile::open(dir + "golden.safetensors");
    return f;
}

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

// Every state_dict tensor of the pickle equals the reference's, bit for bit (float16 values
// widened to float32 are exact), in the reference's order.
void check_state(const nn::Edm2Pickle& p, const std::string& prefix) {
    const auto& g = pickle_golden();
    std::set<std::string> expected;
    for (const auto& info : g.tensors())
        if (info.name.starts_with(prefix)) expected.insert(info.name.substr(prefix.size()));
    std::set<std::string> got;
    for (const auto& [name, t] : p.state) {
        CAPTURE(name);
        got.insert(name);
        REQUIRE(g.contains(prefix + name));
        CHECK(t.dtype == "F16");  // the snapshot's `ema` is saved in float16
        CHECK(t.shape == g.info(prefix + name).shape);
        const auto ref = g.read<float>(prefix + name);
        REQUIRE(ref.size() == t.values.size());
        CHECK(std::memcmp(ref.data(), t.values.data(), ref.size() * sizeof(float)) == 0);
    }
    CHECK(got == expected);
}

nn::NetworkConfig golden_config(const std::string& key) {
    return nn::config_from_json(pickle_golden().metadata().at(key));
}

}  // namespace

TEST_CASE("edm2 pickle: a training snapshot's network, configuration and VAE encoder") {
    const auto p = nn::read_edm2_pickle(dir + "snapshot.pkl");
    check_state(p, "net.");
    CHECK(nn::to_json(p.config) == nn::to_json(golden_config("net_config")));
    CHECK(p.config.label_dim == 5);
    CHECK(p.config.dropout == 0.1);
    REQUIRE(p.encoder);
    CHECK(p.encoder->class_name == "StabilityVAEEncoder");
    CHECK(p.encoder->vae_name == "stabilityai/sd-vae-ft-mse");
    const auto scale = nlohmann::json::parse(pickle_golden().metadata().at("encoder_scale"));
    const auto bias = nlohmann::json::parse(pickle_golden().metadata().at("encoder_bias"));
    REQUIRE(p.encoder->scale.size() == 4);
    for (std::size_t c = 0; c < 4; ++c) {
        CHECK(p.encoder->scale[c] == scale[c].get<double>());
        CHECK(p.encoder->bias[c] == bias[c].get<double>());
    }
}

TEST_CASE("edm2 pickle: an unconditional guide with a pixel encoder") {
    const auto p = nn::read_edm2_pickle(dir + "guide.pkl");
    check_state(p, "gnet.");
    CHECK(nn::to_json(p.config) == nn::to_json(golden_config("gnet_config")));
    CHECK(p.config.label_dim == 0);
    CHECK(p.config.channel_mult_emb == 3);
    REQUIRE(p.encoder);
    CHECK(p.encoder->class_name == "StandardRGBEncoder");
}

TEST_CASE("edm2 pickle: converted networks sample as the authors' edm_sampler does (guided)") {
    auto p = nn::read_edm2_pickle(dir + "snapshot.pkl");
    auto gp = nn::read_edm2_pickle(dir + "guide.pkl");
    auto net = nn::network_from<float, CpuBackend>(p, "snapshot.pkl");
    auto gnet = nn::network_from<float, CpuBackend>(gp, "guide.pkl");
    const auto& g = pickle_golden();
    sample::SamplerOptions o;
    o.steps = std::stoi(g.metadata().at("steps"));
    o.guidance = std::stod(g.metadata().at("guidance"));
    sample::NetworkDenoiser<float, CpuBackend> d(net), gd(gnet);
    const auto result = sample::edm_sample(d, &gd, test::load<float>(g, "noise"), test::load<float>(g, "labels"), o);
    // The sampler tests' float32 tolerance; measured 2.6e-6 of the samples' max-abs, the size
    // of the change a one-ulp perturbation of the weights makes in the reference itself.
    MPNET_CHECK_CLOSE(result.images, test::load<float>(g, "samples"), 1e-4);
}

TEST_CASE("edm2 pickle: a pickle naming any other global is refused and nothing runs") {
    const fs::path cwd = fs::current_path();
    const fs::path scratch = fs::temp_directory_path() / ("mpnet_pickle_" + std::to_string(::getpid()));
    fs::create_directories(scratch);
    fs::current_path(scratch);
    try {
        nn::read_edm2_pickle(dir + "evil.pkl");
        FAIL("the pickle was accepted");
    } catch (const Error& e) {
        const std::string msg = e.what();
        CHECK(msg.find("evil.pkl") != std::string::npos);
        CHECK(msg.find("'posix.system'") != std::string::npos);
    }
    CHECK_FALSE(fs::exists(scratch / "mpnet-pickle-was-executed"));
    fs::current_path(cwd);
    fs::remove_all(scratch);

    // The same with the global that builtins offer (eval), by the text protocol's GLOBAL.
    const std::string eval_pickle = "\x80\x02" "cbuiltins\neval\n" "X\x03\x00\x00\x00" "1+1" "\x85R."s;
    CHECK_THROWS_WITH_AS(nn::read_edm2_pickle(eval_pickle, "eval.pkl"),
                         doctest::Contains("'builtins.eval'"), Error);
}

TEST_CASE("edm2 pickle: unknown constructor arguments are an error, not a guess") {
    std::string bytes = read_bytes(dir + "snapshot.pkl");
    // Renames the key 'dropout' (a SHORT_BINUNICODE of 7 bytes) wherever it is pickled.
    const std::string from = "\x8c\x07" "dropout", to = "\x8c\x07" "dropoux";
    std::size_t n = 0;
    for (auto at = bytes.find(from); at != std::string::npos; at = bytes.find(from, at + 1), ++n)
        bytes.replace(at, from.size(), to);
    REQUIRE(n > 0);
    CHECK_THROWS_WITH_AS(nn::read_edm2_pickle(bytes, "renamed.pkl"), doctest::Contains("unknown setting 'dropoux'"),
                         Error);
}

TEST_CASE("edm2 pickle: damaged pickles give errors, never a crash") {
    const std::string bytes = read_bytes(dir + "guide.pkl");
    auto must_fail_cleanly = [](const std::string& b) {
        try {
            nn::read_edm2_pickle(b, "damaged.pkl");
        } catch (const Error& e) {
            CHECK(std::string(e.what()).find("damaged.pkl") != std::string::npos);
        }
    };
    // Truncated anywhere (a spread of cut points, every storage included).
    for (std::size_t cut = 0; cut < bytes.size(); cut += 97) {
        CAPTURE(cut);
        CHECK_THROWS_AS(nn::read_edm2_pickle(bytes.substr(0, cut), "damaged.pkl"), Error);
    }
    // Random bytes changed: either still a valid network or an error naming the file.
    std::mt19937 rng(5);
    for (int trial = 0; trial < 400; ++trial) {
        std::string b = bytes;
        for (int k = 0; k < 4; ++k) b[rng() % b.size()] = char(rng());
        must_fail_cleanly(b);
    }
    // Nesting lists 300000 deep, cycles through the memo: data, not recursion.
    std::string deep = "\x80\x04";
    for (int i = 0; i < 300000; ++i) deep += ']';
    for (int i = 0; i < 299999; ++i) deep += 'a';
    deep += '.';
    CHECK_THROWS_WITH_AS(nn::read_edm2_pickle(deep, "deep.pkl"), doctest::Contains("not a dict"), Error);
    const std::string cycle = "\x80\x04}\x94\x8c\x03" "ema" "h\x00s."s;  // d['ema'] = d
    CHECK_THROWS_WITH_AS(nn::read_edm2_pickle(cycle, "cycle.pkl"), doctest::Contains("not a persistent object"),
                         Error);
}

#ifdef MPNET_CONVERT_EXE
TEST_CASE("mpnet-convert: writes a weights file that loads, and refuses without writing") {
    const fs::path scratch = fs::temp_directory_path() / ("mpnet_convert_" + std::to_string(::getpid()));
    fs::create_directories(scratch);
    auto run = [&](const std::string& args) {
        const std::string cmd = std::string(MPNET_CONVERT_EXE) + " " + args + " > " + (scratch / "log").string() + " 2>&1";
        const int raw = std::system(cmd.c_str());
        return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    };
    const fs::path out = scratch / "net.safetensors";
    REQUIRE(run(dir + "snapshot.pkl " + out.string()) == 0);
    auto net = nn::load_network<float, CpuBackend>(out);
    CHECK(nn::to_json(net.config()) == nn::to_json(golden_config("net_config")));
    const auto file = io::SafetensorsFile::open(out);
    const auto encoder = nlohmann::json::parse(file.metadata().at("encoder"));
    CHECK(encoder["class"] == "StabilityVAEEncoder");
    CHECK(encoder["scale"].size() == 4);
    CHECK(file.read<float>("unet.out_gain") == pickle_golden().read<float>("net.unet.out_gain"));

    CHECK(run(dir + "evil.pkl " + (scratch / "evil.safetensors").string()) == 1);
    CHECK(read_bytes(scratch / "log").find("posix.system") != std::string::npos);
    CHECK_FALSE(fs::exists(scratch / "evil.safetensors"));
    CHECK(run(dir + "snapshot.pkl") == 2);
    CHECK(run((scratch / "missing.pkl").string() + " " + (scratch / "x.safetensors").string()) == 1);
    CHECK(read_bytes(scratch / "log").find("missing.pkl") != std::string::npos);
    fs::remove_all(scratch);
}
#endif

#if defined(MPNET_CONVERT_EXE) && defined(MPNET_GENERATE_EXE)
TEST_CASE("mpnet-generate: an authors' preset from converted pickles, decoded by --vae") {
    const fs::path scratch = fs::temp_directory_path() / ("mpnet_preset_" + std::to_string(::getpid()));
    fs::remove_all(scratch);
    fs::create_directories(scratch / "models");
    const fs::path log = scratch / "log";
    auto run = [&](const std::string& exe, const std::string& args) {
        const int raw = std::system((exe + " " + args + " > " + log.string() + " 2>&1").c_str());
        return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    };
    // edm2-img512-xs-guid-fid: net edm2-img512-xs-2147483-0.045, guide edm2-img512-xs-uncond-2147483-0.045, w = 1.4.
    const fs::path net = scratch / "models" / "edm2-img512-xs-2147483-0.045.safetensors";
    const fs::path gnet = scratch / "models" / "edm2-img512-xs-uncond-2147483-0.045.safetensors";
    REQUIRE(run(MPNET_CONVERT_EXE, dir + "snapshot.pkl " + net.string()) == 0);
    REQUIRE(run(MPNET_CONVERT_EXE, dir + "guide.pkl " + gnet.string()) == 0);
    const std::string vae_file = std::string(MPNET_TEST_DATA) + "/vae/vae.safetensors";
    const std::string common = " --seeds 0-3 --steps 4 --quiet --vae " + vae_file;
    REQUIRE(run(MPNET_GENERATE_EXE, "--preset edm2-img512-xs-guid-fid --models " + (scratch / "models").string() + common +
                                        " --outdir " + (scratch / "out").string() + " --grid " +
                                        (scratch / "grid.png").string() + " --out-tensor " +
                                        (scratch / "latents.safetensors").string()) == 0);
    REQUIRE(run(MPNET_GENERATE_EXE, "--net " + net.string() + " --gnet " + gnet.string() + " --guidance 1.4" + common +
                                        " --out-tensor " + (scratch / "explicit.safetensors").string()) == 0);
    CHECK(read_bytes(scratch / "latents.safetensors") == read_bytes(scratch / "explicit.safetensors"));

    // Each PNG is the EDM2 decoding of its latents: 8x8x4 latents, 32x32 RGB through the test VAE.
    const auto latents = io::SafetensorsFile::open(scratch / "latents.safetensors");
    const auto all = test::load<float>(latents, "images");
    REQUIRE(all.shape() == Shape{4, 4, 8, 8});
    const auto vae = vae::AutoencoderKL<float, CpuBackend>::load(vae_file);
    const auto enc = io::SafetensorsFile::open(net).metadata().at("encoder");
    const auto j = nlohmann::json::parse(enc);
    const vae::LatentScaling scaling{j.at("scale").get<std::vector<double>>(), j.at("bias").get<std::vector<double>>()};
    const auto expected = vae::decode_to_pixels(vae, all, scaling);
    for (int seed = 0; seed < 4; ++seed) {
        CAPTURE(seed);
        int w = 0, h = 0, c = 0;
        char name[64];
        std::snprintf(name, sizeof name, "out/000000/%06d.png", seed);
        unsigned char* px = stbi_load((scratch / name).c_str(), &w, &h, &c, 0);
        REQUIRE(px != nullptr);
        CHECK((w == 32 && h == 32 && c == 3));
        int mismatches = 0;
        for (int p = 0; p < 32 * 32; ++p)
            for (int ch = 0; ch < 3; ++ch)
                mismatches += px[p * 3 + ch] != expected[std::size_t(((seed * 3 + ch) * 32 * 32) + p)];
        CHECK(mismatches == 0);
        stbi_image_free(px);
    }
    CHECK(fs::exists(scratch / "grid.png"));

    // A latent network without --vae cannot make PNGs; a pixel network refuses --vae.
    CHECK(run(MPNET_GENERATE_EXE, "--net " + net.string() + " --seeds 0 --steps 2 --grid " +
                                      (scratch / "g2.png").string()) == 1);
    CHECK(read_bytes(log).find("give --vae") != std::string::npos);
    CHECK(run(MPNET_GENERATE_EXE, "--net " + gnet.string() + " --seeds 0 --steps 2 --vae " + vae_file +
                                      " --out-tensor " + (scratch / "t.safetensors").string()) == 1);
    CHECK(read_bytes(log).find("makes pixels, not latents") != std::string::npos);
    CHECK(run(MPNET_GENERATE_EXE, "--preset edm2-img512-xs --models " + scratch.string() + " --grid x.png") == 2);
    CHECK(read_bytes(log).find("unknown preset") != std::string::npos);
    CHECK(run(MPNET_GENERATE_EXE, "--preset edm2-img512-xs-fid --net " + net.string() + " --grid x.png") == 2);
    CHECK(run(MPNET_GENERATE_EXE, "--preset edm2-img512-xs-fid --grid x.png") == 2);
    CHECK(read_bytes(log).find("--models") != std::string::npos);
    fs::remove_all(scratch);
}
#endif
