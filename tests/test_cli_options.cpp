// Every program's options: parsed exactly, range-checked or refused with a message naming
// the option; bad values inside files (weights, noise) refused before any work; and a sweep
// of hostile values over every option of every program that must end in a clear message or
// a correct run, never a crash (the sanitizer build runs it too).
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../examples/cli.hpp"
#include "mpnet/io/png.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/nn/weights.hpp"
#include "mpnet/sample/seeds.hpp"
#include "test_sampler_helpers.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

TEST_CASE("cli: numbers are parsed whole and range-checked, with the option named") {
    auto usage = [](auto&& f) -> std::string {
        try {
            f();
        } catch (const cli::UsageError& e) {
            return e.what();
        }
        return "";
    };
    CHECK(cli::parse_integer<int64_t>("--n", "42", 1, 64) == 42);
    CHECK(usage([] { cli::parse_integer<int64_t>("--n", "16.7"); }) == "--n: '16.7' is not an integer");
    CHECK(usage([] { cli::parse_integer<int64_t>("--n", "nan"); }) == "--n: 'nan' is not an integer");
    CHECK(usage([] { cli::parse_integer<uint64_t>("--seed", "-1"); }) == "--seed: '-1' is not a non-negative integer");
    CHECK(usage([] { cli::parse_integer<int64_t>("--n", "0", 1, 8); }) == "--n: 0 is out of range [1, 8]");
    CHECK(usage([] { cli::parse_integer<int64_t>("--n", "9223372036854775808"); }).find("out of range") !=
          std::string::npos);
    CHECK(cli::parse_real("--x", "1e-3", cli::positive) == 0.001);
    CHECK(usage([] { cli::parse_real("--x", "nan"); }) == "--x: 'nan' is not a number");
    CHECK(usage([] { cli::parse_real("--x", "inf", cli::positive); }) == "--x: inf is not finite");
    CHECK(usage([] { cli::parse_real("--x", "-1", cli::positive); }) == "--x: -1 is outside (0, inf)");
    CHECK(usage([] { cli::parse_real("--x", "1", {0, 1, false, true}); }) == "--x: 1 is outside [0, 1)");
    CHECK(usage([] { cli::parse_real("--x", ""); }) == "--x: '' is not a number");
    CHECK(cli::split_commas("") == std::vector<std::string>{});
    CHECK(cli::split_commas("a,,b") == std::vector<std::string>{"a", "", "b"});
}

TEST_CASE("cli: the option table parses both spellings and refuses repeats, unknown options and missing values") {
    auto parse = [](std::vector<std::string> args) {
        int n = 0;
        bool q = false;
        cli::Parser p("prog [options]", "Does things.");
        p.section("Options").value("--n", "N", "a number", [&](const std::string& v) { n = cli::parse_integer<int>("--n", v); });
        p.flag("--quiet", "quiet", [&] { q = true; });
        args.insert(args.begin(), "prog");
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        std::string error;
        try {
            p.parse(int(argv.size()), argv.data());
        } catch (const cli::UsageError& e) {
            error = e.what();
        } catch (const cli::HelpRequested& h) {
            error = h.text;
        }
        return std::make_tuple(n, q, error);
    };
    CHECK(parse({"--n", "3", "--quiet"}) == std::make_tuple(3, true, std::string()));
    CHECK(parse({"--n=4"}) == std::make_tuple(4, false, std::string()));
    CHECK(std::get<2>(parse({"--n", "3", "--n", "4"})) == "--n: given twice");
    CHECK(std::get<2>(parse({"--bogus"})) == "unknown option --bogus");
    CHECK(std::get<2>(parse({"--n"})) == "--n: missing value");
    CHECK(std::get<2>(parse({"--n", "--quiet"})) == "--n: missing value");
    CHECK(std::get<2>(parse({"--quiet=1"})) == "--quiet: takes no value");
    CHECK(std::get<2>(parse({"stray"})) == "unexpected argument 'stray'");
    const std::string help = std::get<2>(parse({"--help"}));
    CHECK(help.find("Usage: prog [options]") == 0);
    CHECK(help.find("\nOptions:\n  --n N             a number\n") != std::string::npos);
    CHECK(help.find("  -h, --help        print this help\n") != std::string::npos);
}

