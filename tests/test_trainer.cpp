// The trainer: exact resume (straight vs. interrupted runs give bit-identical weights and
// EMA), checkpoints that survive a kill during their write, the loss going down, and clear
// errors for bad input.
#include <stb/stb_image_write.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>

#include "bars_data.hpp"
#include "golden.hpp"
#include "scratch_dir.hpp"
#include "mpnet/train/trainer.hpp"

using namespace mpnet;
using testing::bars_dataset;
using testing::tiny_train_options;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
    return testing::fresh_dir("mpnet-test-trainer", name);
}

std::vector<float> flat_params(nn::Precond<float, CpuBackend>& net) {
    std::vector<float> all;
    net.visit([&](const std::string&, nn::Param<float, CpuBackend>& p) {
        const auto v = p.value.to_host();
        all.insert(all.end(), v.begin(), v.end());
    });
    return all;
}

std::vector<float> flat_ema(const train::PowerEma<float, CpuBackend>& ema) {
    std::vector<float> all;
    for (size_t k = 0; k < ema.num_profiles(); ++k)
        for (const auto& [name, t] : ema.profile(k)) {
            const auto v = t.to_host();
            all.insert(all.end(), v.begin(), v.end());
        }
    return all;
}

struct Trained {
    std::vector<float> params, ema;
};

Trained train_to(const data::Dataset& ds, train::TrainOptions o, std::vector<std::string>* log = nullptr) {
    train::Trainer<float, CpuBackend> t(train::resolve(o, ds), ds, [&](const std::string& s) {
        if (log) log->push_back(s);
    });
    t.resume();
    t.run();
    return {flat_params(t.network()), flat_ema(t.ema())};
}

}  // namespace

TEST_CASE("trainer: N steps straight equal N/2 steps, a restart and N/2 more, bit for bit") {
    const auto ds = bars_dataset();
    for (int64_t batch_gpu : {8, 4}) {  // with and without gradient accumulation
        CAPTURE(batch_gpu);
        auto straight = tiny_train_options(fresh_dir("straight"), 64);
        straight.batch_gpu = batch_gpu;
        const Trained a = train_to(ds, straight);
        auto half = tiny_train_options(fresh_dir("halves"), 32);
        half.batch_gpu = batch_gpu;
        train_to(ds, half);
        half.duration = 64;
        std::vector<std::string> log;
        const Trained b = train_to(ds, half, &log);
        REQUIRE(!log.empty());
        CHECK(log.front().find("resuming from") != std::string::npos);
        REQUIRE(a.params.size() == b.params.size());
        CHECK(std::memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float)) == 0);
        REQUIRE(a.ema.size() == b.ema.size());
        CHECK(std::memcmp(a.ema.data(), b.ema.data(), a.ema.size() * sizeof(float)) == 0);
    }
}

// bf16 convolution operands (--math bf16 on the CPU): still deterministic, so a resumed
// run is the straight one bit for bit, and really in effect (the weights differ from a
// float32 run's).
TEST_CASE("trainer: with bf16 math, N steps straight equal N/2 + N/2 bit for bit, and differ from float32") {
    if (!cpu::bf16_unavailable().empty()) {
        MESSAGE("bf16 training not run: ", cpu::bf16_unavailable());
        CHECK_THROWS(CpuBackend::set_math(cpu::Math::bf16));
        return;
    }
    const auto ds = bars_dataset();
    const Trained fp32 = train_to(ds, tiny_train_options(fresh_dir("fp32"), 64));
    const cpu::MathScope bf16(cpu::Math::bf16);
    const Trained a = train_to(ds, tiny_train_options(fresh_dir("bf16-straight"), 64));
    auto half = tiny_train_options(fresh_dir("bf16-halves"), 32);
    train_to(ds, half);
    half.duration = 64;
    const Trained b = train_to(ds, half);
    REQUIRE(a.params.size() == b.params.size());
    CHECK(std::memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(a.ema.data(), b.ema.data(), a.ema.size() * sizeof(float)) == 0);
    REQUIRE(a.params.size() == fp32.params.size());
    double differ = 0;
    for (size_t i = 0; i < a.params.size(); ++i) differ = std::max(differ, double(std::abs(a.params[i] - fp32.params[i])));
    CHECK(differ > 0);
    CHECK(differ < 0.1);  // the same training, to bf16's precision over 8 steps
}

