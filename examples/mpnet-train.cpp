// mpnet-train: trains an EDM2 denoiser on the CPU or a GPU and writes power-function EMA snapshots
// that mpnet-phema and mpnet-generate read. Rerunning with the same --outdir resumes. Under
// mpirun (built with MPI) the processes train one run data-parallel (docs/distributed.md).
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "cli.hpp"
#include "device.hpp"
#include "openmp_spin.hpp"
#include "processes.hpp"
#include "train_on.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/data/load_dataset.hpp"

namespace fs = std::filesystem;
using namespace mpnet;
using cli::UsageError;

namespace {

// Image counts ("6400", "64k", "8Mi") with the option named in the message.
double parse_images(const std::string& option, const std::string& text) {
    try {
        return train::parse_images(text);
    } catch (const Error& e) {
        throw UsageError(option + ": " + e.what());
    }
}

std::vector<double> parse_reals(const std::string& option, const std::string& text) {
    std::vector<double> out;
    for (const auto& item : cli::split_commas(text)) out.push_back(cli::parse_real(option, item));
    return out;
}

// A network setting's value, parsed as the type of its default (integer, real or a list).
nlohmann::json parse_setting(const std::string& option, const nlohmann::json& like, const std::string& text) {
    if (like.is_array()) {
        const nlohmann::json element = like.empty() ? nlohmann::json(0) : like.front();
        nlohmann::json list = nlohmann::json::array();
        for (const auto& item : cli::split_commas(text)) list.push_back(parse_setting(option, element, item));
        return list;
    }
    if (like.is_number_integer()) return cli::parse_integer<int64_t>(option, text);
    return cli::parse_real(option, text);
}

nlohmann::json read_net_config(const std::string& path) {
    std::ifstream in(path);
    check(bool(in), "--net-config ", path, ": cannot open");
    try {
        nlohmann::json j = nlohmann::json::parse(in);
        nn::normalize_config_json(j);
        return j;
    } catch (const nlohmann::json::exception& e) {
        fail("--net-config ", path, ": not valid JSON: ", e.what());
    } catch (const Error& e) {
        fail("--net-config ", path, ": ", e.what());
    }
}

struct Options {
    train::TrainOptions train;
    std::string net_config;
    nlohmann::json net_settings = nlohmann::json::object();  // from the per-setting options
    cli::DeviceOption device;
    bool cuda_graphs = false;                                // step parts replayed as CUDA graphs
    double collective_timeout = 600;                         // seconds, under an MPI launcher
};

// The network settings a user of the reference code changes, as options: --model-channels
// for model_channels and so on. The data decides the image shape and classes, and
// --dropout is an option of its own.
void add_network_options(cli::Parser& p, Options& o) {
    const nlohmann::json defaults = nn::NetworkConfig{};
    for (const auto& [key, like] : defaults.items()) {
        if (key == "img_resolution" || key == "img_channels" || key == "label_dim" || key == "dropout") continue;
        std::string name = "--" + key;
        std::replace(name.begin(), name.end(), '_', '-');
        const char* metavar = like.is_array() ? "LIST" : like.is_number_integer() ? "N" : "X";
        p.value(name, metavar, key + " (default: the preset's " + like.dump() + ")",
                [&o, name, key, like](const std::string& v) { o.net_settings[key] = parse_setting(name, like, v); });
    }
}

cli::Parser make_parser(Options& opts) {
    auto& o = opts.train;
    cli::Parser p("mpnet-train --outdir DIR [options]",
                  R"(Trains an EDM2 denoiser (Precond + U-Net, learned-uncertainty loss, Adam with the
EDM2 learning-rate schedule, forced weight normalisation, power-function EMA).
Rerunning with the same --outdir continues from the latest checkpoint; a
directory that holds another run is refused (see --start-over).

Image counts accept suffixes: 6400, 64k (1e3), 2M (1e6), 8Ki (2^10), 8Mi (2^20).)");
    p.section("Run")
        .value("--outdir", "DIR", "run directory (created if missing)", [&](const std::string& v) { o.outdir = v; })
        .value("--data", "SPEC", "dataset: fashion-mnist[:DIR] (Debian's dataset-fashion-mnist,\npadded to 32x32), a directory of PNG images, or a .zip of them\n(labels from an optional dataset.json) (default: fashion-mnist)",
               [&](const std::string& v) { o.data = v; })
        .value("--data-storage", "MODE", "a PNG folder or zip: memory (decoded up front), stream (each\nimage read when a batch needs it, on background threads), or\nauto: stream above 2 GiB of decoded pixels (default: auto)",
               [&](const std::string& v) {
                   if (v != "auto" && v != "memory" && v != "stream")
                       throw UsageError("--data-storage: '" + v + "' is not one of auto, memory, stream");
                   o.data_storage = v;
               })
        .value("--data-cache", "MiB", "a streamed dataset keeps up to this many MiB of decoded\nimages, the most recently used (default: 0, none)",
               [&](const std::string& v) { o.data_cache_mib = cli::parse_integer<int64_t>("--data-cache", v, 0, int64_t{1} << 40); })
        .flag("--skip-bad", "a folder or zip: replace an unreadable image or latent (corrupt,\ntruncated, another shape) by the next readable one and report\nit, instead of stopping (the same choice in memory and streamed)",
              [&] { o.skip_bad = true; })
        .value("--data-threads", "N", "threads decoding a streamed dataset's images (default: 1)",
               [&](const std::string& v) { o.data_threads = cli::parse_integer<int64_t>("--data-threads", v, 1, 256); })
        .value("--preset", "NAME", "network and recipe preset (default: fmnist-s); one of\nfmnist-s, fmnist-xs, rgb32-s, edm2-img64-{xs,s,m,l,xl},\nedm2-img512-{xxs,xs,s,m,l,xl,xxl}",
               [&](const std::string& v) { o.preset = v; })
        .value("--cond", "BOOL", "class-conditional training (default: true; needs labels)",
               [&](const std::string& v) { o.cond = cli::parse_bool("--cond", v); })
        .value("--device", "DEVICE", cli::device_help,
               [&](const std::string& v) { cli::parse_device(v, opts.device); })
        .value("--math", "MODE", cli::math_help, [&](const std::string& v) { cli::parse_math(v, opts.device); })
        .value("--precision", "FORMAT", cli::precision_help,
               [&](const std::string& v) { cli::parse_precision(v, opts.device); })
        .value("--cuda-graphs", "BOOL",
               "on the GPU, capture each part of a training step (weight\nnormalisation, a round of forward, loss and backward, the\nAdam and EMA update) once as a CUDA graph and replay it\n(default: false)",
               [&](const std::string& v) { opts.cuda_graphs = cli::parse_bool("--cuda-graphs", v); })
        .flag("--start-over", "if DIR holds another run, move its files to\nDIR/previous-run-<n>/ and start a new run instead of refusing",
              [&] { o.start_over = true; });
    p.section("Recipe")
        .value("--batch", "N", "images per optimizer step (default: 64)",
               [&](const std::string& v) { o.batch = cli::parse_integer<int64_t>("--batch", v, 1, o.max_batch); })
        .value("--batch-gpu", "N", "images per forward/backward round; gradients of\nbatch/batch-gpu rounds are accumulated (default: --batch,\nover K MPI processes --batch/K)",
               [&](const std::string& v) { o.batch_gpu = cli::parse_integer<int64_t>("--batch-gpu", v, 1, o.max_batch); })
        .value("--duration", "N", "training length in images (default: the preset's)",
               [&](const std::string& v) { o.duration = parse_images("--duration", v); })
        .value("--lr", "X", "reference learning rate (default: the preset's)",
               [&](const std::string& v) { o.lr = cli::parse_real("--lr", v, cli::positive); })
        .value("--decay", "N", "batches before the 1/sqrt decay starts; 0: no decay\n(default: the preset's)",
               [&](const std::string& v) { o.decay = cli::parse_real("--decay", v, cli::non_negative); })
        .value("--rampup", "N", "learning-rate warm-up in images (default: the preset's)",
               [&](const std::string& v) { o.rampup = parse_images("--rampup", v); })
        .value("--dropout", "X", "dropout probability in [0, 1) (default: the preset's)",
               [&](const std::string& v) { o.dropout = cli::parse_real("--dropout", v, {0, 1, false, true}); })
        .value("--P_mean", "X", "mean of ln(sigma) of the training noise (default: preset's)",
               [&](const std::string& v) { o.P_mean = cli::parse_real("--P_mean", v); })
        .value("--P_std", "X", "std of ln(sigma) of the training noise (default: preset's)",
               [&](const std::string& v) { o.P_std = cli::parse_real("--P_std", v, cli::positive); })
        .value("--ls", "X", "loss scaling: the loss's gradient is multiplied by X (Adam\nis not told, as in the reference) (default: 1)",
               [&](const std::string& v) { o.loss_scaling = cli::parse_real("--ls", v, cli::positive); })
        .value("--seed", "N", "random seed, 0 to 2^64-1 (default: 0)",
               [&](const std::string& v) { o.seed = cli::parse_integer<uint64_t>("--seed", v); })
        .value("--xflip", "BOOL", "random left-right flips (default: false)",
               [&](const std::string& v) { o.xflip = cli::parse_bool("--xflip", v); })
        .value("--ema", "LIST", "sigma_rel of the tracked EMA profiles, each in (0, 0.3003]\n(default: 0.050,0.100)",
               [&](const std::string& v) { o.ema = parse_reals("--ema", v); });
    p.section("Network (over the preset's; the data sets the image shape and classes)")
        .value("--net-config", "FILE", "network settings from a JSON object with the keys of the\nweights' `config` metadata (all or some of them)",
               [&](const std::string& v) { opts.net_config = v; });
    add_network_options(p, opts);
    p.section("Reporting")
        .value("--status", "N", "images between status lines (default: 6400)",
               [&](const std::string& v) { o.status = parse_images("--status", v); })
        .value("--snapshot", "N", "images between EMA snapshots, at least 1000 (default: 64k)",
               [&](const std::string& v) { o.snapshot = parse_images("--snapshot", v); })
        .value("--checkpoint", "N", "images between training-state checkpoints (default: 32k)",
               [&](const std::string& v) { o.checkpoint = parse_images("--checkpoint", v); })
        .flag("--quiet", "print only errors", [&] { o.quiet = true; });
    p.section("Processes (under mpirun or another MPI launcher; docs/distributed.md)")
        .value("--collective-timeout", "SECONDS", "longest wait for the other processes in one exchange\nbefore the job is stopped (default: 600)",
               [&](const std::string& v) {
                   opts.collective_timeout = cli::parse_real("--collective-timeout", v, {1, 1e6, false, false});
               });
    p.epilog(R"(Outputs in DIR: options.json, log.txt, stats.jsonl, loss.svg,
network-snapshot-<kimg>-<sigma_rel>.safetensors and
training-state-<images>.safetensors (the two newest are kept). One trainer at a
time holds DIR (the file DIR/.lock).

Exit status: 0 on success, 1 on bad input or a failed run, 2 on a command-line
error.)");
    return p;
}