TEST_CASE("seeds: millions of seeds parse at once, and overlapping ranges are found") {
    CHECK(sample::parse_seeds("0-9999999").size() == 10'000'000);
    CHECK(sample::parse_seeds("5,0-3,10-11") == std::vector<uint64_t>{5, 0, 1, 2, 3, 10, 11});
    CHECK_THROWS_WITH_AS(sample::parse_seeds("0-5,3"), "seeds '0-5,3': seed 3 is listed twice", Error);
    CHECK_THROWS_WITH_AS(sample::parse_seeds("10-20,0-10"), "seeds '10-20,0-10': seed 10 is listed twice", Error);
    CHECK_THROWS_AS(sample::parse_seeds("0-10000000"), Error);
}

TEST_CASE("weights: the configuration must describe the stored tensors before a network is allocated") {
    // state_numel is the exact count of every preset small enough to build here.
    for (const char* name : {"fmnist-s", "fmnist-xs", "rgb32-s"}) {
        CAPTURE(name);
        nn::Precond<float, CpuBackend> net(nn::find_preset(name).net, 1);
        int64_t n = 0;
        nn::for_each_state_tensor(net, [&](const std::string&, CpuTensor<float>& t) { n += t.numel(); });
        CHECK(nn::state_numel(net.config()) == n);
    }
    const fs::path dir = fs::temp_directory_path() / ("mpnet-cli-weights-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    auto net = test::tiny_network<float>(3);
    nlohmann::json huge = net.config();
    huge["model_channels"] = 1 << 20;
    nn::save_weights(net, dir / "huge.safetensors", {{"config", huge.dump()}});
    CHECK_THROWS_WITH_AS((nn::load_network<float, CpuBackend>(dir / "huge.safetensors")),
                         doctest::Contains("huge.safetensors: network config: a size is beyond the supported range"), Error);
    huge["model_channels"] = 64;  // plausible, but not what the file holds
    nn::save_weights(net, dir / "wide.safetensors", {{"config", huge.dump()}});
    CHECK_THROWS_WITH_AS((nn::load_network<float, CpuBackend>(dir / "wide.safetensors")),
                         doctest::Contains("wide.safetensors: the network configuration in its metadata has"), Error);
    fs::remove_all(dir);
}

#if defined(MPNET_TRAIN_EXE) && defined(MPNET_GENERATE_EXE) && defined(MPNET_PHEMA_EXE) && defined(MPNET_MINIMAL_EXE)
namespace {

struct Outcome {
    int status = -1;  // -1: ended by a signal
    std::string output;
};

Outcome run(const std::string& program, const std::string& args, const fs::path& cwd) {
    const fs::path log = cwd / "output.txt";
    const std::string cmd = "cd '" + cwd.string() + "' && " + program + " " + args + " > '" + log.string() + "' 2>&1";
    const int raw = std::system(cmd.c_str());
    std::ifstream in(log);
    return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, std::string(std::istreambuf_iterator<char>(in), {})};
}

// A scratch folder with a tiny network, its snapshots and a tiny image dataset.
struct Scratch {
    fs::path dir = fs::temp_directory_path() / ("mpnet-cli-options-" + std::to_string(::getpid()));

    Scratch() {
        fs::remove_all(dir);
        fs::create_directories(dir / "snaps");
        fs::create_directories(dir / "data");
        auto net = test::tiny_network<float>(5);
        nn::save_weights(net, dir / "net.safetensors");
        for (const char* s : {"network-snapshot-0000010-0.050", "network-snapshot-0000020-0.050",
                              "network-snapshot-0000020-0.100"})
            nn::save_weights(net, dir / "snaps" / (std::string(s) + ".safetensors"));
        nlohmann::json labels = nlohmann::json::array();
        for (int i = 0; i < 16; ++i) {
            io::Image img(8, 8, 1);
            for (std::size_t k = 0; k < img.pixels.size(); ++k) img.pixels[k] = uint8_t((k * 31 + std::size_t(i) * 17) & 0xff);
            const std::string name = "img" + std::to_string(i) + ".png";
            io::write_png(dir / "data" / name, img);
            labels.push_back({name, i % 2});
        }
        std::ofstream(dir / "data" / "dataset.json") << nlohmann::json{{"labels", labels}}.dump();
    }
    ~Scratch() { fs::remove_all(dir); }
    [[nodiscard]] std::string path(const std::string& name) const { return (dir / name).string(); }
};

const Scratch& scratch() {
    static const Scratch s;
    return s;
}

// A message of the program's own, not a library's internals leaking out.
void check_clear_failure(const std::string& program, const Outcome& r) {
    CHECK(r.status >= 0);  // no signal: no crash, no sanitizer report
    if (r.status == 0) return;
    CHECK((r.status == 1 || r.status == 2));
    CHECK(r.output.find(program + ": ") != std::string::npos);
    for (const char* leak : {"stoull", "stod", "stof", "map::at", "basic_string", "bad_alloc", "std::"}) {
        CAPTURE(leak);
        CHECK(r.output.find(leak) == std::string::npos);
    }
}

const std::vector<std::string> hostile = {"nan", "inf", "-inf", "-1", "0", "16.7", "1e308", "18446744073709551616",
                                          "x", "''"};

}  // namespace