// What replayed CUDA graphs need of a step's parts (train/step_runner.hpp): every part's
// device work runs through the runner, in order (one part for a step of one round, else
// normalize, a round per chunk, update), and a round's computation reads only the staged
// buffers and the network's state, so that running it again gives the same result. This
// runner runs each round twice and the other parts once (they move the state they read);
// the run must train to the plain run's bits.
struct PartsRunner final : train::StepRunner {
    std::string* parts;
    explicit PartsRunner(std::string* p) : parts(p) {}
    void run(train::StepPart part, const std::function<void()>& work) override {
        switch (part) {
            case train::StepPart::step: *parts += 's'; break;
            case train::StepPart::normalize: *parts += 'n'; break;
            case train::StepPart::round: *parts += 'r'; work(); break;
            case train::StepPart::update: *parts += 'u'; break;
        }
        work();
    }
};

TEST_CASE("trainer: a step's parts run through the runner, each round twice as a graph replays it, to the same bits") {
    const auto ds = bars_dataset();
    for (int64_t batch_gpu : {8, 4}) {  // one round per step, and two
        CAPTURE(batch_gpu);
        auto o = tiny_train_options(fresh_dir("plain"), 64);
        o.batch_gpu = batch_gpu;
        const Trained plain = train_to(ds, o);
        o.outdir = fresh_dir("parts").string();
        std::string parts;
        train::Trainer<float, CpuBackend> t(train::resolve(o, ds), ds, [](const std::string&) {});
        t.set_step_runner(std::make_unique<PartsRunner>(&parts));
        t.resume();
        t.run();
        const std::string one_step = batch_gpu == 8 ? "s" : "nrru";
        std::string want;
        for (int step = 0; step < 64 / 8; ++step) want += one_step;
        CHECK(parts == want);
        const Trained replayed{flat_params(t.network()), flat_ema(t.ema())};
        REQUIRE(plain.params.size() == replayed.params.size());
        CHECK(std::memcmp(plain.params.data(), replayed.params.data(), plain.params.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(plain.ema.data(), replayed.ema.data(), plain.ema.size() * sizeof(float)) == 0);
    }
}

// The network's dropout seed on the backend: a training forward without a seed in its mode
// uses the one set before it, exactly as if the mode carried it, and a new seed changes it.
TEST_CASE("network: a dropout seed set before a training forward equals the seed given in its mode") {
    auto cfg = nn::find_preset("fmnist-xs").net;
    cfg.dropout = 0.25;
    nn::Precond<float, CpuBackend> net(cfg, 3);
    net.visit([](const std::string& name, nn::Param<float, CpuBackend>& p) {  // gains start at 0: D would be c_skip x
        if (name.ends_with("gain")) fill(CpuBackend{}, p.value, 1.0f);
    });
    const auto x = CpuTensor<float>::from_host(Shape{2, 1, 32, 32}, std::vector<float>(2 * 32 * 32, 0.5f));
    const auto sigma = CpuTensor<float>::from_host(Shape{2}, std::vector<float>{0.4f, 2.0f});
    auto D = [&](const nn::ForwardMode& mode) { return net.forward(x, sigma, {}, mode, false).D.to_host(); };
    net.force_normalize();  // once: normalising again would move the weights' last bits
    const auto given = D(nn::ForwardMode{true, 99, true});
    net.set_dropout_seed(1);
    const auto other = D(nn::ForwardMode{true, std::nullopt, true});
    net.set_dropout_seed(99);
    const auto set_before = D(nn::ForwardMode{true, std::nullopt, true});
    CHECK(std::memcmp(given.data(), set_before.data(), given.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(given.data(), other.data(), given.size() * sizeof(float)) != 0);
}

// --ls as the reference has it: the loss's gradient, and so every parameter gradient, is
// multiplied by the scale (a power of two: exactly, the backward being linear in it), while
// the loss reported is the unscaled one. One step, so that both runs compute their gradients
// from the same weights; the gains start at 0 (nothing but the output gain and the logvar
// layer would get a gradient), so both runs set them to 1 first.
TEST_CASE("trainer: loss scaling multiplies every gradient exactly and leaves the reported loss alone") {
    const auto ds = bars_dataset();
    struct Result {
        std::vector<float> grads;
        double loss = 0;
    };
    auto one_step = [&](const std::string& name, double loss_scaling) {
        const auto dir = fresh_dir(name);
        auto o = tiny_train_options(dir, 8);
        o.status = 8;
        o.loss_scaling = loss_scaling;
        train::Trainer<float, CpuBackend> t(train::resolve(o, ds), ds, [](const std::string&) {});
        t.resume();
        t.network().visit([](const std::string& name, nn::Param<float, CpuBackend>& p) {
            if (name.ends_with("gain")) fill(CpuBackend{}, p.value, 1.0f);
        });
        t.run();
        std::ifstream stats(dir / "stats.jsonl");
        std::string line;
        REQUIRE(std::getline(stats, line));
        return Result{t.network().flat_grads().to_host(), nlohmann::json::parse(line)["loss"].get<double>()};
    };
    const Result plain = one_step("ls1", 1), scaled = one_step("ls4", 4);
    REQUIRE(plain.grads.size() == scaled.grads.size());
    size_t nonzero = 0, unequal = 0;
    for (size_t i = 0; i < plain.grads.size(); ++i) {
        nonzero += plain.grads[i] != 0;
        unequal += scaled.grads[i] != 4 * plain.grads[i];
    }
    CHECK(nonzero > plain.grads.size() / 2);
    CHECK(unequal == 0);
    CHECK(scaled.loss == plain.loss);
}

TEST_CASE("trainer: the loss goes down on a learnable dataset") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("loss");
    auto o = tiny_train_options(dir, 960);
    o.dropout = 0;
    o.checkpoint = 960;
    o.status = 160;
    train_to(ds, o);
    std::vector<double> loss;
    std::ifstream stats(dir / "stats.jsonl");
    for (std::string line; std::getline(stats, line);) loss.push_back(nlohmann::json::parse(line)["loss"].get<double>());
    REQUIRE(loss.size() == 6);
    MESSAGE("loss per 160 images: " << loss[0] << " " << loss[1] << " " << loss[2] << " " << loss[3] << " "
                                    << loss[4] << " " << loss[5]);
    // The learned-uncertainty loss starts near 1 (logvar = 0, unit-weighted error) and falls
    // as the network and its uncertainty head fit; a drop of a tenth is far outside the noise
    // of 160-image averages with this seed.
    CHECK(loss.back() < loss.front() - 0.1);
    CHECK(fs::exists(dir / "loss.svg"));
    CHECK(fs::exists(dir / "network-snapshot-0000001-0.050.safetensors"));
}

// ---- the command-line program ------------------------------------------------------------
#ifdef MPNET_TRAIN_EXE
namespace {

struct Run {
    int exit_code = -1;
    bool killed = false;
    std::string output;
};

Run run_train(const std::string& args, const std::string& env = "") {
    const fs::path out = testing::scratch_path("mpnet-test-trainer", "output.txt");
    const std::string cmd = env + " exec " + std::string(MPNET_TRAIN_EXE) + " " + args + " > " + out.string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    Run r;
    r.killed = (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ||
               (WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGKILL);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::ifstream in(out);
    r.output.assign(std::istreambuf_iterator<char>(in), {});
    return r;
}

// The bars dataset as PNG files with a dataset.json, the reference's format.
fs::path bars_folder(const std::string& name, int resolution = 16) {
    const auto dir = fresh_dir(name);
    testing::write_bars_folder(dir, resolution);
    return dir;
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

const std::string tiny_args = " --preset fmnist-xs --batch 8 --duration 96 --status 16 --checkpoint 16 --lr 0.01 "
                              "--rampup 16 --quiet";

}  // namespace

TEST_CASE("trainer: a loss that stays non-finite stops the run with an error and leaves the last checkpoint") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("nan");
    auto o = tiny_train_options(dir, 16);  // one good checkpoint at 16 images
    train_to(ds, o);
    const fs::path good = dir / "training-state-000000000016.safetensors";
    REQUIRE(fs::exists(good));
    const auto good_bytes = fs::file_size(good);

    o.duration = 160;
    o.checkpoint = 8;  // every step would write one, were the loss finite
    o.max_nonfinite_steps = 3;
    train::Trainer<float, CpuBackend> t(train::resolve(o, ds), ds, [](const std::string&) {});
    REQUIRE(t.resume());
    t.network().visit([](const std::string&, nn::Param<float, CpuBackend>& p) {
        fill(CpuBackend{}, p.value, std::numeric_limits<float>::quiet_NaN());
    });
    std::string message;
    try {
        t.run();
    } catch (const Error& e) {
        message = e.what();
    }
    CHECK(message.find("training diverged: the loss was not finite for 3 consecutive steps") != std::string::npos);
    CHECK(t.images_seen() == 16 + 3 * 8);
    std::vector<fs::path> states;
    for (const auto& entry : fs::directory_iterator(dir))
        if (entry.path().filename().string().starts_with("training-state-")) states.push_back(entry.path());
    CHECK(states == std::vector<fs::path>{good});
    CHECK(fs::file_size(good) == good_bytes);
}

TEST_CASE("mpnet-train: a kill -9 while writing a checkpoint keeps the previous one, and the resumed run ends "
          "bit-identical to an uninterrupted one") {
    const auto data = bars_folder("data");
    const auto straight = fresh_dir("cli-straight"), crashed = fresh_dir("cli-crashed");
    REQUIRE(run_train("--outdir " + straight.string() + " --data " + data.string() + tiny_args).exit_code == 0);

    const Run killed = run_train("--outdir " + crashed.string() + " --data " + data.string() + tiny_args,
                                 "MPNET_FAULT_KILL_BEFORE_RENAME=training-state-000000000048");
    CHECK(killed.killed);
    CHECK(!fs::exists(crashed / "training-state-000000000048.safetensors"));
    bool temp_left = false;
    for (const auto& e : fs::directory_iterator(crashed)) temp_left |= e.path().filename().string().find(".tmp.") != std::string::npos;
    CHECK(temp_left);  // the half-finished write is really there, and was never renamed
    CHECK_NOTHROW(io::SafetensorsFile::open(crashed / "training-state-000000000032.safetensors"));

    const Run resumed = run_train("--outdir " + crashed.string() + " --data " + data.string() + tiny_args);
    REQUIRE(resumed.exit_code == 0);
    const std::string a = slurp(straight / "training-state-000000000096.safetensors"),
                      b = slurp(crashed / "training-state-000000000096.safetensors");
    REQUIRE(!a.empty());
    CHECK(a == b);
    for (const char* snap : {"network-snapshot-0000000-0.050.safetensors", "network-snapshot-0000000-0.100.safetensors"})
        CHECK(slurp(straight / snap) == slurp(crashed / snap));
}

TEST_CASE("mpnet-train: a streamed dataset trains to the bits of the same dataset in memory") {
    const auto data = bars_folder("data-stream");
    std::string bytes[2];
    for (int i = 0; i < 2; ++i) {
        const auto dir = fresh_dir(i == 0 ? "in-memory" : "streamed");
        const std::string storage = i == 0 ? " --data-storage memory" : " --data-storage stream --data-threads 2";
        REQUIRE(run_train("--outdir " + dir.string() + " --data " + data.string() + tiny_args + storage).exit_code == 0);
        CHECK(slurp(dir / "log.txt").find(i == 0 ? "in memory" : "streamed") != std::string::npos);
        bytes[i] = slurp(dir / "training-state-000000000096.safetensors");
    }
    REQUIRE(!bytes[0].empty());
    CHECK(bytes[0] == bytes[1]);
}

TEST_CASE("mpnet-train: --math bf16 trains on the CPU where it has AVX512-BF16, and is refused clearly elsewhere") {
    const auto data = bars_folder("data-bf16");
    const auto dir = fresh_dir("math-bf16");
    const Run r = run_train("--outdir " + (dir / "run").string() + " --data " + data.string() + tiny_args + " --math bf16");
    INFO(r.output);
    if (!cpu::bf16_unavailable().empty()) {
        CHECK(r.exit_code == 2);
        CHECK(r.output.find("--math bf16: " + cpu::bf16_unavailable()) != std::string::npos);
        CHECK_FALSE(fs::exists(dir / "run"));
        return;
    }
    REQUIRE(r.exit_code == 0);
    CHECK(slurp(dir / "run" / "log.txt").find("device cpu, math bf16") != std::string::npos);
    CHECK(fs::exists(dir / "run" / "training-state-000000000096.safetensors"));
}

TEST_CASE("mpnet-train: --precision fp16 trains with 16-bit activations; a format it does not know is refused") {
    const auto data = bars_folder("data-precision");
    const auto dir = fresh_dir("precision");
    const Run r = run_train("--outdir " + (dir / "run").string() + " --data " + data.string() + tiny_args +
                            " --precision fp16");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(slurp(dir / "run" / "log.txt").find("device cpu, math fp32, activations fp16") != std::string::npos);
    CHECK(fs::exists(dir / "run" / "training-state-000000000096.safetensors"));
    const Run bad = run_train("--outdir " + (dir / "bad").string() + " --data " + data.string() + tiny_args +
                              " --precision fp8");
    CHECK(bad.exit_code == 2);
    CHECK(bad.output.find("--precision: 'fp8' is not one of fp32, fp16, bf16") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "bad"));
}

TEST_CASE("mpnet-train: a latent dataset (the reference's .npy posteriors) trains a reduced img512 network") {
    const auto dir = fresh_dir("latent-data");
    nlohmann::json labels = nlohmann::json::array();
    for (int i = 0; i < 16; ++i) {
        // A [8, 8, 8] posterior: 4 mean planes with a class-dependent pattern, 4 std planes of 0.5.
        std::vector<float> v;
        for (int c = 0; c < 8; ++c)
            for (int p = 0; p < 64; ++p) v.push_back(c < 4 ? float((p / 8 == 2 * (i % 4)) * 6 - 2 + c) : 0.5f);
        std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (8, 8, 8), }";
        header.resize(117, ' ');
        header += '\n';
        std::string bytes = "\x93NUMPY";
        bytes += char(1), bytes += char(0), bytes += char(header.size()), bytes += char(0);
        bytes += header;
        bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
        char name[64];
        std::snprintf(name, sizeof name, "00000/img-mean-std-%08d.npy", i);
        fs::create_directories(dir / "00000");
        std::ofstream(dir / name, std::ios::binary) << bytes;
        labels.push_back({name, i % 4});
    }
    std::ofstream(dir / "dataset.json") << nlohmann::json{{"labels", labels}}.dump();
    const auto out = fresh_dir("latent-run");
    const std::string args = "--outdir " + out.string() + " --data " + dir.string() +
                             " --preset edm2-img512-xs --model-channels 16 --channel-mult 1,2 --num-blocks 1 "
                             "--attn-resolutions 4 --channels-per-head 16 --batch 8 --duration 48 --status 8 --checkpoint 24 --quiet";
    REQUIRE(run_train(args).exit_code == 0);
    const std::string log = slurp(out / "log.txt");
    CHECK(log.find("4x8x8, 4 classes, VAE latents, in memory") != std::string::npos);
    const auto f = io::SafetensorsFile::open(out / "network-snapshot-0000000-0.100.safetensors");
    const auto cfg = nlohmann::json::parse(f.metadata_or("config", "{}"));
    CHECK(cfg["img_channels"] == 4);
    CHECK(cfg["img_resolution"] == 8);
    // A run interrupted at its checkpoint resumes to the same bits (the latent noise is a pure
    // function of the position, like everything else).
    const auto half = fresh_dir("latent-half");
    const std::string half_args = "--outdir " + half.string() + " --data " + dir.string() +
                                  " --preset edm2-img512-xs --model-channels 16 --channel-mult 1,2 --num-blocks 1 "
                                  "--attn-resolutions 4 --channels-per-head 16 --batch 8 --status 8 --checkpoint 24 --quiet --duration ";
    REQUIRE(run_train(half_args + "24").exit_code == 0);
    REQUIRE(run_train(half_args + "48").exit_code == 0);
    CHECK(slurp(half / "training-state-000000000048.safetensors") == slurp(out / "training-state-000000000048.safetensors"));
}

