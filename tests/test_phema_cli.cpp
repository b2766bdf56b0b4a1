// The mpnet-phema tool on small generated snapshot directories: a reconstruction checked
// against the same combination done in-process and against an EMA tracked directly, and every
// kind of bad input, each of which must fail with a message and leave no output behind.
#ifdef MPNET_PHEMA_EXE
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/phema/reconstruct.hpp"
#include "mpnet/phema/snapshot_files.hpp"
#include "mpnet/train/ema.hpp"
#include "run_command.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

const std::string config = R"({"img_resolution":8,"model_channels":4})";
const std::string prefix = "network-snapshot";
constexpr int64_t steps = 128, every = 8;  // one step = 1 kimg; 16 snapshot times

class TempDir {
public:
    TempDir() : path_(fs::temp_directory_path() / ("mpnet-phema-test-" + std::to_string(::getpid()) + "-" +
                                                   std::to_string(counter()++))) {
        fs::create_directories(path_);
    }
    ~TempDir() { fs::remove_all(path_); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] const fs::path& path() const { return path_; }

private:
    static int& counter() {
        static int n = 0;
        return n;
    }
    fs::path path_;
};

using Result = test::CommandResult;

Result run_phema(const std::string& args) {
    return test::run_command(std::string("'") + MPNET_PHEMA_EXE + "' " + args);
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// A snapshot's contents, editable before it is written.
struct Snapshot {
    std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors;
    std::map<std::string, std::string> metadata;

    // Plain writes: the atomic writer's fsyncs would dominate the run time of these tests.
    void write(const fs::path& path) const {
        io::SafetensorsWriter w;
        for (const auto& [name, t] : tensors) w.add<float>(name, t.first, std::span<const float>(t.second));
        for (const auto& [k, v] : metadata) w.set_metadata(k, v);
        const std::vector<std::byte> bytes = w.to_bytes();
        std::ofstream(path, std::ios::binary | std::ios::trunc)
            .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    }
    static Snapshot read(const fs::path& path) {
        const auto f = io::SafetensorsFile::open(path);
        Snapshot s{{}, f.metadata()};
        for (const auto& info : f.tensors()) s.tensors[info.name] = {info.shape, f.read<float>(info.name)};
        return s;
    }
};

// The parameters of a toy run at a step: a slow drift plus per-step noise.
std::vector<float> params_at(int64_t step, int64_t n, uint64_t seed) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; ++e)
        v[size_t(e)] = float(std::sin(0.02 * step + e) + 0.01 * step + 0.2 * rng::normal(seed, uint64_t(step * n + e)));
    return v;
}

using FloatEma = train::PowerEma<float, CpuBackend>;
using DoubleEma = train::PowerEma<double, CpuBackend>;

struct ToyRun {
    std::map<std::string, std::vector<double>> direct;      // the 0.07 EMA tracked in double
    std::map<std::string, std::vector<double>> half_range;  // (max - min) / 2 of each parameter's trajectory
};

// Writes the snapshots of a toy run (EMAs 0.05 and 0.10 in float, as a trainer keeps them)
// into dir.
ToyRun write_toy_run(const fs::path& dir) {
    const std::vector<int64_t> w_shape{4, 2, 3, 3}, g_shape{};
    auto float_params = [&](int64_t s) {
        return FloatEma::NamedTensors{{"unet.enc.conv.weight", CpuTensor<float>::from_host(Shape{4, 2, 3, 3}, params_at(s, 72, 1))},
                                      {"unet.out_gain", CpuTensor<float>::from_host(Shape{}, params_at(s, 1, 2))}};
    };
    auto double_params = [&](int64_t s) {
        DoubleEma::NamedTensors out;
        for (const auto& [name, t] : float_params(s)) {
            const auto h = t.to_host();
            out.emplace_back(name, CpuTensor<double>::from_host(t.shape(), std::vector<double>(h.begin(), h.end())));
        }
        return out;
    };
    FloatEma tracked({0.05, 0.10}, float_params(0));
    DoubleEma direct({0.07}, double_params(0));
    const std::vector<float> freqs = params_at(0, 8, 3);  // a fixed buffer, the same in every snapshot
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> lo_hi;
    for (int64_t s = 1; s <= steps; ++s) {
        for (const auto& [name, t] : double_params(s)) {
            auto& [lo, hi] = lo_hi[name];
            const auto v = t.to_host();
            lo.resize(v.size(), HUGE_VAL);
            hi.resize(v.size(), -HUGE_VAL);
            for (std::size_t e = 0; e < v.size(); ++e) lo[e] = std::min(lo[e], v[e]), hi[e] = std::max(hi[e], v[e]);
        }
        tracked.update(float_params(s), double(s) * 1000, 1000);
        direct.update(double_params(s), double(s) * 1000, 1000);
        if (s % every) continue;
        for (std::size_t k = 0; k < tracked.num_profiles(); ++k) {
            Snapshot snap;
            for (const auto& [name, t] : tracked.profile(k)) snap.tensors[name] = {t.shape().vec(), t.to_host()};
            snap.tensors["unet.emb_fourier.freqs"] = {{8}, freqs};
            char kimg[32], sigma[32];
            std::snprintf(kimg, sizeof kimg, "%.3f", double(s));
            std::snprintf(sigma, sizeof sigma, "%.3f", tracked.sigma_rel(k));
            snap.metadata = {{"config", config}, {"kimg", kimg}, {"sigma_rel", sigma}};
            snap.write(dir / phema::snapshot_file_name(prefix, s, tracked.sigma_rel(k)));
        }
    }
    ToyRun run;
    for (const auto& [name, t] : direct.profile(0)) run.direct[name] = t.to_host();
    for (const auto& [name, range] : lo_hi)
        for (std::size_t e = 0; e < range.first.size(); ++e)
            run.half_range[name].push_back((range.second[e] - range.first[e]) / 2);
    return run;
}