TEST_CASE("mpnet-train: every bad value is refused naming its option, before anything is written") {
    const auto& s = scratch();
    const std::string base = "--outdir run-bad --data " + s.path("data") + " --preset fmnist-xs ";
    for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
             {"--batch nan", "--batch: 'nan' is not an integer"},
             {"--batch 16.7", "--batch: '16.7' is not an integer"},
             {"--batch-gpu -4", "--batch-gpu: -4 is out of range"},
             {"--seed -1", "--seed: '-1' is not a non-negative integer"},
             {"--lr -1", "--lr: -1 is outside (0, inf)"},
             {"--lr nan", "--lr: 'nan' is not a number"},
             {"--dropout nan", "--dropout: 'nan' is not a number"},
             {"--dropout -0.5", "--dropout: -0.5 is outside [0, 1)"},
             {"--decay -5", "--decay: -5 is outside [0, inf)"},
             {"--P_std inf", "--P_std: inf is not finite"},
             {"--P_std -1", "--P_std: -1 is outside (0, inf)"},
             {"--ls 0", "--ls: 0 is outside (0, inf)"},
             {"--ema 0.05,0.05", "--ema 0.05 and 0.05 would both be written"},
             {"--ema 0.5", "--ema 0.5 is outside (0, 0.3"},
             {"--duration inf", "--duration: 'inf' is not an image count"},
             {"--snapshot 10", "--snapshot 10 is below 1000 images"},
             {"--model-channels 2.5", "--model-channels: '2.5' is not an integer"},
             {"--device gpu", "--device: 'gpu' is not cpu, cuda or cuda:N"},
             {"--device cuda:x", "--device: 'x' is not an integer"},
             {"--math fp8 --device cuda", "--math: 'fp8' is not one of fp32, tf32, fp16, bf16"},
             {"--math tf32", "--math tf32 applies to --device cuda only (the CPU runs fp32 or bf16)"},
             {"--math fp16", "--math fp16 applies to --device cuda only"},
             {"--cuda-graphs true", "--cuda-graphs applies to --device cuda only"},
             {"--cuda-graphs maybe", "--cuda-graphs: expected true or false, got 'maybe'"},
         }) {
        CAPTURE(args);
        const Outcome r = run(MPNET_TRAIN_EXE, base + args, s.dir);
        CAPTURE(r.output);
        CHECK(r.status == 2);
        CHECK(r.output.find(message) != std::string::npos);
        CHECK_FALSE(fs::exists(s.dir / "run-bad" / "options.json"));
    }
}