TEST_CASE("mpnet-train: bad input gives a clear error and a non-zero exit") {
    const auto out = fresh_dir("cli-bad");
    auto expect_error = [&](const std::string& args, const std::string& text, int code = 1) {
        CAPTURE(args);
        const Run r = run_train(args);
        CHECK(r.exit_code == code);
        INFO(r.output);
        CHECK(r.output.find(text) != std::string::npos);
    };
    expect_error("--outdir " + (out / "a").string() + " --data /nonexistent/images" + tiny_args, "/nonexistent/images");
    const auto odd = bars_folder("odd", 12);
    expect_error("--outdir " + (out / "b").string() + " --data " + odd.string() + tiny_args, "not a power of two");
    expect_error("--outdir /proc/mpnet-cannot-write --data " + odd.string() + tiny_args, "/proc/mpnet-cannot-write");
    // Command-line errors: exit status 2, as in every mpnet program.
    expect_error("--outdir " + (out / "c").string() + " --batch 8 --batch-gpu 3", "--batch-gpu", 2);
    expect_error("--outdir " + (out / "d").string() + " --preset nonsense", "unknown preset", 2);
    expect_error("--outdir " + (out / "e").string() + " --duration 12xy", "not an image count", 2);
    // A rerun must not silently change the recipe of an existing run.
    const auto data = bars_folder("data-bad");
    REQUIRE(run_train("--outdir " + (out / "f").string() + " --data " + data.string() + tiny_args).exit_code == 0);
    expect_error("--outdir " + (out / "f").string() + " --data " + data.string() + tiny_args + " --seed 5",
                 "use a new --outdir");
}
#endif