// ||R||_1 of test_phema.cpp's end-to-end case for this run: the L1 norm of the residual step
// weights of the fit, which bounds |reconstructed - tracked| / half-range for any trajectory.
double residual_l1(const std::vector<phema::Snapshot>& in, const Eigen::MatrixXd& x, double sigma_rel) {
    const auto weight = [](int64_t s, int64_t n, double gamma) {
        return std::pow(double(s) / double(n), gamma + 1) - std::pow(double(s - 1) / double(n), gamma + 1);
    };
    std::vector<double> r(steps + 1, 0.0);
    for (int64_t s = 1; s <= steps; ++s) r[size_t(s)] = -weight(s, steps, phema::std_to_exp(sigma_rel));
    for (std::size_t i = 0; i < in.size(); ++i) {
        const auto n = int64_t(std::llround(in[i].time));
        for (int64_t s = 1; s <= n; ++s)
            r[size_t(s)] += x(Eigen::Index(i), 0) * weight(s, n, phema::std_to_exp(in[i].sigma_rel));
    }
    double l1 = 0;
    for (const double v : r) l1 += std::abs(v);
    return l1;
}

std::size_t count_outputs(const fs::path& dir) {
    if (!fs::exists(dir)) return 0;
    std::size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().starts_with("phema");
    return n;
}

// Runs the tool on a fresh toy directory changed by `edit`, expects failure with `message`
// and no output file.
void expect_failure(const std::string& what, const std::function<void(const fs::path&)>& edit,
                    const std::string& args, const std::string& message, int status = 1) {
    CAPTURE(what);
    TempDir tmp;
    const fs::path in = tmp.path() / "in", out = tmp.path() / "out";
    fs::create_directories(in);
    write_toy_run(in);
    edit(in);
    const Result r = run_phema("--indir " + q(in) + " --outdir " + q(out) + " " + args);
    CAPTURE(r.output);
    CHECK(r.status == status);
    CHECK(r.output.find(message) != std::string::npos);
    CHECK(count_outputs(out) == 0);
    CHECK(count_outputs(in) == 0);
}

fs::path snapshot_path(const fs::path& dir, int64_t kimg, double sigma) {
    return dir / phema::snapshot_file_name(prefix, kimg, sigma);
}

void edit_snapshot(const fs::path& path, const std::function<void(Snapshot&)>& change) {
    Snapshot s = Snapshot::read(path);
    change(s);
    s.write(path);
}

}  // namespace

TEST_CASE("mpnet-phema: --help documents every option") {
    const Result r = run_phema("--help");
    CHECK(r.status == 0);
    for (const char* opt : {"--indir", "--prefix", "--in-std", "--out-std", "--out-kimg", "--outdir", "--out-prefix",
                            "--batch", "--quiet", "--help"})
        CHECK_MESSAGE(r.output.find(opt) != std::string::npos, opt);
}