// A GPU no machine has: refused before anything is written, whether the program was built
// with CUDA (no such device: status 1) or without (status 2).
TEST_CASE("mpnet-train and mpnet-generate: --device names a missing GPU clearly") {
    const auto& s = scratch();
    Outcome r = run(MPNET_TRAIN_EXE, "--outdir run-gpu --data " + s.path("data") + " --preset fmnist-xs --device cuda:1023",
                    s.dir);
    CAPTURE(r.output);
    CHECK((r.status == 1 || r.status == 2));
    CHECK(r.output.find("mpnet-train: ") != std::string::npos);
    CHECK(r.output.find("--device cuda:1023") != std::string::npos);
    CHECK_FALSE(fs::exists(s.dir / "run-gpu"));
    r = run(MPNET_GENERATE_EXE, "--net net.safetensors --seeds 0 --steps 2 --grid gpu.png --device cuda:1023", s.dir);
    CAPTURE(r.output);
    CHECK((r.status == 1 || r.status == 2));
    CHECK(r.output.find("--device cuda:1023") != std::string::npos);
    CHECK_FALSE(fs::exists(s.dir / "gpu.png"));
}

// A corrupt image stops a run, naming the file; with --skip-bad the run goes on, and says so.
TEST_CASE("mpnet-train: --skip-bad trains past a corrupt image and reports it") {
    const auto& s = scratch();
    const fs::path data = s.dir / "data-bad";
    fs::remove_all(data);
    fs::copy(s.dir / "data", data);
    {
        std::fstream f(data / "img3.png", std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(45);
        f.put('\x7f');  // inside the image data: the header still reads
    }
    const std::string base = "--data " + data.string() + " --preset fmnist-xs --batch 8 --duration 32 --status 16 ";
    for (const char* storage : {"memory", "stream"}) {
        CAPTURE(storage);
        fs::remove_all(s.dir / "run-skip");
        Outcome r = run(MPNET_TRAIN_EXE, base + "--outdir run-skip --data-storage " + storage, s.dir);
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(r.output.find("img3.png") != std::string::npos);
        r = run(MPNET_TRAIN_EXE, base + "--outdir run-skip --skip-bad --data-storage " + storage, s.dir);
        CAPTURE(r.output);
        CHECK(r.status == 0);
        CHECK(r.output.find("mpnet-train: warning: skipping a bad sample: ") != std::string::npos);
        CHECK(r.output.find("img3.png") != std::string::npos);
        CHECK(r.output.find("skipped 1 bad sample(s)") != std::string::npos);
    }
}

TEST_CASE("mpnet-generate: bad sampler values, outputs and inputs are refused before sampling") {
    const auto& s = scratch();
    const std::string net = "--net " + s.path("net.safetensors") + " --seeds 0-1 ";
    for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
             {"--sigma-max inf", "--sigma-max: inf is not finite"},
             {"--rho 1e-300", "rho 1e-300 makes the noise levels"},
             {"--S-min nan", "--S-min: 'nan' is not a number"},
             {"--steps 2000000000", "steps must be at least 1 and at most 100000"},
             {"--cuda-graphs true", "--cuda-graphs applies to --device cuda only"},
         }) {
        CAPTURE(args);
        const std::string steps = args.find("--steps") == std::string::npos ? " --steps 2" : "";
        const Outcome r = run(MPNET_GENERATE_EXE, net + args + steps + " --grid g.png", s.dir);
        CAPTURE(r.output);
        CHECK(r.status == 2);
        CHECK(r.output.find(message) != std::string::npos);
    }
    fs::create_directories(s.dir / "a-folder.png");
    Outcome r = run(MPNET_GENERATE_EXE, net + "--steps 2 --grid a-folder.png --outdir out-grid", s.dir);
    CHECK(r.status == 1);
    CHECK(r.output.find("--grid a-folder.png is a folder") != std::string::npos);
    CHECK_FALSE(fs::exists(s.dir / "out-grid" / "000000" / "000000.png"));

    auto bad = test::tiny_network<float>(5);
    nn::save_weights(bad, s.dir / "names.safetensors", {{"class_names", "not json"}});
    r = run(MPNET_GENERATE_EXE, "--net names.safetensors --seeds 0 --steps 2 --grid g.png --outdir out-names", s.dir);
    CHECK(r.status == 1);
    CHECK(r.output.find("names.safetensors: metadata class_names is not a JSON list") != std::string::npos);
    CHECK_FALSE(fs::exists(s.dir / "out-names" / "000000" / "000000.png"));

    bad.visit([](const std::string& name, nn::Param<float, CpuBackend>& p) {
        if (name == "unet.out_gain") fill(CpuBackend{}, p.value, NAN);
    });
    nn::save_weights(bad, s.dir / "nan.safetensors");
    r = run(MPNET_GENERATE_EXE, "--net nan.safetensors --seeds 0 --steps 2 --grid g.png", s.dir);
    CHECK(r.status == 1);
    CHECK(r.output.find("nan.safetensors: tensor 'unet.out_gain', element 0 is not finite") != std::string::npos);

    io::SafetensorsWriter w;
    const std::vector<float> noise(64, NAN);
    w.add<float>("noise", {1, 1, 8, 8}, noise);
    w.write(s.dir / "noise.safetensors");
    r = run(MPNET_GENERATE_EXE, "--net net.safetensors --noise noise.safetensors --steps 2 --grid g.png", s.dir);
    CHECK(r.status == 1);
    CHECK(r.output.find("noise.safetensors: tensor 'noise', element 0 is not finite") != std::string::npos);
    CHECK_FALSE(fs::exists(s.dir / "g.png"));
}