// ---- the run directory: another run is never overwritten, nothing of this one is lost ----
namespace {

std::string bytes_of(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

// Rewrites a safetensors file with `edit` applied to its metadata (tensors copied as they are).
void edit_metadata(const fs::path& path, const std::function<void(std::map<std::string, std::string>&)>& edit) {
    const auto f = io::SafetensorsFile::open(path);
    io::SafetensorsWriter w;
    for (const auto& t : f.tensors()) w.add(t.name, t.dtype, t.shape, f.raw(t.name));
    auto meta = f.metadata();
    edit(meta);
    for (const auto& [k, v] : meta) w.set_metadata(k, v);
    w.write(path);
}

std::vector<std::string> checkpoint_names(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& p : train::list_checkpoints(dir)) names.push_back(p.filename().string());
    return names;
}

}  // namespace

TEST_CASE("run directory: checkpoints of another network are refused, not replaced, and --start-over sets them aside") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("foreign");
    train_to(ds, tiny_train_options(dir, 32));
    const fs::path mine = dir / "training-state-000000000032.safetensors";
    const std::string before = bytes_of(mine);

    auto more_classes = ds;  // the same options, but the data gained a class
    more_classes.num_classes = 5;
    std::string message;
    try {
        train::Trainer<float, CpuBackend> t(train::resolve(tiny_train_options(dir, 64), more_classes), more_classes,
                                            [](const std::string&) {});
        t.resume();
    } catch (const Error& e) {
        message = e.what();
    }
    CHECK(message.find("belongs to a run of another network (label_dim 4 vs 5)") != std::string::npos);
    CHECK(message.find("--start-over") != std::string::npos);
    CHECK(bytes_of(mine) == before);

    auto over = tiny_train_options(dir, 16);
    over.start_over = true;
    std::vector<std::string> log;
    train::Trainer<float, CpuBackend> fresh(train::resolve(over, more_classes), more_classes,
                                            [&](const std::string& s) { log.push_back(s); });
    CHECK_FALSE(fresh.resume());
    CHECK(bytes_of(dir / "previous-run-1" / mine.filename()) == before);
    CHECK(fs::exists(dir / "previous-run-1" / "options.json"));
    CHECK(checkpoint_names(dir).empty());
}

