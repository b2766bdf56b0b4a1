// mpnet-generate: sample images from a trained EDM2 network with the EDM (Heun) sampler,
// optionally guided by a second network, and write them as PNG files and/or a grid. Under
// mpirun (built with MPI) the processes share the seeds and write the same files as one
// process would (docs/distributed.md).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "cli.hpp"
#include "device.hpp"
#include "metrics_engine.hpp"
#include "openmp_spin.hpp"
#include "processes.hpp"
#include "sampling_engine.hpp"
#include "mpnet/data/latents.hpp"
#include "mpnet/io/image_grid.hpp"
#include "mpnet/io/png.hpp"
#include "mpnet/sample/generation_presets.hpp"
#include "mpnet/sample/seeds.hpp"

namespace fs = std::filesystem;
using namespace mpnet;
using cli::UsageError;
using TensorF = CpuTensor<float>;

namespace {

struct Options {
    fs::path net, gnet, outdir, grid, noise, out_tensor, vae, models;
    fs::path metrics_ref, save_stats;  // scoring on the fly (docs/metrics.md)
    cli::ScoringOptions scoring;
    std::string preset;
    double guidance = 1;
    std::optional<std::vector<uint64_t>> seeds;
    std::optional<int64_t> cls;
    std::optional<std::vector<std::string>> class_names;
    sample::SamplerOptions sampler;
    int64_t batch = 32;
    bool quiet = false;
    cli::DeviceOption device;
    bool cuda_graphs = false;
    double collective_timeout = 3600;  // seconds, under an MPI launcher
    std::vector<std::string> args;     // as given, which every rank must share
};

cli::Parser make_parser(Options& o) {
    auto& s = o.sampler;
    cli::Parser p("mpnet-generate --net FILE (--outdir DIR | --grid FILE.png) [options]",
                  R"(Samples images from an EDM2 network with the EDM sampler (Heun's 2nd-order
method, Karras et al. 2022) as EDM2 uses it, optionally guided by a second
network: D = g + w (net - g).

Image i starts from the noise normal(seed_i) over one image and, when churn is
on, draws its extra noise from seed_i's own stream, so an image depends only on
its seed and the options: never on --batch or the thread count (OMP_NUM_THREADS).)");
    p.section("Networks")
        .value("--preset", "NAME", "the main network, guide and guidance weight of a preset of\nthe EDM2 authors' generate_images.py, e.g.\nedm2-img512-xs-guid-fid (docs/pretrained.md lists them); the\nnetworks are <stem of the pickle>.safetensors in --models",
               [&](const std::string& v) { o.preset = v; })
        .value("--models", "DIR", "folder of the converted networks --preset names",
               [&](const std::string& v) { o.models = v; })
        .value("--vae", "FILE", "latent networks: decode their latents to RGB with this\nautoencoder (diffusers' diffusion_pytorch_model.safetensors of\nstabilityai/sd-vae-ft-mse, float32 or float16), as EDM2 does",
               [&](const std::string& v) { o.vae = v; })
        .value("--net", "FILE", "weights file (safetensors with the network configuration in\nits metadata, as mpnet-train and mpnet-phema write them)",
               [&](const std::string& v) { o.net = v; })
        .value("--gnet", "FILE", "guiding network: same image shape; the same label_dim, or\nunconditional (label_dim 0) for classifier-free guidance",
               [&](const std::string& v) { o.gnet = v; })
        .value("--guidance", "W", "guidance weight w (default 1: the guide is not evaluated)",
               [&](const std::string& v) { o.guidance = cli::parse_real("--guidance", v); })
        .value("--guidance-interval", "LO,HI", "guide only at noise levels in [LO, HI] (Kynkaanniemi et al.\n2024); elsewhere the network alone (default 0,inf)",
               [&](const std::string& v) {
                   const auto ends = cli::split_commas(v);
                   if (ends.size() != 2) throw UsageError("--guidance-interval: expected LO,HI, got '" + v + "'");
                   s.guidance_sigma_min = cli::parse_real("--guidance-interval", ends[0], cli::non_negative);
                   s.guidance_sigma_max = cli::parse_real("--guidance-interval", ends[1],
                                                          {0, std::numeric_limits<double>::infinity()});
               });
    p.section("Images")
        .value("--seeds", "LIST", "seeds, one image each: numbers and inclusive ranges, e.g.\n0-63,100 (default 0-63)",
               [&](const std::string& v) {
                   try {
                       o.seeds = sample::parse_seeds(v);
                   } catch (const Error& e) {
                       throw UsageError(std::string("--seeds: ") + e.what());
                   }
               })
        .value("--class", "K", "class label of every image (conditional networks); without\nit each image gets a class drawn from its seed's own stream",
               [&](const std::string& v) { o.cls = cli::parse_integer<int64_t>("--class", v, 0); })
        .value("--class-names", "L", "comma-separated class names for the grid labels (default:\nthe weights file's `class_names` metadata, a JSON list, if any)",
               [&](const std::string& v) { o.class_names = cli::split_commas(v); })
        .value("--noise", "FILE", "start from the tensor `noise` [N, C, H, W] of a safetensors\nfile instead of seeded noise; labels come from --class, else\nfrom its tensor `labels` [N, label_dim] if present, else from\nthe seeds. --seeds, if given, names the N images (default 0..N-1)",
               [&](const std::string& v) { o.noise = v; });
    p.section("Sampler")
        .value("--steps", "N", "number of noise levels (default 32; 2N-1 network evaluations)",
               [&](const std::string& v) { s.steps = cli::parse_integer<int>("--steps", v); })
        .value("--sigma-min", "S", "lowest noise level (default 0.002)",
               [&](const std::string& v) { s.sigma_min = cli::parse_real("--sigma-min", v, cli::positive); })
        .value("--sigma-max", "S", "highest noise level (default 80)",
               [&](const std::string& v) { s.sigma_max = cli::parse_real("--sigma-max", v, cli::positive); })
        .value("--rho", "R", "schedule exponent (default 7)",
               [&](const std::string& v) { s.rho = cli::parse_real("--rho", v, cli::positive); })
        .value("--S-churn", "C", "stochasticity (default 0: deterministic)",
               [&](const std::string& v) { s.S_churn = cli::parse_real("--S-churn", v, cli::non_negative); })
        .value("--S-min", "S", "churn only for noise levels in [S-min, S-max] (default 0)",
               [&](const std::string& v) { s.S_min = cli::parse_real("--S-min", v, cli::non_negative); })
        .value("--S-max", "S", "(default inf: no upper limit)",
               [&](const std::string& v) {
                   s.S_max = cli::parse_real("--S-max", v, {0, std::numeric_limits<double>::infinity()});
               })
        .value("--S-noise", "S", "scale of the churn noise (default 1)",
               [&](const std::string& v) { s.S_noise = cli::parse_real("--S-noise", v, cli::non_negative); })
        .flag("--euler", "first-order steps only (N network evaluations)", [&] { s.euler = true; })
        .value("--batch", "N", "images per network call (default 32); changes speed and\nmemory, never the images",
               [&](const std::string& v) { o.batch = cli::parse_integer<int64_t>("--batch", v, 1, 1 << 16); });
    p.section("Device")
        .value("--device", "DEVICE", cli::device_help, [&](const std::string& v) { cli::parse_device(v, o.device); })
        .value("--math", "MODE", cli::math_help, [&](const std::string& v) { cli::parse_math(v, o.device); })
        .value("--precision", "FORMAT", cli::precision_help,
               [&](const std::string& v) { cli::parse_precision(v, o.device); })
        .value("--cuda-graphs", "BOOL", "on the GPU, capture each network evaluation once as a CUDA\ngraph and replay it (default: false)",
               [&](const std::string& v) { o.cuda_graphs = cli::parse_bool("--cuda-graphs", v); });
    p.section("Output (at least one of)")
        .value("--outdir", "DIR", "one PNG per seed: DIR/<seed/1000*1000, 6 digits>/<seed, 6\ndigits>.png, e.g. DIR/000000/000123.png",
               [&](const std::string& v) { o.outdir = v; })
        .value("--grid", "FILE.png", "all images in one PNG: rows by class, each labelled with its\nclass number (and name), for a conditional network; a plain\nnear-square grid otherwise",
               [&](const std::string& v) { o.grid = v; })
        .value("--out-tensor", "FILE", "the raw sampler output (before quantisation) as the float32\ntensor `images` [N, C, H, W] of a safetensors file, in seed\norder, with the seeds in its metadata; any channel count",
               [&](const std::string& v) { o.out_tensor = v; })
        .flag("--quiet", "no progress line or summary, only errors", [&] { o.quiet = true; });
    p.section("Scoring on the fly (FID, FD_DINOv2 as the EDM2 authors compute them; docs/metrics.md)")
        .value("--metrics-ref", "FILE", "score the images against these reference statistics (mpnet's\n.safetensors or the authors' .pkl) and print \"fid = ...\",\n\"fd_dinov2 = ...\"; the images need not be written",
               [&](const std::string& v) { o.metrics_ref = v; })
        .value("--save-stats", "FILE", "write the images' feature statistics (.safetensors)",
               [&](const std::string& v) { o.save_stats = v; })
        .value("--inception", "FILE", "Inception-v3 weights: scores fid", [&](const std::string& v) { o.scoring.inception = v; })
        .value("--dinov2", "FILE", "DINOv2 ViT-L/14 weights: scores fd_dinov2", [&](const std::string& v) { o.scoring.dinov2 = v; });
    p.section("Processes (under mpirun or another MPI launcher; docs/distributed.md)")
        .value("--collective-timeout", "SECONDS", "longest wait for the other processes (at the end, for\n--grid and --out-tensor: their last batch) before the job\nis stopped (default: 3600)",
               [&](const std::string& v) {
                   o.collective_timeout = cli::parse_real("--collective-timeout", v, {1, 1e6, false, false});
               });
    p.epilog(R"(Pixels are uint8(clip(x * 127.5 + 128, 0, 255)): 1 channel is written as a
grayscale PNG, 3 channels as RGB. With --vae, the latents are first brought back
to the autoencoder's scale with the network's `encoder` metadata (mpnet-convert
writes it; EDM2's defaults otherwise) and decoded one image at a time to
uint8(clip(x, 0, 1) * 255), as EDM2's StabilityVAEEncoder does; --out-tensor
still holds the latents. Every file is written atomically. A run whose
network gives non-finite values (NaN weights, overflow) fails instead of writing
black images.

Exit status: 0 on success, 1 on bad input or a failed run, 2 on a command-line
error.)");
    return p;
}

// --preset NAME sets --net, --gnet and --guidance from the authors' table; giving any of
// them as well would leave it unclear which one holds.
void apply_preset(const cli::Parser& parser, Options& o) {
    const auto* p = sample::find_generation_preset(o.preset);
    if (!p) {
        std::string names;
        for (const auto& q : sample::generation_presets) names += std::string(names.empty() ? "" : ", ") + std::string(q.name);
        throw UsageError("--preset: unknown preset '" + o.preset + "' (" + names + ")");
    }
    for (const char* option : {"--net", "--gnet", "--guidance"})
        if (parser.given(option)) throw UsageError(std::string("--preset sets ") + option + "; give one or the other");
    if (o.models.empty()) throw UsageError("--preset needs --models DIR, the folder of the converted networks");
    o.net = o.models / (std::string(p->net) + ".safetensors");
    if (!p->gnet.empty()) o.gnet = o.models / (std::string(p->gnet) + ".safetensors");
    o.guidance = p->guidance;
}

Options parse_args(int argc, char** argv) {
    Options o;
    cli::Parser parser = make_parser(o);
    parser.parse(argc, argv);
    o.args.assign(argv + 1, argv + argc);
    if (!o.preset.empty()) apply_preset(parser, o);
    else if (!o.models.empty()) throw UsageError("--models is for --preset");
    if (o.net.empty()) throw UsageError("--net is required");
    const bool scoring = !o.metrics_ref.empty() || !o.save_stats.empty();
    if (o.outdir.empty() && o.grid.empty() && o.out_tensor.empty() && !scoring)
        throw UsageError("give --outdir or --grid (or --out-tensor, --metrics-ref, --save-stats)");
    if (!o.scoring.inception.empty()) o.scoring.metrics.push_back("fid");
    if (!o.scoring.dinov2.empty()) o.scoring.metrics.push_back("fd_dinov2");
    if (scoring && o.scoring.metrics.empty())
        throw UsageError("--metrics-ref and --save-stats need --inception FILE and/or --dinov2 FILE");
    if (!scoring && !o.scoring.metrics.empty())
        throw UsageError("--inception and --dinov2 are for --metrics-ref or --save-stats");
    o.sampler.guidance = o.guidance;
    cli::as_usage_error([&] { o.sampler.validate(); });
    cli::check_device_options(o.device);
    if (o.cuda_graphs && !o.device.cuda) throw UsageError("--cuda-graphs applies to --device cuda only");
    if (o.guidance != 1 && o.gnet.empty()) throw UsageError("--guidance needs a guiding network (--gnet)");
    return o;
}


// The guide must produce the same images; it may drop the labels (classifier-free guidance).
void check_guide(const nn::NetworkConfig& a, const nn::NetworkConfig& b, const fs::path& path) {
    check(a.img_channels == b.img_channels && a.img_resolution == b.img_resolution, "--gnet ", path.string(),
          ": the guide makes ", b.img_channels, "x", b.img_resolution, "x", b.img_resolution, " images, the network ",
          a.img_channels, "x", a.img_resolution, "x", a.img_resolution);
    check(b.label_dim == a.label_dim || b.label_dim == 0, "--gnet ", path.string(), ": the guide has label_dim ",
          b.label_dim, ", the network ", a.label_dim, " (a guide must match it or be unconditional)");
}

// Everything the images are made from, whole-run: noise source, seeds, labels.
struct Plan {
    std::vector<uint64_t> seeds;
    std::optional<TensorF> noise;     // [N, C, H, W] from --noise
    std::optional<TensorF> labels;    // [N, label_dim] from --noise's file
    std::vector<int64_t> classes;     // per image (conditional networks), for one-hot labels and the grid
};

TensorF read_tensor(const io::SafetensorsFile& file, const std::string& name) {
    const auto& info = file.info(name);
    return TensorF::from_host(Shape(std::span<const int64_t>(info.shape)), file.read<float>(name));
}

int64_t argmax_row(const TensorF& labels, int64_t i) {
    const int64_t d = labels.size(1);
    const float* row = labels.data() + i * d;
    return std::max_element(row, row + d) - row;
}

Plan make_plan(const Options& o, const nn::NetworkConfig& cfg) {
    Plan p;
    if (!o.noise.empty()) {
        const auto file = io::SafetensorsFile::open(o.noise);
        check(file.contains("noise"), o.noise.string(), ": no tensor named 'noise'");
        p.noise = read_tensor(file, "noise");
        const Shape want{p.noise->size(0), cfg.img_channels, cfg.img_resolution, cfg.img_resolution};
        check(p.noise->rank() == 4 && p.noise->shape() == want, o.noise.string(), ": noise ", p.noise->shape().str(),
              " does not fit the network's ", cfg.img_channels, "x", cfg.img_resolution, "x", cfg.img_resolution,
              " images");
        cli::check_finite(std::span<const float>(p.noise->data(), size_t(p.noise->numel())),
                          o.noise.string() + ": tensor 'noise'");
        const int64_t n = p.noise->size(0);
        p.seeds = o.seeds ? *o.seeds : sample::parse_seeds("0-" + std::to_string(n - 1));
        check(int64_t(p.seeds.size()) == n, "--seeds names ", p.seeds.size(), " images, ", o.noise.string(), " holds ",
              n);
        if (cfg.label_dim && !o.cls && file.contains("labels")) {
            p.labels = read_tensor(file, "labels");
            check(p.labels->shape() == Shape{n, cfg.label_dim}, o.noise.string(), ": labels ",
                  p.labels->shape().str(), " do not fit ", n, " images of ", cfg.label_dim, " classes");
        }
    } else {
        p.seeds = o.seeds ? *o.seeds : sample::parse_seeds("0-63");
    }
    if (o.cls) {
        check(cfg.label_dim > 0, "--class: the network is unconditional");
        check(*o.cls >= 0 && *o.cls < cfg.label_dim, "--class ", *o.cls, " is outside [0, ", cfg.label_dim - 1, "]");
    }
    if (cfg.label_dim)
        for (std::size_t i = 0; i < p.seeds.size(); ++i)
            p.classes.push_back(o.cls ? *o.cls
                                : p.labels ? argmax_row(*p.labels, int64_t(i))
                                           : sample::seed_class(p.seeds[i], cfg.label_dim));
    return p;
}

fs::path image_path(const fs::path& outdir, uint64_t seed) {
    char dir[32], file[40];
    std::snprintf(dir, sizeof dir, "%06llu", static_cast<unsigned long long>(seed / 1000 * 1000));
    std::snprintf(file, sizeof file, "%06llu.png", static_cast<unsigned long long>(seed));
    return outdir / dir / file;
}

// Creates every folder the run writes to before any sampling, so that a bad path fails fast.
void prepare_outputs(const Options& o, const Plan& p) {
    if (!o.outdir.empty()) {
        std::set<fs::path> dirs;
        for (uint64_t s : p.seeds) dirs.insert(image_path(o.outdir, s).parent_path());
        for (const auto& d : dirs) {
            std::error_code ec;
            fs::create_directories(d, ec);
            if (ec) fail("--outdir ", o.outdir.string(), ": cannot create ", d.string(), ": ", ec.message());
            check(::access(d.c_str(), W_OK) == 0, "--outdir ", o.outdir.string(), ": ", d.string(),
                  " is not writable");
        }
    }
    if (!o.out_tensor.empty()) {
        check(!fs::is_directory(o.out_tensor), "--out-tensor ", o.out_tensor.string(), " is a folder, not a file name");
        const fs::path dir = o.out_tensor.parent_path().empty() ? fs::path(".") : o.out_tensor.parent_path();
        check(fs::is_directory(dir) && ::access(dir.c_str(), W_OK) == 0, "--out-tensor ", o.out_tensor.string(),
              ": folder ", dir.string(), " does not exist or is not writable");
    }
    if (!o.grid.empty()) {
        check(!fs::is_directory(o.grid), "--grid ", o.grid.string(), " is a folder, not a file name");
        const fs::path dir = o.grid.parent_path().empty() ? fs::path(".") : o.grid.parent_path();
        check(fs::is_directory(dir), "--grid ", o.grid.string(), ": folder ", dir.string(), " does not exist");
        check(::access(dir.c_str(), W_OK) == 0, "--grid ", o.grid.string(), ": folder ", dir.string(),
              " is not writable");
    }
}

// Progress on one terminal line; one line per batch when stderr is a log file.
class Progress {
public:
    Progress(bool quiet, std::size_t total) : quiet_(quiet), tty_(::isatty(STDERR_FILENO) != 0), total_(total) {}