TEST_CASE("mpnet-phema: reconstruction from a snapshot directory") {
    TempDir tmp;
    const fs::path in = tmp.path() / "in", out = tmp.path() / "out";
    fs::create_directories(in);
    const ToyRun run = write_toy_run(in);

    // Three outputs, two per pass: the snapshots are streamed twice.
    const Result r = run_phema("--indir " + q(in) + " --outdir " + q(out) + " --out-std 0.07,0.06:0.08:0.02 --batch 2");
    CAPTURE(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("reconstructing 3 profiles at kimg 128 from 32 snapshots") != std::string::npos);
    CHECK(r.output.find("pass 2/2: snapshot 32/32") != std::string::npos);
    CHECK(count_outputs(out) == 3);

    const auto got = io::SafetensorsFile::open(out / "phema-0000128-0.070.safetensors");
    CHECK(got.metadata_or("config", "") == config);
    CHECK(got.metadata_or("kimg", "") == "128");
    CHECK(got.metadata_or("sigma_rel", "") == "0.07");
    // The fixed buffer is copied bit for bit.
    const auto first = io::SafetensorsFile::open(snapshot_path(in, every, 0.05));
    const auto a = got.raw("unet.emb_fourier.freqs"), b = first.raw("unet.emb_fourier.freqs");
    CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));

    // The same combination in-process, in double from the stored floats.
    const auto files = phema::list_snapshot_files(in, prefix);
    std::vector<phema::Snapshot> profiles;
    for (const auto& f : files) profiles.push_back({f.time, f.sigma_rel});
    const Eigen::MatrixXd x = phema::solve_coefficients(profiles, {{double(steps), 0.07}});
    const double r_l1 = residual_l1(profiles, x, 0.07);
    for (const std::string name : {"unet.enc.conv.weight", "unet.out_gain"}) {
        CAPTURE(name);
        const auto& direct = run.direct.at(name);
        std::vector<double> want(direct.size(), 0.0);
        for (std::size_t i = 0; i < files.size(); ++i) {
            const auto v = io::SafetensorsFile::open(files[i].path).read<double>(name);
            for (std::size_t e = 0; e < v.size(); ++e) want[e] += x(Eigen::Index(i), 0) * v[e];
        }
        const auto tool = got.read<double>(name);
        double scale = 0, tool_err = 0, ema_ratio = 0;
        for (std::size_t e = 0; e < want.size(); ++e) {
            scale = std::max(scale, std::abs(want[e]));
            tool_err = std::max(tool_err, std::abs(tool[e] - want[e]));
            ema_ratio = std::max(ema_ratio, std::abs(tool[e] - direct[e]) / run.half_range.at(name)[e]);
        }
        MESSAGE(name << ": tool vs in-process " << tool_err / scale << " of max |value|; vs the 0.07 EMA tracked "
                     << "directly " << ema_ratio << " of the half-range, bound ||R||_1 = " << r_l1);
        CHECK(tool_err <= 1e-6 * scale);  // the output's float rounding (6e-8) and that of the snapshots
        // The fit's bound ||R||_1 (test_phema.cpp), plus float rounding: snapshots tracked and
        // stored in float (~1e-7 relative, times sum |x_i| ~ 1.4) against a double EMA.
        CHECK(ema_ratio <= r_l1 + 1e-5);
    }
}

TEST_CASE("mpnet-phema: input filters, time and prefix options") {
    TempDir tmp;
    const fs::path in = tmp.path() / "in", out = tmp.path() / "out";
    fs::create_directories(in);
    write_toy_run(in);
    const Result r = run_phema("--indir " + q(in) + " --outdir " + q(out) + " --in-std 0.05 --out-std 0.06 "
                               "--out-kimg 64 --out-prefix rebuilt --quiet");
    CAPTURE(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("pass") == std::string::npos);  // --quiet
    CHECK(fs::exists(out / "rebuilt-0000064-0.060.safetensors"));
}