Options parse_args(int argc, char** argv) {
    Options opts;
    cli::Parser parser = make_parser(opts);
    parser.parse(argc, argv);
    if (!parser.given("--outdir")) throw UsageError("--outdir is required");
    auto& o = opts.train;
    if (!opts.net_config.empty()) o.net = read_net_config(opts.net_config);
    for (const auto& [key, value] : opts.net_settings.items()) o.net[key] = value;
    cli::check_device_options(opts.device);
    if (opts.cuda_graphs && !opts.device.cuda) throw UsageError("--cuda-graphs applies to --device cuda only");
    cli::as_usage_error([&] {
        o.validate();
        (void)nn::find_preset(o.preset);
    });
    return opts;
}

// The run directory must be writable before any work starts (nothing is written in it yet).
void check_outdir(const std::string& outdir) {
    std::error_code ec;
    fs::create_directories(outdir, ec);
    check(!ec, outdir, ": cannot create the output directory: ", ec.message());
    check(::access(outdir.c_str(), W_OK) == 0, outdir, ": the output directory is not writable");
}

// Every rank must train the same run on the same data: ranks started with other options stop
// the job, with rank 0 naming each difference. The arithmetic is part of the run: ranks that
// round differently (another --math or --precision, or a GPU beside CPUs) would sum gradients
// that are not one computation's.
void check_same_run(dist::Communicator& comm, const train::ResolvedRun& run, const data::Dataset& ds,
                    const cli::DeviceOption& device) {
    if (comm.size() == 1) return;
    const nlohmann::json mine{{"options", run.opt},
                              {"dataset", {{"source", ds.source}, {"images", ds.size}, {"resolution", ds.resolution},
                                           {"channels", ds.channels}, {"classes", ds.num_classes}}},
                              {"arithmetic", {{"device", device.cuda ? "cuda" : "cpu"}, {"math", device.math},
                                              {"precision", device.precision}}}};
    const nlohmann::json root = nlohmann::json::parse(comm.broadcast(mine.dump()));
    std::string diff;
    for (const char* part : {"options", "dataset", "arithmetic"}) {
        const std::string d = train::json_differences(root[part], mine[part]);
        if (!d.empty()) diff += (diff.empty() ? "" : "; ") + std::string(part) + ": " + d;
    }
    cli::stop_unless_ranks_agree(comm, diff, "settings");
}