    void step(std::size_t done, std::size_t batch, const sample::SampleProgress& s) const {
        if (quiet_ || (!tty_ && s.step != s.steps)) return;
        std::fprintf(stderr, "%simages %zu-%zu of %zu: step %d/%d, %.1f s%s", tty_ ? "\r\033[K" : "", done + 1,
                     done + batch, total_, s.step, s.steps, elapsed(), tty_ ? "" : "\n");
    }
    void finish(int64_t nfe) const {
        if (quiet_) return;
        const double t = elapsed();
        std::fprintf(stderr, "%s%zu images in %.1f s (%.4f s/image, %lld network evaluations per image)\n",
                     tty_ ? "\r\033[K" : "", total_, t, t / double(total_), static_cast<long long>(nfe));
    }
    [[nodiscard]] double elapsed() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

private:
    bool quiet_, tty_;
    std::size_t total_;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

std::vector<std::string> class_names(const Options& o) {
    if (o.class_names) return *o.class_names;
    const auto file = io::SafetensorsFile::open(o.net);
    const auto it = file.metadata().find("class_names");
    if (it == file.metadata().end()) return {};
    try {
        return nlohmann::json::parse(it->second).get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception& e) {
        fail("--net ", o.net.string(), ": metadata class_names is not a JSON list of strings: ", e.what());
    }
}

io::Image make_grid(const Plan& p, const std::vector<std::string>& names, const std::vector<io::Image>& images) {
    if (p.classes.empty()) return io::square_grid(images);
    std::map<int64_t, io::GridRow> rows;
    for (std::size_t i = 0; i < images.size(); ++i) {
        io::GridRow& row = rows[p.classes[i]];
        if (row.label.empty()) {
            const auto k = std::size_t(p.classes[i]);
            row.label = std::to_string(k) + (k < names.size() && !names[k].empty() ? " " + names[k] : "");
        }
        row.images.push_back(images[i]);
    }
    std::vector<io::GridRow> ordered;
    for (auto& [k, row] : rows) ordered.push_back(std::move(row));
    return io::labelled_grid(ordered);
}

void write_tensor(const fs::path& path, const std::vector<float>& raw, const std::vector<uint64_t>& seeds,
                  const nn::NetworkConfig& cfg) {
    io::SafetensorsWriter w;
    w.add<float>("images", {int64_t(seeds.size()), cfg.img_channels, cfg.img_resolution, cfg.img_resolution}, raw);
    nlohmann::json list = seeds;
    w.set_metadata("seeds", list.dump());
    w.write(path);
}

// A sampler output that is not finite would be written as black or saturated pixels.
void check_sampled(const TensorF& images, std::span<const uint64_t> seeds, const fs::path& net) {
    const int64_t per_image = images.numel() / images.size(0);
    const float* v = images.data();
    for (int64_t i = 0; i < images.numel(); ++i)
        check(std::isfinite(v[i]), "the image of seed ", seeds[size_t(i / per_image)],
              " came out non-finite: the network ", net.string(), " or the sampler settings overflow");
}

// The batches of --batch seeds each rank samples: batch b goes to rank b mod K. An image
// depends only on its seed, so any split gives the images one process makes.
bool mine(std::size_t batch_index, const dist::Communicator& comm) {
    return batch_index % std::size_t(comm.size()) == std::size_t(comm.rank());
}

// Rank 0's view of every rank's sampler output, in seed order: gathered in rank order,
// each rank's batches in turn, and put back in place.
std::vector<float> gather_outputs(dist::Communicator& comm, const std::vector<float>& raw, std::size_t images,
                                  std::size_t batch, std::size_t per_image) {
    const std::vector<float> gathered = comm.gather_floats_to_root(raw);
    if (!comm.is_root()) return {};
    std::vector<float> ordered(images * per_image);
    std::size_t at = 0;
    for (int r = 0; r < comm.size(); ++r)
        for (std::size_t begin = std::size_t(r) * batch; begin < images; begin += std::size_t(comm.size()) * batch) {
            const std::size_t n = (std::min(images, begin + batch) - begin) * per_image;
            std::copy_n(gathered.begin() + std::ptrdiff_t(at), n, ordered.begin() + std::ptrdiff_t(begin * per_image));
            at += n;
        }
    check(at == gathered.size(), "gathered ", gathered.size(), " values, expected ", at);
    return ordered;
}

// How a latent network's outputs become images: the autoencoder and the normalisation to undo.
struct Decoder {
    vae::AutoencoderConfig vae;  // the autoencoder itself is the engine's
    vae::LatentScaling scaling;
};

// The network's `encoder` metadata (mpnet-convert writes it from the pickle), if any.
std::optional<nlohmann::json> encoder_metadata(const fs::path& net) {
    const auto file = io::SafetensorsFile::open(net);
    const auto it = file.metadata().find("encoder");
    if (it == file.metadata().end()) return std::nullopt;
    try {
        return nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
        fail("--net ", net.string(), ": metadata `encoder` is not JSON: ", e.what());
    }
}

std::optional<Decoder> make_decoder(cli::SamplingEngine& engine, const Options& o, const nn::NetworkConfig& cfg, bool png) {
    const auto encoder = encoder_metadata(o.net);
    const std::string cls = encoder ? encoder->value("class", std::string()) : std::string();
    if (o.vae.empty()) {
        check(!png || cls != "StabilityVAEEncoder", "--net ", o.net.string(),
              " makes latents of the Stability VAE: give --vae FILE to decode them to images (or write them with "
              "--out-tensor)");
        return std::nullopt;
    }
    check(cls != "StandardRGBEncoder", "--vae: the network ", o.net.string(), " makes pixels, not latents");
    Decoder d{engine.load_vae(o.vae), {}};
    check(d.vae.latent_channels == cfg.img_channels && d.vae.out_channels == 3, "--vae ",
          o.vae.string(), ": the autoencoder's latents have ", d.vae.latent_channels,
          " channels, the network makes ", cfg.img_channels);
    if (cls == "StabilityVAEEncoder") {
        try {
            d.scaling = {encoder->at("scale").get<std::vector<double>>(), encoder->at("bias").get<std::vector<double>>()};
        } catch (const nlohmann::json::exception& e) {
            fail("--net ", o.net.string(), ": metadata `encoder` has no usable scale and bias: ", e.what());
        }
    } else {
        // A network without the metadata (trained by mpnet-train on latents): EDM2's normalisation.
        const auto n = data::stability_vae_normalization();
        d.scaling = {std::vector<double>(n.scale.begin(), n.scale.end()), std::vector<double>(n.bias.begin(), n.bias.end())};
    }
    check(d.scaling.scale.size() == std::size_t(cfg.img_channels) && d.scaling.bias.size() == d.scaling.scale.size(),
          "--net ", o.net.string(), ": the encoder's scale and bias have ", d.scaling.scale.size(), " channels, the network ",
          cfg.img_channels);
    return d;
}

// Images [H, W, C] as one channel-major batch [n, C, H, W].
std::vector<uint8_t> channel_major(const std::vector<io::Image>& images) {
    std::vector<uint8_t> out;
    for (const auto& img : images)
        for (int c = 0; c < img.channels; ++c)
            for (int y = 0; y < img.height; ++y)
                for (int x = 0; x < img.width; ++x)
                    out.push_back(img.at(x, y, c));
    return out;
}

void generate(const Options& o, dist::Communicator& comm) {
    cli::check_same_command(comm, o.args);
    cli::select_cpu_math(o.device, "mpnet-generate", comm.is_root() && !o.quiet);
    const std::unique_ptr<cli::SamplingEngine> engine =
#ifdef MPNET_WITH_CUDA
        o.device.cuda ? (cli::select_cuda_device(o.device, comm.rank()),
                         cli::make_cuda_sampling_engine(o.cuda_graphs, o.device.precision)) :
#endif
                      cli::make_cpu_sampling_engine(o.device.precision);
    const nn::NetworkConfig cfg = engine->load_net(o.net, "--net");
    if (!o.gnet.empty()) {
        check_guide(cfg, engine->load_guide(o.gnet, "--gnet"), o.gnet);
        if (o.guidance == 1 && !o.quiet && comm.is_root())
            std::fprintf(stderr, "mpnet-generate: warning: --guidance is 1, so the guiding network is not used\n");
    }
    const bool png = !o.outdir.empty() || !o.grid.empty();
    const bool scoring = !o.scoring.metrics.empty();
    std::optional<metrics::MetricStats> ref;  // read first: a bad file fails before the long part
    if (!o.metrics_ref.empty()) ref = cli::load_reference(o.metrics_ref, o.scoring.metrics);
    std::optional<cli::StatsRun> stats;
    if (scoring) stats.emplace(o.scoring, o.device);
    const std::optional<Decoder> decoder = make_decoder(*engine, o, cfg, png || scoring);
    check(!(png || scoring) || decoder || cfg.img_channels == 1 || cfg.img_channels == 3, "--net ", o.net.string(), ": ",
          cfg.img_channels, "-channel images cannot be written as PNG or scored (need 1 or 3 channels; --out-tensor takes any)");
    // The images' shape as written: the decoder's RGB at its scale, or the network's own.
    const int64_t shown_channels = decoder ? 3 : cfg.img_channels;
    const int64_t shown_resolution = cfg.img_resolution * (decoder ? decoder->vae.factor() : 1);
    const Plan p = make_plan(o, cfg);
    const std::vector<std::string> names = o.grid.empty() ? std::vector<std::string>{} : class_names(o);
    // Rank 0 makes the folders first: ranks creating one folder at once could race.
    if (comm.is_root()) prepare_outputs(o, p);
    (void)comm.any(false);
    if (!comm.is_root()) prepare_outputs(o, p);

    const Progress progress(o.quiet || !comm.is_root(), p.seeds.size());
    const bool gather = !o.grid.empty() || !o.out_tensor.empty();
    std::vector<float> raw;    // this rank's sampler outputs, for --out-tensor (and --grid without --vae)
    std::vector<float> shown;  // with --vae: this rank's decoded pixels, for --grid
    int64_t nfe = 0;
    for (std::size_t begin = 0, b = 0; begin < p.seeds.size(); begin += std::size_t(o.batch), ++b) {
        if (!mine(b, comm)) continue;
        const std::size_t end = std::min(p.seeds.size(), begin + std::size_t(o.batch));
        const std::span<const uint64_t> seeds(p.seeds.data() + begin, end - begin);
        const auto n = int64_t(seeds.size());
        TensorF noise(Shape{n, cfg.img_channels, cfg.img_resolution, cfg.img_resolution});
        if (p.noise) noise.copy_from(p.noise->slice(int64_t(begin), int64_t(end)));
        else sample::fill_seed_noise(noise, seeds);
        TensorF labels;
        if (p.labels) labels = p.labels->slice(int64_t(begin), int64_t(end));
        else if (cfg.label_dim)
            labels = sample::one_hot<float, CpuBackend>(std::span(p.classes).subspan(begin, end - begin), cfg.label_dim);
        sample::SampleHooks hooks{seeds, [&](const sample::SampleProgress& s) { progress.step(begin, seeds.size(), s); }};
        const auto result = engine->sample(noise, labels, o.sampler, hooks);
        nfe = result.nfe;
        check_sampled(result.images, seeds, o.net);
        if (gather) raw.insert(raw.end(), result.images.data(), result.images.data() + result.images.numel());
        if (!png && !scoring) continue;
        std::vector<io::Image> images;
        std::vector<uint8_t> pixels;  // [n, C, H, W] as written
        if (decoder) {
            pixels = engine->decode(result.images, decoder->scaling);
            if (!o.grid.empty()) shown.insert(shown.end(), pixels.begin(), pixels.end());
            images = io::images_from_pixels(pixels, n, 3, int(shown_resolution), int(shown_resolution));
        } else {
            images = io::images_from_batch(result.images);
            if (scoring) pixels = channel_major(images);
        }
        if (scoring) stats->add(metrics::ImageBatch{pixels, n, shown_channels, shown_resolution, shown_resolution});
        if (o.outdir.empty()) continue;
        for (std::size_t i = 0; i < images.size(); ++i) io::write_png(image_path(o.outdir, seeds[i]), images[i]);
    }
    if (gather) {
        const auto per_image = std::size_t(cfg.img_channels * cfg.img_resolution * cfg.img_resolution);
        const std::vector<float> all = gather_outputs(comm, raw, p.seeds.size(), std::size_t(o.batch), per_image);
        std::vector<float> all_shown;
        if (decoder && !o.grid.empty())
            all_shown = gather_outputs(comm, shown, p.seeds.size(), std::size_t(o.batch),
                                       std::size_t(shown_channels * shown_resolution * shown_resolution));
        if (comm.is_root()) {
            if (!o.grid.empty()) {
                const auto n = int64_t(p.seeds.size());
                std::vector<io::Image> images;
                if (decoder)
                    images = io::images_from_pixels(std::vector<uint8_t>(all_shown.begin(), all_shown.end()), n, 3,
                                                    int(shown_resolution), int(shown_resolution));
                else
                    images = io::images_from_batch(TensorF::from_host(
                        Shape{n, cfg.img_channels, cfg.img_resolution, cfg.img_resolution}, all));
                io::write_png(o.grid, make_grid(p, names, images));
            }
            if (!o.out_tensor.empty()) write_tensor(o.out_tensor, all, p.seeds, cfg);
        }
    }
    progress.finish(nfe);
    if (!scoring) return;
    const auto computed = stats->finish(comm);  // every process takes part
    if (!comm.is_root()) return;
    if (!o.save_stats.empty()) metrics::save_stats(computed, o.save_stats);
    if (ref) cli::print_distances(computed, *ref, o.scoring.metrics, o.metrics_ref.string());
}

void run(const Options& o) {
    cli::with_processes("mpnet-generate", o.collective_timeout, [&](dist::Communicator& comm) { generate(o, comm); });
}

}  // namespace

int main(int argc, char** argv) {
    cli::bound_openmp_spinning(argv);
    return cli::run_main("mpnet-generate", argc, argv, parse_args, run);
}