TEST_CASE("run directory: retention keeps this run's two newest checkpoints whatever else the folder holds") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("retention");
    for (const char* junk : {"training-state-000000999998.safetensors", "training-state-000000999999.safetensors"})
        std::ofstream(dir / junk) << "not a checkpoint";
    train_to(ds, tiny_train_options(dir, 64));  // checkpoints at 16, 32, 48, 64
    CHECK(checkpoint_names(dir) == std::vector<std::string>{"training-state-000000999999.safetensors",
                                                           "training-state-000000999998.safetensors",
                                                           "training-state-000000000064.safetensors",
                                                           "training-state-000000000048.safetensors"});
}

TEST_CASE("run directory: a checkpoint with bad metadata or a wrong tensor falls back, leaving no state half-loaded") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("fallback");
    train_to(ds, tiny_train_options(dir, 32));  // checkpoints at 16 and 32
    const fs::path newest = dir / "training-state-000000000032.safetensors";
    for (const auto& [what, edit] : std::vector<std::pair<std::string, std::function<void(std::map<std::string, std::string>&)>>>{
             {"metadata 'nimg' is missing", [](auto& m) { m.erase("nimg"); }},
             {"metadata 'loader_position' is not a non-negative integer: 'abc'",
              [](auto& m) { m["loader_position"] = "abc"; }}}) {
        CAPTURE(what);
        const std::string good = bytes_of(newest);
        edit_metadata(newest, edit);
        std::vector<std::string> log;
        train::Trainer<float, CpuBackend> t(train::resolve(tiny_train_options(dir, 32), ds), ds,
                                            [&](const std::string& s) { log.push_back(s); });
        REQUIRE(t.resume());
        CHECK(t.images_seen() == 16);
        REQUIRE(log.size() >= 2);
        CHECK(log[0].find(what) != std::string::npos);
        CHECK(log[1].find("resuming from") != std::string::npos);
        std::ofstream(newest, std::ios::binary) << good;
    }

    // The only checkpoint has a wrong EMA tensor (read after the network and Adam state): the
    // run starts afresh with exactly a fresh run's weights.
    const auto lone = fresh_dir("fallback-lone");
    train_to(ds, tiny_train_options(lone, 16));
    const fs::path only = lone / "training-state-000000000016.safetensors";
    {
        const auto f = io::SafetensorsFile::open(only);
        io::SafetensorsWriter w;
        for (const auto& t : f.tensors())
            if (t.name != "ema.1.unet.out_gain") w.add(t.name, t.dtype, t.shape, f.raw(t.name));
        const std::vector<float> wrong{1, 2};
        w.add<float>("ema.1.unet.out_gain", {2}, wrong);
        for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
        w.write(only);
    }
    std::vector<std::string> log;
    train::Trainer<float, CpuBackend> t(train::resolve(tiny_train_options(lone, 16), ds), ds,
                                        [&](const std::string& s) { log.push_back(s); });
    CHECK_FALSE(t.resume());
    REQUIRE(!log.empty());
    CHECK(log[0].find("ema.1.unet.out_gain") != std::string::npos);
    const auto other = fresh_dir("fallback-fresh");
    train::Trainer<float, CpuBackend> reference(train::resolve(tiny_train_options(other, 16), ds), ds,
                                                [](const std::string&) {});
    CHECK(flat_params(t.network()) == flat_params(reference.network()));
}

