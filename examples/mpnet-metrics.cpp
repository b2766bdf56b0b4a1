// mpnet-metrics: FID and FD_DINOv2 as the EDM2 authors compute them (calculate_metrics.py;
// docs/metrics.md). `ref` writes the feature statistics of a dataset, `calc` scores a
// folder or zip of images against reference statistics, `fd` compares two statistics files.
// Images are read, preprocessed and passed through the feature networks a batch at a time,
// so a run over 50 000 images holds one batch and the running sums, never the images.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "device.hpp"
#include "metrics_engine.hpp"
#include "progress.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/data/image_folder.hpp"
#include "mpnet/metrics/frechet.hpp"
#include "mpnet/metrics/stats_file.hpp"

namespace fs = std::filesystem;
using namespace mpnet;
using cli::UsageError;

namespace {

struct Options {
    std::string command;  // ref, calc or fd
    std::string images, dest, ref, stats, save_stats, inception, dinov2;
    std::vector<std::string> metrics{"fid", "fd_dinov2"};
    int64_t batch = 16;
    std::optional<int64_t> max_images;
    cli::DeviceOption device;
    bool quiet = false;
};

const char* overview = R"(Usage: mpnet-metrics (ref | calc | fd) [options]

FID and FD_DINOv2 as the EDM2 authors compute them (calculate_metrics.py):
Inception-v3 pool3 features and DINOv2 ViT-L/14 class-token features, their mean
and covariance in float64, and the Frechet distance between two such Gaussians.

Commands:
  ref    statistics of a dataset's images -> a .safetensors statistics file
  calc   score a folder or zip of images against reference statistics
  fd     the distances between two statistics files

Reference statistics may be mpnet's .safetensors files or the authors' .pkl files
(img512.pkl, img64.pkl...), which are read without running any pickled code.
Run 'mpnet-metrics <command> --help' for the options; docs/metrics.md explains how
to obtain and convert the feature networks' published weights.
)";

void add_metric_options(cli::Parser& p, Options& o) {
    p.value("--metrics", "LIST", "comma-separated: fid, fd_dinov2 (default: both)",
            [&](const std::string& v) {
                o.metrics = cli::split_commas(v);
                for (const auto& m : o.metrics)
                    if (m != "fid" && m != "fd_dinov2") cli::usage_error("--metrics: '", m, "' is not fid or fd_dinov2");
                if (o.metrics.empty()) cli::usage_error("--metrics: empty");
            });
}

void add_network_options(cli::Parser& p, Options& o) {
    add_metric_options(p, o);
    p.value("--inception", "FILE", "Inception-v3 weights (.safetensors, pytorch-fid's names); needed\nfor fid",
            [&](const std::string& v) { o.inception = v; })
        .value("--dinov2", "FILE", "DINOv2 ViT-L/14 weights (.safetensors, dinov2's names); needed\nfor fd_dinov2",
               [&](const std::string& v) { o.dinov2 = v; })
        .value("--batch", "N", "images per batch (default: 16)",
               [&](const std::string& v) { o.batch = cli::parse_integer<int64_t>("--batch", v, 1, 4096); })
        .value("--max-images", "N", "use the first N images in sorted order (default: all)",
               [&](const std::string& v) { o.max_images = cli::parse_integer<int64_t>("--max-images", v, 2); })
        .value("--device", "DEV", cli::device_help, [&](const std::string& v) { cli::parse_device(v, o.device); })
        .flag("--quiet", "no progress line", [&] { o.quiet = true; });
}

cli::Parser make_parser(Options& o) {
    const char* epilog = "Exit status: 0 on success, 1 on bad input or a failed run, 2 on a command-line\nerror.";
    if (o.command == "ref") {
        cli::Parser p("mpnet-metrics ref --data PATH --dest FILE [options]",
                      R"(Computes the feature statistics of a dataset (a folder or zip of PNG images, such
as mpnet-dataset writes) and saves them as reference statistics: per metric the
mean and covariance in float64. The file is written atomically.)");
        p.section("Options")
            .value("--data", "PATH", "the dataset: a folder (searched recursively) or a .zip of PNGs",
                   [&](const std::string& v) { o.images = v; })
            .value("--dest", "FILE", "the statistics file to write (.safetensors)", [&](const std::string& v) { o.dest = v; });
        add_network_options(p, o);
        p.epilog(epilog);
        return p;
    }
    if (o.command == "calc") {
        cli::Parser p("mpnet-metrics calc --images PATH --ref FILE [options]",
                      R"(Scores generated images: their feature statistics against the reference
statistics, printed as "fid = ..." and "fd_dinov2 = ..." lines on stdout.)");
        p.section("Options")
            .value("--images", "PATH", "the images: a folder (searched recursively) or a .zip of PNGs",
                   [&](const std::string& v) { o.images = v; })
            .value("--ref", "FILE", "reference statistics: mpnet's .safetensors or the authors' .pkl",
                   [&](const std::string& v) { o.ref = v; })
            .value("--save-stats", "FILE", "also write the images' statistics here (.safetensors)",
                   [&](const std::string& v) { o.save_stats = v; });
        add_network_options(p, o);
        p.epilog(epilog);
        return p;
    }
    cli::Parser p("mpnet-metrics fd --stats FILE --ref FILE [--metrics LIST]",
                  R"(Prints the Frechet distances between two statistics files, for each metric both
hold (or those --metrics names).)");
    p.section("Options")
        .value("--stats", "FILE", "statistics (.safetensors or .pkl)", [&](const std::string& v) { o.stats = v; })
        .value("--ref", "FILE", "reference statistics (.safetensors or .pkl)", [&](const std::string& v) { o.ref = v; });
    add_metric_options(p, o);
    p.epilog(epilog);
    return p;
}