TEST_CASE("mpnet-minimal: a bad SIGMA is named") {
    const Outcome r = run(MPNET_MINIMAL_EXE, scratch().path("net.safetensors") + " abc", scratch().dir);
    CHECK(r.status != 0);
    CHECK(r.output.find("SIGMA: 'abc' is not a number") != std::string::npos);
}

// Each value option of each program gets each hostile value (paths excepted: they name
// files, and --duration: a huge valid one would train for ever).
TEST_CASE("every program: hostile option values end in a clear message or a correct run") {
    const auto& s = scratch();
    struct Program {
        std::string name, exe, base;
        std::vector<std::string> options;
    };
    const std::vector<Program> programs = {
        {"mpnet-train", MPNET_TRAIN_EXE,
         "--outdir run --data " + s.path("data") + " --preset fmnist-xs --batch 8 --duration 16 --quiet",
         {"--cond", "--batch-gpu", "--lr", "--decay", "--rampup", "--dropout", "--P_mean", "--P_std", "--ls", "--seed",
          "--xflip", "--ema", "--status", "--snapshot", "--checkpoint", "--attn-balance", "--attn-resolutions",
          "--channel-mult", "--channel-mult-emb", "--channel-mult-noise", "--channels-per-head", "--clip-act",
          "--concat-balance", "--label-balance", "--logvar-channels", "--model-channels", "--num-blocks",
          "--res-balance", "--resample-filter", "--sigma-data", "--data-storage", "--data-threads", "--data-cache",
          "--collective-timeout", "--cuda-graphs"}},
        {"mpnet-generate", MPNET_GENERATE_EXE, "--net " + s.path("net.safetensors") + " --grid g.png --quiet",
         {"--guidance", "--seeds", "--class", "--class-names", "--steps", "--sigma-min", "--sigma-max", "--rho",
          "--S-churn", "--S-min", "--S-max", "--S-noise", "--batch", "--cuda-graphs", "--collective-timeout"}},
        {"mpnet-phema", MPNET_PHEMA_EXE, "--indir " + s.path("snaps") + " --outdir phema --quiet",
         {"--in-std", "--out-std", "--out-kimg", "--batch", "--prefix", "--out-prefix"}},
    };
    int runs = 0;
    for (const auto& p : programs)
        for (const auto& option : p.options)
            for (const auto& value : hostile) {
                // The options the sweep varies keep their place in the base command free.
                std::string base = p.base;
                if (p.name == "mpnet-generate" && option != "--steps") base += " --steps 2";
                if (p.name == "mpnet-phema" && option != "--out-std") base += " --out-std 0.07";
                if (p.name == "mpnet-train") fs::remove_all(s.dir / "run");
                const std::string args = base + " " + option + " " + value;
                CAPTURE(args);
                const Outcome r = run(p.exe, args, s.dir);
                CAPTURE(r.output);
                check_clear_failure(p.name, r);
                ++runs;
            }
    MESSAGE(runs << " runs");
}
#endif