TEST_CASE("run directory: a resumed run's stats.jsonl and loss.svg hold every status line once") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("stats");
    auto o = tiny_train_options(dir, 48);
    o.checkpoint = 32;
    train_to(ds, o);
    // As if killed just before the final checkpoint: the resume goes back to 32 and passes 48 again.
    fs::remove(dir / "training-state-000000000048.safetensors");
    o.duration = 64;
    train_to(ds, o);
    std::vector<double> kimg;
    std::ifstream stats(dir / "stats.jsonl");
    for (std::string line; std::getline(stats, line);) kimg.push_back(nlohmann::json::parse(line)["kimg"].get<double>());
    CHECK(kimg == std::vector<double>{0.016, 0.032, 0.048, 0.064});
    const std::string svg = bytes_of(dir / "loss.svg");
    const auto smoothed = svg.find("stroke='#1f77b4'");
    REQUIRE(smoothed != std::string::npos);
    const auto points = svg.substr(svg.find("points='", smoothed), svg.find("'/>", smoothed) - svg.find("points='", smoothed));
    CHECK(std::count(points.begin(), points.end(), ',') == 4);
}

TEST_CASE("run directory: one trainer at a time, and the second is told the holder's process id") {
    const auto ds = bars_dataset();
    const auto dir = fresh_dir("lock");
    train::Trainer<float, CpuBackend> holder(train::resolve(tiny_train_options(dir, 16), ds), ds, [](const std::string&) {});
    std::string message;
    try {
        train::Trainer<float, CpuBackend> second(train::resolve(tiny_train_options(dir, 16), ds), ds, [](const std::string&) {});
    } catch (const Error& e) {
        message = e.what();
    }
    CAPTURE(message);
    CHECK(message.find("is in use by another trainer (process " + std::to_string(::getpid()) + ")") !=
          std::string::npos);
}