Options parse_args(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
        if (argc >= 2) throw cli::HelpRequested{overview};
        throw UsageError("give a command: ref, calc or fd");
    }
    Options o;
    o.command = argv[1];
    if (o.command != "ref" && o.command != "calc" && o.command != "fd")
        throw UsageError("unknown command '" + o.command + "' (ref, calc, fd)");
    cli::Parser parser = make_parser(o);
    parser.parse(argc - 1, argv + 1);
    const bool metrics_given = parser.given("--metrics");
    if (o.command == "fd") {
        if (o.stats.empty() || o.ref.empty()) throw UsageError("--stats and --ref are required");
        if (!metrics_given) o.metrics.clear();  // every metric both files hold
        return o;
    }
    if (o.images.empty()) throw UsageError(o.command == "ref" ? "--data is required" : "--images is required");
    if (o.command == "ref" && o.dest.empty()) throw UsageError("--dest is required");
    if (o.command == "calc" && o.ref.empty()) throw UsageError("--ref is required");
    // Without --metrics, the metrics whose weights were given.
    if (!metrics_given) {
        o.metrics.clear();
        if (!o.inception.empty()) o.metrics.push_back("fid");
        if (!o.dinov2.empty()) o.metrics.push_back("fd_dinov2");
        if (o.metrics.empty()) throw UsageError("give --inception FILE (fid) and/or --dinov2 FILE (fd_dinov2)");
    }
    for (const auto& m : o.metrics) {
        if (m == "fid" && o.inception.empty()) throw UsageError("fid needs --inception FILE");
        if (m == "fd_dinov2" && o.dinov2.empty()) throw UsageError("fd_dinov2 needs --dinov2 FILE");
    }
    if (o.device.cuda) cli::check_device_options(o.device);
    return o;
}

// The statistics of the images under o.images for each of o.metrics.
metrics::MetricStats image_stats(const Options& o) {
    const auto ds = data::load_image_folder(o.images, data::Storage::stream);
    check(!ds.latent, o.images, ": holds latents (.npy), not images: score the decoded images");
    check(ds.channels == 1 || ds.channels == 3, o.images, ": images have ", ds.channels, " channels, not 1 or 3");
    const int64_t total = std::min(ds.size, o.max_images.value_or(ds.size));
    check(total >= 2, o.images, ": found ", total, " image(s), but statistics need at least 2");

#ifdef MPNET_WITH_CUDA
    if (o.device.cuda) cli::select_cuda_device(o.device, 0);
#endif
    cli::StatsRun run(cli::ScoringOptions{o.inception, o.dinov2, o.metrics}, o.device);

    const cli::ImageProgress progress(o.quiet, total);
    std::vector<uint8_t> pixels;
    for (int64_t first = 0; first < total; first += o.batch) {
        const int64_t n = std::min(o.batch, total - first);
        pixels.resize(std::size_t(n) * ds.image_bytes());
        for (int64_t i = 0; i < n; ++i) ds.read_image(first + i, pixels.data() + std::size_t(i) * ds.image_bytes());
        run.add(metrics::ImageBatch{pixels, n, ds.channels, ds.resolution, ds.resolution});
        progress.update(first + n);
    }
    dist::SingleProcess one;
    return run.finish(one);
}

void run(const Options& o) {
    if (o.command == "fd") {
        const auto stats = metrics::load_stats(o.stats);
        cli::print_distances(stats, metrics::load_stats(o.ref), o.metrics, o.ref);
        return;
    }
    if (o.command == "ref") {
        metrics::save_stats(image_stats(o), o.dest);
        return;
    }
    const auto ref = cli::load_reference(o.ref, o.metrics);  // a bad file fails before the long part
    const auto stats = image_stats(o);
    if (!o.save_stats.empty()) metrics::save_stats(stats, o.save_stats);
    cli::print_distances(stats, ref, o.metrics, o.ref);
}

}  // namespace

int main(int argc, char** argv) { return cli::run_main("mpnet-metrics", argc, argv, parse_args, run); }
