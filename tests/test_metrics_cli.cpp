// mpnet-metrics on small folders of PNGs with the formula-weight networks of the golden file:
// `ref` then `calc` against the same pipeline run in-process, `fd` on the saved statistics
// and on the authors' .pkl, mpnet-generate scoring its images on the fly against
// mpnet-metrics scoring the files it wrote, and the refusals (exit status, message, no file
// left behind).
#ifdef MPNET_METRICS_EXE
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "formula_weights.hpp"
#include "golden.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/io/png.hpp"
#include "mpnet/metrics/dinov2.hpp"
#include "mpnet/metrics/frechet.hpp"
#include "mpnet/metrics/inception_v3.hpp"
#include "mpnet/metrics/preprocess.hpp"
#include "mpnet/metrics/stats_file.hpp"
#include "run_command.hpp"
#ifdef MPNET_GENERATE_EXE
#include "mpnet/nn/weights.hpp"
#include "test_sampler_helpers.hpp"
#endif

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

using Result = test::CommandResult;
using test::run_command;

Result run_metrics(const std::string& args) { return run_command(std::string("'") + MPNET_METRICS_EXE + "' " + args); }

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// The value printed as "<metric> = <value>".
double printed(const std::string& output, const std::string& metric) {
    const std::regex line(metric + R"( = ([-+0-9.eE]+|nan|inf))");
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_search(output, m, line), "no '", metric, " = ' in: ", output);
    return std::stod(m[1].str());
}

// `count` random 16x16 RGB images (CHW), written as PNGs under dir; returned as one batch.
std::vector<uint8_t> write_images(const fs::path& dir, int count, uint64_t seed) {
    fs::create_directories(dir / "00000");
    constexpr int side = 16;
    std::vector<uint8_t> chw;
    for (int i = 0; i < count; ++i) {
        io::Image img(side, side, 3);
        for (int y = 0; y < side; ++y)
            for (int x = 0; x < side; ++x)
                for (int c = 0; c < 3; ++c)
                    img.at(x, y, c) = uint8_t(rng::bits(seed, uint64_t(((i * side + y) * side + x) * 3 + c)).v[0] % 256);
        for (int c = 0; c < 3; ++c)
            for (int y = 0; y < side; ++y)
                for (int x = 0; x < side; ++x) chw.push_back(img.at(x, y, c));
        const auto png = io::encode_png(img);
        char name[32];
        std::snprintf(name, sizeof name, "img%08d.png", i);
        std::ofstream(dir / "00000" / name, std::ios::binary)
            .write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
    }
    return chw;
}

// The statistics of a batch through the library, in one piece.
metrics::MetricStats stats_in_process(const std::vector<uint8_t>& chw, int64_t n, const io::SafetensorsFile& inception,
                                      const io::SafetensorsFile& dinov2) {
    const metrics::ImageBatch batch{chw, n, 3, 16, 16};
    const auto inc = metrics::InceptionV3<float, CpuBackend>::load(inception);
    const auto dino = metrics::DinoV2<float, CpuBackend>::load(dinov2, metrics::dinov2_size);
    metrics::StatsAccumulator a(2048), b(1024);
    a.add(std::span<const float>(inc.features(CpuTensor<float>::from_host(Shape{n, 3, 299, 299}, metrics::inception_input(batch))).to_host()), n);
    b.add(std::span<const float>(dino.features(CpuTensor<float>::from_host(Shape{n, 3, 224, 224}, metrics::dinov2_input(batch))).to_host()), n);
    return {{"fid", a.finish()}, {"fd_dinov2", b.finish()}};
}

// Means and covariances equal up to the order of the double-precision sums.
void check_same_stats(const metrics::FeatureStats& got, const metrics::FeatureStats& want) {
    REQUIRE(got.mu.size() == want.mu.size());
    REQUIRE(got.sigma.size() == want.sigma.size());
    CHECK(got.count == want.count);
    double mu = 0, mu_scale = 0, sigma = 0, sigma_scale = 0;
    for (std::size_t i = 0; i < got.mu.size(); ++i)
        mu = std::max(mu, std::abs(got.mu[i] - want.mu[i])), mu_scale = std::max(mu_scale, std::abs(want.mu[i]));
    for (std::size_t i = 0; i < got.sigma.size(); ++i)
        sigma = std::max(sigma, std::abs(got.sigma[i] - want.sigma[i])), sigma_scale = std::max(sigma_scale, std::abs(want.sigma[i]));
    CHECK(mu <= 1e-9 * mu_scale);
    CHECK(sigma <= 1e-9 * sigma_scale);
}

}  // namespace