void train_here(const Options& opts, dist::Communicator& comm) {
    const auto& o = opts.train;
    const bool root = comm.is_root();
#ifdef MPNET_WITH_CUDA
    if (opts.device.cuda) cli::select_cuda_device(opts.device, comm.rank());
#endif
    cli::select_cpu_math(opts.device, "mpnet-train", root);
    if (root) check_outdir(o.outdir);
    // Lines are kept until the trainer holds the directory: log.txt belongs to its run.
    // Rank 0 speaks for the run; the other ranks only report their own errors.
    std::vector<std::string> pending;
    std::ofstream log_file;
    auto log = [&](const std::string& line) {
        if (!root) return;
        if (log_file.is_open()) log_file << line << std::endl;
        else pending.push_back(line);
        if (!o.quiet) std::cout << line << std::endl;
    };
    std::shared_ptr<data::BadSamples> skip;
    if (o.skip_bad)
        skip = std::make_shared<data::BadSamples>([&](const std::string& m) {
            // Every rank reads its own share of the data, and says what it skipped.
            const std::string who = comm.size() > 1 ? "rank " + std::to_string(comm.rank()) + ": " : "";
            std::fprintf(stderr, "mpnet-train: warning: %s%s\n", who.c_str(), m.c_str());
        });
    const auto storage = o.data_storage == "memory"   ? data::Storage::memory
                         : o.data_storage == "stream" ? data::Storage::stream
                                                      : data::Storage::automatic;
    const auto ds = data::load_dataset(o.data, storage, skip, std::size_t(o.data_cache_mib) << 20);
    auto resolved = train::resolve(o, ds, comm.size());
    check_same_run(comm, resolved, ds, opts.device);
    const auto cost = nn::network_cost(resolved.net);
    const std::size_t sample_bytes = ds.latent ? ds.latent_floats() * sizeof(float) : ds.image_bytes();
    log("dataset " + ds.source + ": " + std::to_string(ds.size) + " images " + std::to_string(ds.channels) + "x" +
        std::to_string(ds.resolution) + "x" + std::to_string(ds.resolution) + ", " + std::to_string(ds.num_classes) +
        " classes, " + (ds.latent ? "VAE latents, " : "") +
        (ds.streamed() ? "streamed (" + std::to_string(std::lround(double(ds.size) * double(sample_bytes) / 1048576.0)) +
                             " MB decoded, never held whole)"
                       : "in memory (" + std::to_string(std::lround(double(ds.size) * double(sample_bytes) / 1048576.0)) + " MB)"));
    log("network " + o.preset + ": " + std::to_string(cost.params) + " parameters, " +
        std::to_string(cost.macs * 2 / 1e9) + " GFLOP per image forward");
    if (comm.size() > 1) {
        const int64_t chunks = resolved.opt.batch / resolved.opt.batch_gpu / comm.size();
        log("data parallel over " + std::to_string(comm.size()) + " processes, each " + std::to_string(chunks) +
            " round(s) of " + std::to_string(resolved.opt.batch_gpu) + " images per step" +
            (std::has_single_bit(uint64_t(chunks))
                 ? ""
                 : " (not a power of two: the gradient sum is grouped unlike one process's, see docs/distributed.md)"));
    }
    log("device " + opts.device.str() + ", math " + opts.device.math + ", activations " + opts.device.precision);
    auto holding_dir = [&] {
        if (!root) return;
        log_file.open(fs::path(o.outdir) / "log.txt", std::ios::app);
        for (const auto& line : pending) log_file << line << "\n";
    };
    double images = 0;
    try {
#ifdef MPNET_WITH_CUDA
        if (opts.device.cuda)
            images = cli::train_on_cuda(resolved, ds, log, comm, holding_dir, opts.cuda_graphs, opts.device.precision);
        else
#endif
            if (opts.device.precision != "fp32")
                images = cli::train_on_cpu_half(resolved, ds, log, comm, holding_dir, opts.device.precision);
            else
                images = cli::train_on<CpuBackend>(resolved, ds, log, comm, holding_dir);
    } catch (const std::exception& e) {
        if (log_file.is_open()) log_file << "error: " << e.what() << std::endl;
        throw;
    }
    log("done: " + std::to_string(static_cast<long long>(images)) + " images");
}

void run(const Options& opts) {
    cli::with_processes("mpnet-train", opts.collective_timeout,
                        [&](dist::Communicator& comm) { train_here(opts, comm); });
}

}  // namespace

int main(int argc, char** argv) {
    cli::bound_openmp_spinning(argv);
    return cli::run_main("mpnet-train", argc, argv, parse_args, run);
}
