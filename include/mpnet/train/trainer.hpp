// The EDM2 training loop (docs/design.md section 4): Precond with the learned-uncertainty loss,
// Adam with the EDM2 learning-rate schedule, forced weight normalisation, gradient
// accumulation, power-function EMA, snapshots, checkpoints and exact resume.
//
// Every random number is counter-based: sigma and noise of the image at global position g
// come from streams indexed by g, dropout masks from the step, and the data order from the
// loader position, so a resumed run continues exactly where the checkpoint left off.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "mpnet/data/loader.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/nn/weights.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/checkpoint.hpp"
#include "mpnet/train/ema.hpp"
#include "mpnet/train/loss_curve.hpp"
#include "mpnet/train/options.hpp"
#include "mpnet/train/schedule.hpp"

namespace mpnet::train {

// The options with every preset default filled in, and the network built for the data.
struct ResolvedRun {
    TrainOptions opt;
    nn::NetworkConfig net;
    double duration = 0, rampup = 0;
};

inline ResolvedRun resolve(TrainOptions opt, const data::Dataset& ds) {
    const nn::Preset p = nn::find_preset(opt.preset);
    ResolvedRun r{opt, p.net};
    r.net.img_resolution = ds.resolution;
    r.net.img_channels = ds.channels;
    check(!opt.cond || ds.num_classes > 0, ds.source, ": --cond needs class labels, and the dataset has none");
    r.net.label_dim = opt.cond ? ds.num_classes : 0;
    if (opt.dropout >= 0) r.net.dropout = opt.dropout;
    r.net.validate();
    auto& o = r.opt;
    if (o.lr <= 0) o.lr = p.train.lr;
    if (o.decay < 0) o.decay = p.train.decay;
    if (std::isnan(o.P_mean)) o.P_mean = p.train.P_mean;
    if (std::isnan(o.P_std)) o.P_std = p.train.P_std;
    if (o.batch_gpu <= 0) o.batch_gpu = o.batch;
    o.dropout = r.net.dropout;
    r.duration = o.duration > 0 ? o.duration : p.train.duration_mimg * 1e6;
    r.rampup = o.rampup >= 0 ? o.rampup : p.train.rampup_mimg * 1e6;
    check(o.batch > 0 && o.batch % o.batch_gpu == 0, "--batch ", o.batch, " is not a multiple of --batch-gpu ",
          o.batch_gpu);
    check(!o.ema.empty(), "--ema needs at least one sigma_rel");
    check(o.status > 0 && o.snapshot > 0 && o.checkpoint > 0, "--status, --snapshot and --checkpoint must be positive");
    return r;
}

// Purposes of the substreams drawn from the run's seed.
enum Stream : uint64_t { init_stream = 1, sigma_stream, noise_stream, dropout_stream, data_stream };

template <Scalar T, Backend B>
class Trainer {
public:
    using TensorT = Tensor<T, B>;
    using Log = std::function<void(const std::string&)>;

    Trainer(ResolvedRun run, const data::Dataset& ds, Log log)
        : run_(std::move(run)), ds_(ds), log_(std::move(log)), dir_(run_.opt.outdir),
          net_(run_.net, rng::substream(run_.opt.seed, init_stream)), adam_(net_),
          ema_(run_.opt.ema, named_params()),
          loader_(ds, run_.opt.batch_gpu, rng::substream(run_.opt.seed, data_stream), run_.opt.xflip) {}

    // Continues from the newest readable checkpoint in the run directory, if any. Temporary
    // files a killed run left behind are removed first.
    bool resume() {
        remove_stale_temporaries(dir_);
        for (const auto& path : list_checkpoints(dir_)) {
            try {
                load_checkpoint(path);
                log_("resuming from " + path.string() + " at kimg " + fixed(nimg_ / 1000, 1));
                return true;
            } catch (const Error& e) {
                log_("skipping unreadable checkpoint: " + std::string(e.what()));
            }
        }
        return false;
    }

