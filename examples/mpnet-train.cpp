// mpnet-train: trains an EDM2 denoiser on the CPU and writes power-function EMA snapshots
// that mpnet-phema and mpnet-generate read. Rerunning with the same --outdir resumes.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/data/load_dataset.hpp"
#include "mpnet/train/trainer.hpp"

namespace fs = std::filesystem;
using namespace mpnet;

namespace {

constexpr const char* usage_text = R"(Usage: mpnet-train --outdir DIR [options]

Trains an EDM2 denoiser (Precond + U-Net, learned-uncertainty loss, Adam with the
EDM2 learning-rate schedule, forced weight normalisation, power-function EMA).
Rerunning with the same --outdir continues from the latest checkpoint.

Image counts accept suffixes: 6400, 64k (1e3), 2M (1e6), 8Ki (2^10), 8Mi (2^20).

Options:
  --outdir DIR      run directory (created if missing)
  --data SPEC       dataset: fashion-mnist[:DIR] (Debian's dataset-fashion-mnist,
                    padded to 32x32), a directory of PNG images, or a .zip of them
                    (labels from an optional dataset.json) (default: fashion-mnist)
  --preset NAME     network and recipe preset (default: fmnist-s); one of
                    fmnist-s, fmnist-xs, rgb32-s, edm2-img64-{xs,s,m,l,xl},
                    edm2-img512-{xxs,xs,s,m,l,xl,xxl}
  --cond BOOL       class-conditional training (default: true; needs labels)
  --batch N         images per optimizer step (default: 64)
  --batch-gpu N     images per forward/backward round; gradients of
                    batch/batch-gpu rounds are accumulated (default: --batch)
  --duration N      training length in images (default: the preset's)
  --lr X            reference learning rate (default: the preset's)
  --decay N         batches before the 1/sqrt decay starts (default: preset's)
  --rampup N        learning-rate warm-up in images (default: the preset's)
  --dropout X       dropout probability (default: the preset's)
  --P_mean X        mean of ln(sigma) of the training noise (default: preset's)
  --P_std X         std of ln(sigma) of the training noise (default: preset's)
  --seed N          random seed (default: 0)
  --xflip BOOL      random left-right flips (default: false)
  --status N        images between status lines (default: 6400)
  --snapshot N      images between EMA snapshots, at least 1000 (default: 64k)
  --checkpoint N    images between training-state checkpoints (default: 32k)
  --ema LIST        sigma_rel of the tracked EMA profiles (default: 0.050,0.100)
  --quiet           print only errors
  -h, --help        print this help

Outputs in DIR: options.json, log.txt, stats.jsonl, loss.svg,
network-snapshot-<kimg>-<sigma_rel>.safetensors and
training-state-<images>.safetensors (the two newest are kept).
)";

bool parse_bool(const std::string& flag, const std::string& v) {
    if (v == "true" || v == "1" || v == "yes") return true;
    if (v == "false" || v == "0" || v == "no") return false;
    fail(flag, ": expected true or false, got '", v, "'");
}

double parse_number(const std::string& flag, const std::string& v) {
    try {
        std::size_t used = 0;
        const double x = std::stod(v, &used);
        if (used == v.size()) return x;
    } catch (const std::exception&) {
    }
    fail(flag, ": '", v, "' is not a number");
}

std::vector<double> parse_list(const std::string& flag, const std::string& v) {
    std::vector<double> out;
    std::stringstream ss(v);
    for (std::string item; std::getline(ss, item, ',');) out.push_back(parse_number(flag, item));
    return out;
}

train::TrainOptions parse_args(int argc, char** argv) {
    train::TrainOptions o;
    bool outdir_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "-h" || flag == "--help") {
            std::cout << usage_text;
            std::exit(0);
        }
        if (flag == "--quiet") {
            o.quiet = true;
            continue;
        }
        check(i + 1 < argc, flag, ": missing value (see --help)");
        const std::string v = argv[++i];
        if (flag == "--outdir") o.outdir = v, outdir_given = true;
        else if (flag == "--data") o.data = v;
        else if (flag == "--preset") o.preset = v;
        else if (flag == "--cond") o.cond = parse_bool(flag, v);
        else if (flag == "--batch") o.batch = int64_t(parse_number(flag, v));
        else if (flag == "--batch-gpu") o.batch_gpu = int64_t(parse_number(flag, v));
        else if (flag == "--duration") o.duration = train::parse_images(v);
        else if (flag == "--lr") o.lr = parse_number(flag, v);
        else if (flag == "--decay") o.decay = parse_number(flag, v);
        else if (flag == "--rampup") o.rampup = train::parse_images(v);
        else if (flag == "--dropout") o.dropout = parse_number(flag, v);
        else if (flag == "--P_mean") o.P_mean = parse_number(flag, v);
        else if (flag == "--P_std") o.P_std = parse_number(flag, v);
        else if (flag == "--seed") o.seed = uint64_t(parse_number(flag, v));
        else if (flag == "--xflip") o.xflip = parse_bool(flag, v);
        else if (flag == "--status") o.status = train::parse_images(v);
        else if (flag == "--snapshot") o.snapshot = train::parse_images(v);
        else if (flag == "--checkpoint") o.checkpoint = train::parse_images(v);
        else if (flag == "--ema") o.ema = parse_list(flag, v);
        else fail("unknown option '", flag, "' (see --help)");
    }
    check(outdir_given, "--outdir is required (see --help)");
    check(o.snapshot >= 1000, "--snapshot ", o.snapshot, " is below 1000 images: snapshot files are named by kimg");
    return o;
}

// The run directory must be writable before any work starts, and a resumed run must use
// the options it started with (its length and reporting intervals may change).
void prepare_outdir(const train::TrainOptions& o) {
    std::error_code ec;
    fs::create_directories(o.outdir, ec);
    check(!ec, o.outdir, ": cannot create the output directory: ", ec.message());
    const fs::path saved = fs::path(o.outdir) / "options.json";
    nlohmann::json now = o;
    for (const char* k : {"duration", "status", "snapshot", "checkpoint", "quiet", "outdir"}) now.erase(k);
    if (fs::exists(saved)) {
        nlohmann::json before;
        try {
            before = nlohmann::json::parse(std::ifstream(saved));
        } catch (const nlohmann::json::exception& e) {
            fail(saved.string(), ": not valid JSON: ", e.what());
        }
        for (const auto& [k, v] : now.items())
            check(before.contains(k) && before[k].dump() == v.dump(), saved.string(), ": this run was started with ", k, "=",
                  before.contains(k) ? before[k].dump() : "(unset)", ", not ", v.dump(),
                  "; use a new --outdir for different options");
    }
    const std::string text = nlohmann::json(o).dump(2) + "\n";
    io::write_file_atomic(saved, std::as_bytes(std::span(text.data(), text.size())));
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const auto opts = parse_args(argc, argv);
        prepare_outdir(opts);
        std::ofstream log_file(fs::path(opts.outdir) / "log.txt", std::ios::app);
        auto log = [&](const std::string& line) {
            log_file << line << std::endl;
            if (!opts.quiet) std::cout << line << std::endl;
        };
        const auto ds = data::load_dataset(opts.data);
        auto run = train::resolve(opts, ds);
        const auto cost = nn::network_cost(run.net);
        log("dataset " + ds.source + ": " + std::to_string(ds.size) + " images " + std::to_string(ds.channels) + "x" +
            std::to_string(ds.resolution) + "x" + std::to_string(ds.resolution) + ", " + std::to_string(ds.num_classes) +
            " classes");
        log("network " + opts.preset + ": " + std::to_string(cost.params) + " parameters, " +
            std::to_string(cost.macs * 2 / 1e9) + " GFLOP per image forward");
        train::Trainer<float, CpuBackend> trainer(run, ds, log);
        if (!trainer.resume()) log("starting a new run in " + opts.outdir);
        trainer.run();
        log("done: " + std::to_string(static_cast<long long>(trainer.images_seen())) + " images");
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "mpnet-train: error: " << e.what() << "\n";
        return 1;
    }
}