TEST_CASE("loss.svg: round ticks, the learning rate on its own axis, a smoothed curve") {
    CHECK(train::tick_label(0.25, 0.05) == "0.25");
    const auto t = train::nice_ticks(-0.4559, 1.13);
    CHECK(t.step == doctest::Approx(0.2));
    CHECK(t.first == doctest::Approx(-0.6));
    CHECK(t.last() == doctest::Approx(1.2));
    CHECK(train::nice_ticks(0, 57.808).step == doctest::Approx(10));
    const std::string svg = train::loss_curve_svg({0, 19.2, 38.4, 57.808}, {1.1, 0.5, 0.2, -0.455489}, {0, 0.01, 0.01, 0.009});
    for (const char* label : {">-0.6<", ">1.2<", ">0<", ">60<", ">0.010<", "learning rate", "smoothed"}) {
        CAPTURE(label);
        CHECK(svg.find(label) != std::string::npos);
    }
    CHECK(svg.find("57.808") == std::string::npos);
    CHECK(svg.find("0.455489") == std::string::npos);
}

#ifdef MPNET_TRAIN_EXE
TEST_CASE("mpnet-train: a failed start leaves the directory free, and errors reach log.txt") {
    const auto data = bars_folder("data-start");
    const auto dir = fresh_dir("cli-start");
    const std::string base = "--outdir " + dir.string() + " --data " + data.string() + tiny_args;
    CHECK(run_train("--outdir " + dir.string() + " --data " + data.string() + " --preset nosuch").exit_code == 2);
    CHECK(run_train("--outdir " + dir.string() + " --data " + data.string() + " --batch 0").exit_code == 2);
    CHECK(run_train("--outdir " + dir.string() + " --data /nonexistent/images" + tiny_args).exit_code == 1);
    CHECK_FALSE(fs::exists(dir / "options.json"));
    const Run ok = run_train(base);
    CHECK_MESSAGE(ok.exit_code == 0, ok.output);

    // The same directory with another seed is another run: refused, and said in log.txt too.
    const Run other = run_train(base + " --seed 5");
    CHECK(other.exit_code == 1);
    CHECK(other.output.find("seed 0 vs 5") != std::string::npos);
    CHECK(bytes_of(dir / "log.txt").find("error: ") != std::string::npos);
}