    void run() {
        const auto& o = run_.opt;
        Timer interval;
        double interval_start = nimg_, loss_sum = 0;
        int64_t loss_count = 0;
        while (nimg_ < run_.duration) {
            const double loss = step();
            if (std::isfinite(loss)) {
                nonfinite_ = 0;
                loss_sum += loss, ++loss_count;
            } else {
                ++nonfinite_;
                check(nonfinite_ < o.max_nonfinite_steps, "training diverged: the loss was not finite for ",
                      nonfinite_, " consecutive steps (last checkpoint kept; try a lower --lr)");
            }
            const bool done = nimg_ >= run_.duration;
            if (crossed(o.status) || done) {
                status(interval.seconds(), nimg_ - interval_start, loss_count ? loss_sum / double(loss_count) : NAN);
                interval = Timer{};
                interval_start = nimg_, loss_sum = 0, loss_count = 0;
            }
            const bool snapshot = crossed(o.snapshot) || done, checkpoint = crossed(o.checkpoint) || done;
            if (nonfinite_ > 0 && (snapshot || checkpoint)) {
                // Weights that give a non-finite loss are not worth saving: the last good files stay.
                log_("not writing snapshots or a checkpoint: the last loss was not finite");
                continue;
            }
            if (snapshot) write_snapshots();
            if (checkpoint) write_checkpoint();
        }
    }

    [[nodiscard]] nn::Precond<T, B>& network() { return net_; }
    [[nodiscard]] const PowerEma<T, B>& ema() const { return ema_; }
    [[nodiscard]] double images_seen() const { return nimg_; }

private:
    struct Timer {
        std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
        [[nodiscard]] double seconds() const {
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
    };

    // One optimizer step over `batch` images in batch/batch_gpu rounds; returns the mean loss.
    double step() {
        const auto& o = run_.opt;
        const double lr = learning_rate(nimg_, double(o.batch), o.lr, o.decay, run_.rampup);
        net_.zero_grad();
        double loss_sum = 0;
        const int64_t rounds = o.batch / o.batch_gpu;
        for (int64_t r = 0; r < rounds; ++r) loss_sum += round(nimg_ + double(r * o.batch_gpu), r);
        int64_t replaced = 0;
        net_.visit([&](const std::string&, nn::Param<T, B>& p) { replaced += zero_nonfinite(B{}, p.grad); });
        adam_.step(lr);
        nimg_ += double(o.batch);
        ++step_;
        ema_.update(named_params(), nimg_, double(o.batch));
        last_lr_ = lr;
        return loss_sum / double(o.batch * ds_.channels * ds_.resolution * ds_.resolution);
    }