TEST_CASE("mpnet-metrics: ref, calc and fd on folders of PNGs match the library in-process") {
    const fs::path dir = fs::temp_directory_path() / ("mpnet-metrics-cli-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const auto golden = io::SafetensorsFile::open(test::test_data_dir() + "/metrics_golden.safetensors");
    for (const char* net : {"inception", "dinov2"}) {
        const auto bytes = test::formula_weight_bytes(golden, net);
        std::ofstream(dir / (std::string(net) + ".safetensors"), std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    }
    const std::string nets = " --inception " + q(dir / "inception.safetensors") + " --dinov2 " + q(dir / "dinov2.safetensors");
    const auto a = write_images(dir / "a", 6, 1), b = write_images(dir / "b", 5, 2);

    auto r = run_metrics("ref --data " + q(dir / "a") + " --dest " + q(dir / "ref.safetensors") + nets + " --batch 4 --quiet");
    REQUIRE_MESSAGE(r.status == 0, r.output);
    r = run_metrics("calc --images " + q(dir / "b") + " --ref " + q(dir / "ref.safetensors") + nets +
                    " --batch 2 --quiet --save-stats " + q(dir / "b.safetensors"));
    REQUIRE_MESSAGE(r.status == 0, r.output);

    // The statistics the programs wrote are the library's on the same images in one batch:
    // the batches change only the order of the double-precision sums. (Each 2048-d distance
    // costs two eigen-decompositions, so the distances are compared between the programs.)
    const auto in_a = stats_in_process(a, 6, test::formula_weights(golden, "inception"), test::formula_weights(golden, "dinov2"));
    const auto in_b = stats_in_process(b, 5, test::formula_weights(golden, "inception"), test::formula_weights(golden, "dinov2"));
    const auto saved = metrics::load_stats(dir / "b.safetensors"), ref = metrics::load_stats(dir / "ref.safetensors");
    for (const char* m : {"fid", "fd_dinov2"}) {
        INFO(std::string(m));
        check_same_stats(saved.at(m), in_b.at(m));
        check_same_stats(ref.at(m), in_a.at(m));
        CHECK(printed(r.output, m) > 0);
    }
    CHECK(saved.at("fid").count == 5);
    CHECK(ref.at("fd_dinov2").count == 6);

    // fd: the saved statistics against the reference give the same lines; one metric on request.
    const auto fd = run_metrics("fd --stats " + q(dir / "b.safetensors") + " --ref " + q(dir / "ref.safetensors"));
    REQUIRE_MESSAGE(fd.status == 0, fd.output);
    for (const char* m : {"fid", "fd_dinov2"}) CHECK(printed(fd.output, m) == printed(r.output, m));
    const auto only = run_metrics("fd --stats " + q(dir / "b.safetensors") + " --ref " + q(dir / "ref.safetensors") +
                                  " --metrics fd_dinov2");
    CHECK(only.status == 0);
    CHECK(only.output.find("fid =") == std::string::npos);
    // The authors' .pkl as reference statistics: a file's distance to itself.
    const auto pkl = test::test_data_dir() + "/metrics_stats.pkl";
    const auto self = run_metrics("fd --stats " + q(pkl) + " --ref " + q(pkl));
    REQUIRE_MESSAGE(self.status == 0, self.output);
    CHECK(std::abs(printed(self.output, "fid")) < 1e-9);
    CHECK(std::abs(printed(self.output, "fd_dinov2")) < 1e-9);

#ifdef MPNET_GENERATE_EXE
    // mpnet-generate scoring on the fly: the statistics of the images it wrote, and the
    // distance mpnet-metrics gives them.
    auto tiny = test::tiny_network<float>(21);
    nn::save_weights(tiny, (dir / "net.safetensors").string());
    const std::string gen = std::string("'") + MPNET_GENERATE_EXE + "' --net " + q(dir / "net.safetensors") +
                            " --seeds 0-5 --steps 2 --batch 4 --quiet";
    auto g = run_command(gen + nets + " --outdir " + q(dir / "gen") + " --save-stats " + q(dir / "gen.safetensors"));
    REQUIRE_MESSAGE(g.status == 0, g.output);
    r = run_metrics("ref --data " + q(dir / "gen") + " --dest " + q(dir / "gen_files.safetensors") + nets + " --quiet");
    REQUIRE_MESSAGE(r.status == 0, r.output);
    const auto on_the_fly = metrics::load_stats(dir / "gen.safetensors"), from_files = metrics::load_stats(dir / "gen_files.safetensors");
    for (const char* m : {"fid", "fd_dinov2"}) check_same_stats(on_the_fly.at(m), from_files.at(m));
    CHECK(on_the_fly.at("fid").count == 6);
    g = run_command(gen + " --dinov2 " + q(dir / "dinov2.safetensors") + " --metrics-ref " + q(dir / "ref.safetensors"));
    REQUIRE_MESSAGE(g.status == 0, g.output);
    r = run_metrics("fd --stats " + q(dir / "gen_files.safetensors") + " --ref " + q(dir / "ref.safetensors") + " --metrics fd_dinov2");
    CHECK(g.output.find("fid =") == std::string::npos);
    CHECK(printed(g.output, "fd_dinov2") == doctest::Approx(printed(r.output, "fd_dinov2")).epsilon(1e-7));
    const std::string plain = std::string("'") + MPNET_GENERATE_EXE + "' --net " + q(dir / "net.safetensors") + " --seeds 0";
    const auto unscored = run_command(plain + " --save-stats " + q(dir / "x.safetensors") + " --inception " +
                                              q(dir / "nothing.safetensors"));
    CHECK(unscored.status == 1);
    CHECK(unscored.output.find("nothing.safetensors") != std::string::npos);
    const auto no_weights = run_command(plain + " --save-stats " + q(dir / "x.safetensors"));
    CHECK(no_weights.status == 2);
    CHECK(no_weights.output.find("need --inception FILE and/or --dinov2 FILE") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "x.safetensors"));
#endif

    SUBCASE("refusals") {
        struct Case {
            std::string args, message;
            int status;
        };
        const std::vector<Case> cases{
            {"calc --images " + q(dir / "b") + " --ref " + q(dir / "ref.safetensors"), "--inception FILE", 2},
            {"calc --images " + q(dir / "b") + " --ref " + q(dir / "ref.safetensors") + " --metrics fid", "fid needs --inception", 2},
            {"ref --data " + q(dir / "nowhere") + " --dest " + q(dir / "out.safetensors") + nets, "nowhere", 1},
            {"ref --data " + q(dir / "a") + " --dest " + q(dir / "out.safetensors") + " --inception " +
                 q(dir / "dinov2.safetensors"),
             "missing tensor 'Conv2d_1a_3x3.conv.weight'", 1},
            {"calc --images " + q(dir / "b") + " --ref " + q(pkl) + nets + " --max-images 1", "--max-images", 2},
            {"calc --images " + q(dir / "b") + " --ref " + q(dir / "b") + nets, "b", 1},
            {"fd --stats " + q(dir / "b.safetensors") + " --ref " + q(dir / "ref.safetensors") + " --metrics kid", "kid", 2},
            {"score", "unknown command 'score'", 2},
        };
        for (const auto& c : cases) {
            const auto res = run_metrics(c.args);
            INFO(c.args, " -> ", res.output);
            CHECK(res.status == c.status);
            CHECK(res.output.find(c.message) != std::string::npos);
        }
        CHECK_FALSE(fs::exists(dir / "out.safetensors"));
        // A reference without the metric asked for fails before any image is read.
        metrics::save_stats({{"fid", saved.at("fid")}}, dir / "fid_only.safetensors");
        const auto missing = run_metrics("calc --images " + q(dir / "b") + " --ref " + q(dir / "fid_only.safetensors") + nets);
        CHECK(missing.status == 1);
        CHECK(missing.output.find("no 'fd_dinov2' statistics") != std::string::npos);
    }
    fs::remove_all(dir);
}
#endif