TEST_CASE("mpnet-phema: bad input fails cleanly") {
    const auto none = [](const fs::path&) {};
    expect_failure(
        "missing directory", [](const fs::path& in) { fs::remove_all(in); }, "--out-std 0.07", "no such directory");
    expect_failure(
        "empty directory",
        [](const fs::path& in) {
            fs::remove_all(in);
            fs::create_directories(in);
        },
        "--out-std 0.07",
        "no files named network-snapshot-<kimg>-<sigma_rel>.safetensors");
    expect_failure("other prefix", none, "--out-std 0.07 --prefix other", "no files named other-");
    expect_failure("no snapshot at that time", none, "--out-std 0.07 --out-kimg 100",
                   "--out-kimg 100 is the time of no input snapshot");
    expect_failure("target too wide", none, "--out-std 0.5", "--out-std 0.5 is outside the valid range");
    expect_failure("targets sharing a file name", none, "--out-std 0.0701,0.0704", "would both be written");
    expect_failure(
        "a tensor of another shape",
        [](const fs::path& in) {
            edit_snapshot(snapshot_path(in, 64, 0.1), [](Snapshot& s) { s.tensors["unet.out_gain"].first = {1}; });
        },
        "--out-std 0.07", "network-snapshot-0000064-0.100.safetensors: tensor 'unet.out_gain' is F32 [1], but F32 []");
    expect_failure(
        "a missing tensor",
        [](const fs::path& in) {
            edit_snapshot(snapshot_path(in, 96, 0.05), [](Snapshot& s) { s.tensors.erase("unet.out_gain"); });
        },
        "--out-std 0.07", "network-snapshot-0000096-0.050.safetensors: has no tensor 'unet.out_gain'");
    expect_failure(
        "mixed configs",
        [](const fs::path& in) {
            edit_snapshot(snapshot_path(in, 32, 0.05), [](Snapshot& s) { s.metadata["config"] = "{}"; });
        },
        "--out-std 0.07", "network-snapshot-0000032-0.050.safetensors: its network config differs");
    expect_failure(
        "metadata contradicting the name",
        [](const fs::path& in) {
            edit_snapshot(snapshot_path(in, 32, 0.05), [](Snapshot& s) { s.metadata["kimg"] = "40"; });
        },
        "--out-std 0.07", "metadata kimg 40 contradicts the file name's 32");
    expect_failure(
        "a truncated file",
        [](const fs::path& in) { fs::resize_file(snapshot_path(in, 16, 0.1), 100); }, "--out-std 0.07",
        "network-snapshot-0000016-0.100.safetensors: ");
    // Two files describing one profile (their metadata agree on sigma_rel 0.0505): the system is
    // singular and a coefficient comes out non-finite.
    expect_failure(
        "a duplicate profile",
        [](const fs::path& in) {
            edit_snapshot(snapshot_path(in, 128, 0.05), [](Snapshot& s) { s.metadata["sigma_rel"] = "0.0505"; });
            fs::copy_file(snapshot_path(in, 128, 0.05), snapshot_path(in, 128, 0.051));
        },
        "--out-std 0.07", "is not finite");
    expect_failure(
        "a non-finite parameter",
        [](const fs::path& in) {
            edit_snapshot(snapshot_path(in, 120, 0.1), [](Snapshot& s) { s.tensors["unet.out_gain"].second[0] = NAN; });
        },
        "--out-std 0.07,0.08 --batch 1", "network-snapshot-0000120-0.100.safetensors: tensor 'unet.out_gain', element 0 is not finite");
    expect_failure("an option given twice", none, "--out-std 0.07 --out-std 0.08", "--out-std: given twice", 2);
    expect_failure("missing --out-std", none, "", "--out-std is required", 2);
    expect_failure("unknown option", none, "--out-std 0.07 --bogus", "unknown option --bogus", 2);
    expect_failure("bad range", none, "--out-std 0.1:0.05:0.01", "needs STEP > 0 and STOP >= START", 2);
}

TEST_CASE("mpnet-phema: refuses to overwrite its inputs") {
    TempDir tmp;
    write_toy_run(tmp.path());
    const Result r = run_phema("--indir " + q(tmp.path()) + " --outdir " + q(tmp.path()) +
                               " --out-std 0.05 --out-prefix network-snapshot");
    CAPTURE(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("output would overwrite an input snapshot") != std::string::npos);
}
TEST_CASE("mpnet-phema: a --batch beyond the number of outputs forms them all in one pass") {
    for (const char* batch : {"18446744073709551615", "9223372036854775808"}) {
        CAPTURE(batch);
        TempDir tmp;
        const fs::path in = tmp.path() / "in", out = tmp.path() / "out";
        fs::create_directories(in);
        write_toy_run(in);
        const Result r = run_phema("--indir " + q(in) + " --outdir " + q(out) + " --out-std 0.07,0.08 --batch " + batch);
        CAPTURE(r.output);
        CHECK(r.status == 0);
        CHECK(r.output.find("pass 1/1") != std::string::npos);
        CHECK(count_outputs(out) == 2);
    }
    const Result r = run_phema("--indir x --outdir y --out-std 0.07 --batch 18446744073709551616");
    CHECK(r.status == 2);
    CHECK(r.output.find("--batch: 18446744073709551616 is out of range") != std::string::npos);
}

#endif