    // Forward and backward of batch_gpu images starting at global image index `first`.
    double round(double first, int64_t r) {
        const auto& o = run_.opt;
        const int64_t n = o.batch_gpu, C = ds_.channels, R = ds_.resolution, chw = C * R * R;
        const auto batch = loader_.next();
        const Shape shape{n, C, R, R};
        const TensorT y = TensorT::from_host(shape, std::span<const float>(batch.images));
        const uint64_t g0 = static_cast<uint64_t>(first);
        std::vector<T> sigma(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
            sigma[size_t(i)] = T(std::exp(
                o.P_mean + o.P_std * rng::normal(rng::substream(o.seed, sigma_stream), g0 + uint64_t(i))));
        const TensorT s = TensorT::from_host(Shape{n}, sigma);
        TensorT noisy(shape);
        fill_normal(B{}, noisy, rng::substream(o.seed, noise_stream), g0 * uint64_t(chw));
        TensorT nv = noisy.view(Shape{n, 1, chw});
        scale_channels_forward(B{}, nv, s, nv);
        axpby(B{}, T(1), y, T(1), noisy);
        TensorT labels;
        if (o.cond) labels = TensorT::from_host(Shape{n, ds_.num_classes}, std::span<const float>(batch.labels_onehot));
        typename nn::Precond<T, B>::Context ctx;
        const nn::ForwardMode mode{true, rng::substream(rng::substream(o.seed, dropout_stream), uint64_t(step_ * 4096 + r))};
        auto out = net_.forward(noisy, s, labels, mode, true, &ctx);
        TensorT dD(shape), dlogvar(Shape{n});
        const double loss = edm2_loss(B{}, out.D, y, s, out.logvar, run_.net.sigma_data, 1.0 / double(o.batch), dD, dlogvar);
        net_.backward(dD, dlogvar, ctx);
        return loss;
    }

    // True when the step just taken crossed a multiple of `interval` images.
    [[nodiscard]] bool crossed(double interval) const {
        const double before = nimg_ - double(run_.opt.batch);
        return std::floor(nimg_ / interval) > std::floor(before / interval);
    }

    typename PowerEma<T, B>::NamedTensors named_params() {
        typename PowerEma<T, B>::NamedTensors out;
        net_.visit([&](const std::string& name, nn::Param<T, B>& p) { out.emplace_back(name, p.value); });
        return out;
    }

    void status(double seconds, double images, double loss) {
        const double sec_per_kimg = images > 0 ? seconds / images * 1000 : 0;
        const double remaining = (run_.duration - nimg_) / 1000 * sec_per_kimg;
        const double mem_mb = peak_memory_mb();
        char line[256];
        std::snprintf(line, sizeof line, "kimg %9.1f  time %9s  sec/kimg %8.2f  loss %8.4f  lr %.5f  mem %7.1f MB  eta %s",
                      nimg_ / 1000, duration(total_.seconds()).c_str(), sec_per_kimg, loss, last_lr_, mem_mb,
                      duration(remaining).c_str());
        log_(line);
        kimg_.push_back(nimg_ / 1000);
        losses_.push_back(loss);
        nlohmann::json j{{"kimg", nimg_ / 1000}, {"step", step_},          {"time", total_.seconds()},
                         {"sec_per_kimg", sec_per_kimg}, {"loss", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json()},
                         {"lr", last_lr_},  {"peak_mem_mb", mem_mb}};
        std::ofstream(dir_ / "stats.jsonl", std::ios::app) << j.dump() << "\n";
        write_loss_curve(dir_ / "loss.svg", kimg_, losses_);
    }

    void write_snapshots() {
        for (size_t k = 0; k < ema_.num_profiles(); ++k) {
            io::SafetensorsWriter w;
            for (const auto& [name, t] : ema_.profile(k)) {
                const auto host = t.to_host();
                const std::vector<float> f(host.begin(), host.end());
                w.add<float>(name, t.shape().vec(), f);
            }
            net_.visit_buffers([&](const std::string& name, TensorT& t) {
                const auto host = t.to_host();
                const std::vector<float> f(host.begin(), host.end());
                w.add<float>(name, t.shape().vec(), f);
            });
            char tag[16];
            std::snprintf(tag, sizeof tag, "%.3f", ema_.sigma_rel(k));
            w.set_metadata("config", nn::to_json(run_.net));
            w.set_metadata("kimg", fixed(nimg_ / 1000, 3));
            w.set_metadata("sigma_rel", tag);
            w.write(dir_ / ("network-snapshot-" + kimg_tag(nimg_) + "-" + tag + ".safetensors"));
        }
    }

    void write_checkpoint() {
        io::SafetensorsWriter w;
        nn::for_each_state_tensor(net_, [&](const std::string& name, TensorT& t) {
            const auto host = t.to_host();
            w.add<T>("net." + name, t.shape().vec(), std::span<const T>(host));
        });
        adam_.save_state(w, "adam.");
        ema_.save_state(w, "ema.");
        w.set_metadata("format", "mpnet-training-state-1");
        w.set_metadata("config", nn::to_json(run_.net));
        w.set_metadata("nimg", std::to_string(static_cast<long long>(nimg_)));
        w.set_metadata("step", std::to_string(step_));
        w.set_metadata("loader_position", std::to_string(loader_.position()));
        w.write(checkpoint_path(dir_, nimg_));
        // Older checkpoints are removed only once the new one is safely in place.
        const auto all = list_checkpoints(dir_);
        for (size_t i = 2; i < all.size(); ++i) std::filesystem::remove(all[i]);
    }

    void load_checkpoint(const std::filesystem::path& path) {
        const auto f = io::SafetensorsFile::open(path);
        check(f.metadata_or("format", "") == "mpnet-training-state-1", f.label(), ": not an mpnet training state");
        check(f.metadata_or("config", "") == nn::to_json(run_.net), f.label(),
              ": the checkpoint's network configuration differs from this run's");
        nn::load_state(net_, f, "net.");
        adam_.load_state(f, "adam.");
        ema_.load_state(f, "ema.");
        nimg_ = std::stod(f.metadata().at("nimg"));
        step_ = std::stoll(f.metadata().at("step"));
        loader_.seek(std::stoull(f.metadata().at("loader_position")));
    }

    static double peak_memory_mb() {
        if constexpr (requires { B::peak_bytes(); }) return double(B::peak_bytes()) / 1048576.0;
        return 0;
    }
    static std::string fixed(double v, int digits) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.*f", digits, v);
        return buf;
    }
    static std::string duration(double s) {
        char buf[64];
        const auto t = static_cast<long long>(s);
        if (t >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, t / 60 % 60);
        else if (t >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
        else std::snprintf(buf, sizeof buf, "%.1fs", s);
        return buf;
    }

    ResolvedRun run_;
    const data::Dataset& ds_;
    Log log_;
    std::filesystem::path dir_;
    nn::Precond<T, B> net_;
    Adam<T, B> adam_;
    PowerEma<T, B> ema_;
    data::Loader loader_;
    double nimg_ = 0, last_lr_ = 0;
    int64_t step_ = 0, nonfinite_ = 0;
    Timer total_;
    std::vector<double> kimg_, losses_;
};

}  // namespace mpnet::train