TEST_CASE("mpnet-train: --net-config and per-setting options change the network, bad ones are named") {
    const auto data = bars_folder("data-net");
    const auto dir = fresh_dir("cli-net");
    std::ofstream(dir / "net.json") << R"({"model_channels": 8, "channel_mult": [1, 2], "use_fp16": true})";
    const Run r = run_train("--outdir " + (dir / "run").string() + " --data " + data.string() + tiny_args +
                            " --net-config " + (dir / "net.json").string() + " --num-blocks 2 --attn-resolutions 8");
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    const auto snap = io::SafetensorsFile::open(dir / "run" / "network-snapshot-0000000-0.050.safetensors");
    const auto cfg = nn::config_from_json(snap.metadata().at("config"));
    CHECK(cfg.model_channels == 8);
    CHECK(cfg.channel_mult == std::vector<int64_t>{1, 2});
    CHECK(cfg.num_blocks == 2);
    CHECK(cfg.attn_resolutions == std::vector<int64_t>{8});
    CHECK(cfg.logvar_channels == 64);  // the preset's, untouched

    std::ofstream(dir / "typo.json") << R"({"model_chanels": 8})";
    const Run typo = run_train("--outdir " + (dir / "t").string() + " --net-config " + (dir / "typo.json").string());
    CHECK(typo.exit_code == 1);
    CHECK(typo.output.find("typo.json: network config: unknown setting 'model_chanels'") != std::string::npos);
    const Run shape = run_train("--outdir " + (dir / "s").string() + " --data " + data.string() + tiny_args +
                                " --net-config " + (dir / "net.json").string() + " --channels-per-head 5");
    CHECK(shape.exit_code == 1);
    CHECK(shape.output.find("do not split into heads of 5") != std::string::npos);
}
#endif
