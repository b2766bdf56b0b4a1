// The EDM2 training loop (docs/design.md section 4): Precond with the learned-uncertainty loss,
// Adam with the EDM2 learning-rate schedule, forced weight normalisation, gradient
// accumulation, power-function EMA, snapshots, checkpoints and exact resume.
//
// Every random number is counter-based: sigma and noise of the image at global position g
// come from streams indexed by g, dropout masks from the step, and the data order from the
// loader position, so a resumed run continues exactly where the checkpoint left off.
//
// Data parallelism (docs/distributed.md): with a Communicator of K processes, each process
// runs its own N/K of the step's N chunks of --batch-gpu images (the same images, noise and
// dropout as one process gives those chunks), the chunk gradients are added in the tree
// order of dist/tree_order.hpp, and every process takes the same Adam step. Rank 0 alone
// holds the run directory, keeps the EMA and writes files; the others receive its state.
#pragma once
#include <unistd.h>

#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mpnet/data/cached_reader.hpp"
#include "mpnet/data/loader.hpp"
#include "mpnet/dist/communicator.hpp"
#include "mpnet/dist/tree_order.hpp"
#include "mpnet/nn/presets.hpp"
#include "mpnet/nn/weights.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/checkpoint.hpp"
#include "mpnet/train/ema.hpp"
#include "mpnet/train/loss_curve.hpp"
#include "mpnet/train/options.hpp"
#include "mpnet/train/host_staging.hpp"
#include "mpnet/train/step_runner.hpp"
#include "mpnet/train/run_directory.hpp"
#include "mpnet/train/schedule.hpp"

namespace mpnet::train {

// The options with every preset default filled in, and the network built for the data.
struct ResolvedRun {
    TrainOptions opt;
    nn::NetworkConfig net;
    double duration = 0, rampup = 0;
};

// The preset's network with the run's settings over it (opt.net: NetworkConfig keys, as a
// --net-config file or per-setting options give them), sized for the data. A setting the
// data decides (resolution, channels, classes) may be given only with the data's value.
inline nn::NetworkConfig resolve_network(const TrainOptions& opt, const nn::NetworkConfig& preset,
                                         const data::Dataset& ds) {
    nlohmann::json j = nlohmann::json(preset);
    for (const auto& [key, value] : opt.net.items()) {
        check(j.contains(key), "network setting '", key, "' is unknown");
        j[key] = value;
    }
    check(!opt.cond || ds.num_classes > 0, ds.source, ": --cond needs class labels, and the dataset has none");
    const nlohmann::json from_data{{"img_resolution", ds.resolution},
                                   {"img_channels", ds.channels},
                                   {"label_dim", opt.cond ? ds.num_classes : 0}};
    for (const auto& [key, value] : from_data.items()) {
        if (opt.net.contains(key))
            check(opt.net[key] == value, "network setting ", key, " = ", opt.net[key].dump(), " does not fit the data ",
                  ds.source, " (", key, " ", value.dump(), ")");
        j[key] = value;
    }
    if (opt.dropout >= 0) j["dropout"] = opt.dropout;
    return nn::config_from_json(j.dump());
}

// `processes`: the data-parallel processes the run is split over; --batch-gpu defaults to
// an equal share of the batch for each, as the reference trainer has it.
inline ResolvedRun resolve(TrainOptions opt, const data::Dataset& ds, int processes = 1) {
    opt.validate();
    check(processes >= 1 && opt.batch % processes == 0, "--batch ", opt.batch, " does not split evenly over ", processes,
          " processes");
    const nn::Preset p = nn::find_preset(opt.preset);
    ResolvedRun r{opt, resolve_network(opt, p.net, ds)};
    auto& o = r.opt;
    if (o.lr == 0) o.lr = p.train.lr;
    if (o.decay == -1) o.decay = p.train.decay;
    if (std::isnan(o.P_mean)) o.P_mean = p.train.P_mean;
    if (std::isnan(o.P_std)) o.P_std = p.train.P_std;
    if (o.batch_gpu == 0) o.batch_gpu = o.batch / processes;
    check(o.batch % (o.batch_gpu * processes) == 0, "--batch ", o.batch, " is not a multiple of --batch-gpu ", o.batch_gpu,
          " times ", processes, " processes");
    o.dropout = r.net.dropout;
    r.duration = o.duration > 0 ? o.duration : p.train.duration_mimg * 1e6;
    r.rampup = o.rampup >= 0 ? o.rampup : p.train.rampup_mimg * 1e6;
    check(r.duration > 0, "preset ", opt.preset, ": no training duration; give --duration");
    return r;
}

// Purposes of the substreams drawn from the run's seed.
enum Stream : uint64_t { init_stream = 1, sigma_stream, noise_stream, dropout_stream, data_stream };

template <Scalar T, Backend B, Element A = T>
class Trainer {
public:
    using TensorT = Tensor<T, B>;
    using Log = std::function<void(const std::string&)>;

    // Rank 0 takes the run directory's lock (created if missing) for the trainer's lifetime,
    // before anything large is allocated. `comm` (which must outlive the trainer) holds the
    // processes the run is split over.
    Trainer(ResolvedRun run, const data::Dataset& ds, Log log, dist::Communicator& comm = dist::SingleProcess::instance())
        : run_(std::move(run)), ds_(ds), log_(std::move(log)), comm_(comm), dir_(run_.opt.outdir),
          lock_([&]() -> std::optional<RunDirLock> {
              if (comm.is_root()) return std::optional<RunDirLock>(std::in_place, dir_);
              return std::nullopt;
          }()),
          chunks_per_rank_(chunks_per_rank(run_.opt, comm)),
          net_(run_.net, rng::substream(run_.opt.seed, init_stream)), adam_(net_),
          ema_(run_.opt.ema, net_.arena().layout(), net_.flat_values()),
          loader_(ds, run_.opt.batch_gpu, rng::substream(run_.opt.seed, data_stream), run_.opt.xflip, 4,
                  data::Shard{comm.rank() * chunks_per_rank_, (comm.rank() + 1) * chunks_per_rank_,
                              chunks_per_rank_ * comm.size()},
                  static_cast<int>(run_.opt.data_threads)) {}

    // Makes the run directory this run's and continues from its newest readable checkpoint,
    // if any; returns whether it did. Temporary files a killed run left are removed first.
    // A directory holding another run (other options, or checkpoints and snapshots of
    // another network) is refused, unless the options ask to start over: then that run is
    // moved to DIR/previous-run-<n>/. options.json is written only once all this passed.
    bool resume() {
        bool resumed = comm_.is_root() && resume_run_directory();
        if (comm_.size() > 1) {
            comm_.broadcast_value(resumed);
            share_state();
        }
        return resumed;
    }

    void run() {
        const auto& o = run_.opt;
        Timer interval;
        double interval_start = nimg_, loss_sum = 0;
        int64_t loss_count = 0;
        while (nimg_ < run_.duration) {
            step();
            const bool done = nimg_ >= run_.duration;
            const bool report = crossed(o.status) || done;
            const bool snapshot = crossed(o.snapshot) || done, checkpoint = crossed(o.checkpoint) || done;
            // The losses stay on the backend until a line or a file needs them.
            if (report || snapshot || checkpoint || pending_steps_ == loss_capacity) read_losses(loss_sum, loss_count);
            if (report) {
                status(interval.seconds(), nimg_ - interval_start, loss_count ? loss_sum / double(loss_count) : NAN);
                interval = Timer{};
                interval_start = nimg_, loss_sum = 0, loss_count = 0;
            }
            if (nonfinite_ > 0 && (snapshot || checkpoint)) {
                // Weights that give a non-finite loss are not worth saving: the last good files stay.
                log_("not writing snapshots or a checkpoint: the last loss was not finite");
                continue;
            }
            if (snapshot) write_snapshots();
            if (checkpoint) write_checkpoint();
        }
        if (nonfinite_ != 0)
            throw dist::AllRanksError("training ended with a non-finite loss: no final snapshot or checkpoint was "
                                      "written (the last checkpoint is kept; try a lower --lr)");
    }

    // Hands the device work of each step's parts to `runner` (nullptr: run it directly).
    void set_step_runner(std::unique_ptr<StepRunner> runner) { runner_ = std::move(runner); }

    [[nodiscard]] nn::Precond<T, B, A>& network() { return net_; }
    [[nodiscard]] const PowerEma<T, B>& ema() const { return ema_; }
    [[nodiscard]] double images_seen() const { return nimg_; }

private:
    // The root's part of resume(): the run directory, and the state from its checkpoint.
    bool resume_run_directory() {
        remove_stale_temporaries(dir_);
        if (run_.opt.start_over)
            if (const auto aside = set_aside_run(dir_); !aside.empty()) log_("set the previous run aside in " + aside.string());
        check_options_file(dir_, run_.opt);
        const auto checkpoints = list_checkpoints(dir_);
        refuse_foreign_files(checkpoints);
        bool resumed = false;
        for (const auto& path : checkpoints) {
            std::optional<CheckpointState> state;
            try {
                state.emplace(verify_checkpoint(path));
            } catch (const Error& e) {
                log_("skipping unreadable checkpoint: " + std::string(e.what()));
                continue;
            }
            // Verified: from here on a failure is an I/O error, fatal rather than a fallback,
            // since the state may be half replaced.
            apply_checkpoint(*state);
            log_("resuming from " + path.string() + " at kimg " + fixed(nimg_ / 1000, 1));
            resumed = true;
            break;
        }
        for (const auto& p : trim_stats(dir_ / "stats.jsonl", nimg_ / 1000)) {
            kimg_.push_back(p.kimg);
            losses_.push_back(p.loss);
            lrs_.push_back(p.lr);
        }
        write_options_file(dir_, run_.opt);
        return resumed;
    }

    struct Timer {
        std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
        [[nodiscard]] double seconds() const {
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
    };

    static int64_t chunks_per_rank(const TrainOptions& o, const dist::Communicator& comm) {
        const int64_t chunks = o.batch / o.batch_gpu;
        check(o.batch_gpu > 0 && o.batch % o.batch_gpu == 0 && chunks % comm.size() == 0, "--batch ", o.batch,
              " is not a multiple of --batch-gpu ", o.batch_gpu, " times ", comm.size(), " processes");
        return chunks / comm.size();
    }

    // Steps whose losses are kept on the backend before they are read in one copy.
    static constexpr int64_t loss_capacity = 256;

    // One optimizer step over `batch` images, this rank's chunks of batch_gpu images each, the
    // gradient summed over chunks and ranks in tree order. Each chunk's loss is left on the
    // backend (read_losses takes them); with one process nothing is read back to the host.
    // The device work runs in parts, each staged first (step_runner.hpp): one part for a step
    // of one round on one process, else normalize, the rounds and update, with the gradient
    // sums between them. The uploads of each part's inputs are one batch of host_staging.hpp:
    // on the GPU they return at once, and the host prepares the next part as the device runs.
    void step() {
        const typename MemoryPlanFor<B>::Region region(memory_plan_);  // every step allocates alike
        const auto& o = run_.opt;
        const double lr = learning_rate(nimg_, double(o.batch), o.lr, o.decay, run_.rampup);
        if (chunks_per_rank_ == 1 && comm_.size() == 1) {
            {
                auto uploads = staging_.next();
                stage(0, uploads);
                stage_update(lr, uploads);
            }
            run_part(StepPart::step, [this] {
                net_.force_normalize();
                compute();
                update();
            });
            loss_slot(0).copy_from(staged_.loss);
        } else {
            // Forced weight normalisation once per step: normalising again in every round would
            // make a round's weights depend on how many rounds its process ran before it.
            run_part(StepPart::normalize, [this] { net_.force_normalize(); });
            for (int64_t i = 0; i < chunks_per_rank_; ++i) {
                {
                    auto uploads = staging_.next();
                    stage(comm_.rank() * chunks_per_rank_ + i, uploads);
                }
                run_part(StepPart::round, [this] { compute(); });
                loss_slot(i).copy_from(staged_.loss);
                if (chunks_per_rank_ > 1) tree_.add(net_.flat_grads());
            }
            if (chunks_per_rank_ > 1) tree_.finish(net_.flat_grads());
            if (comm_.size() > 1) sum_over_ranks();
            {
                auto uploads = staging_.next();
                stage_update(lr, uploads);
            }
            run_part(StepPart::update, [this] { update(); });
        }
        nimg_ += double(o.batch);
        ++step_;
        ++pending_steps_;
        last_lr_ = lr;
    }

    // The step's gradient summed over the processes, through the host.
    void sum_over_ranks() {
        const Timer t;
        TensorT& grads = net_.flat_grads();
        host_grads_.resize(static_cast<size_t>(grads.numel()));  // kept between steps
        B::copy_to_host(host_grads_.data(), grads.data(), grads.bytes());
        comm_.sum(std::span<T>(host_grads_));
        grads.copy_from_host(host_grads_);
        sum_seconds_ += t.seconds();
    }

    // The update's coefficients, for the step about to end: Adam's at learning rate lr, the
    // EMA's (on the process that keeps it) for the images seen once this step is taken.
    void stage_update(double lr, typename HostStaging<B>::Batch& uploads) {
        adam_.stage(lr, uploads);
        if (comm_.is_root()) ema_.stage(nimg_ + double(run_.opt.batch), double(run_.opt.batch), uploads);
    }

    // The update: the summed gradient's non-finite values cleared, the staged Adam step, and
    // the staged EMA update on the process that keeps it.
    void update() {
        clear_nonfinite(B{}, net_.flat_grads());
        adam_.apply();
        if (comm_.is_root()) ema_.apply(net_.flat_values());
    }

    // Where chunk i of this step leaves its loss sum ([1], on the backend).
    [[nodiscard]] Tensor<double, B> loss_slot(int64_t i) const {
        const int64_t k = pending_steps_ * chunks_per_rank_ + i;
        return unread_losses_.slice(k, k + 1);
    }

    template <class F>
    void run_part(StepPart part, F&& work) {
        if (runner_) runner_->run(part, work);
        else work();
    }

    // Reads the losses of the steps taken since the last read in one copy, sums each step's
    // chunks over every rank in chunk order (as one process adds them), and takes the steps in
    // order: the interval's mean, and the stop when the loss stays non-finite. Every rank sees
    // the same gathered values, so every rank stops at once.
    void read_losses(double& loss_sum, int64_t& loss_count) {
        if (pending_steps_ == 0) return;
        const int64_t per_rank = pending_steps_ * chunks_per_rank_, steps = pending_steps_;
        pending_steps_ = 0;
        std::vector<double> mine(static_cast<size_t>(per_rank));
        B::copy_to_host(mine.data(), unread_losses_.data(), mine.size() * sizeof(double));
        const std::vector<double> all = comm_.size() > 1 ? comm_.gather(mine) : mine;
        const auto& o = run_.opt;
        const double elements = double(o.batch * ds_.channels * ds_.resolution * ds_.resolution);
        for (int64_t st = 0; st < steps; ++st) {
            double sum = 0;
            for (int r = 0; r < comm_.size(); ++r)
                for (int64_t c = 0; c < chunks_per_rank_; ++c) sum += all[size_t(r * per_rank + st * chunks_per_rank_ + c)];
            const double loss = sum / elements;
            if (std::isfinite(loss)) {
                nonfinite_ = 0;
                loss_sum += loss, ++loss_count;
                continue;
            }
            if (++nonfinite_ >= o.max_nonfinite_steps)
                throw dist::AllRanksError("training diverged: the loss was not finite for " + std::to_string(nonfinite_) +
                                          " consecutive steps (last checkpoint kept; try a lower --lr)");
        }
    }

    // The buffers a round reads and writes besides the network (step_runner.hpp): the same
    // addresses every round.
    struct Staged {
        TensorT y, sigma, labels, noise;  // clean images, noise levels, one-hot labels, unit noise
        Tensor<double, B> loss{Shape{1}};
    };
    static Staged make_staged(const ResolvedRun& run, const data::Dataset& ds) {
        const int64_t n = run.opt.batch_gpu, C = ds.channels, R = ds.resolution;
        Staged s{TensorT(Shape{n, C, R, R}), TensorT(Shape{n}), TensorT(), TensorT(Shape{n, C, R, R})};
        if (run.opt.cond) s.labels = TensorT(Shape{n, ds.num_classes});
        return s;
    }

    // Chunk c's inputs (batch_gpu images from global image index nimg + c * batch_gpu), into
    // the staged buffers and the network's dropout seed.
    void stage(int64_t c, typename HostStaging<B>::Batch& uploads) {
        const auto& o = run_.opt;
        const double first = nimg_ + double(c * o.batch_gpu);
        const int64_t n = o.batch_gpu, chw = staged_.y.shape().numel_from(1);
        const auto batch = loader_.next();
        uploads(staged_.y, std::span<const T>(batch.images));
        const uint64_t g0 = static_cast<uint64_t>(first);
        std::vector<T> sigma(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
            sigma[size_t(i)] = T(std::exp(
                o.P_mean + o.P_std * rng::normal(rng::substream(o.seed, sigma_stream), g0 + uint64_t(i))));
        uploads(staged_.sigma, std::span<const T>(sigma));
        if (o.cond) uploads(staged_.labels, std::span<const T>(batch.labels_onehot));
        fill_normal(B{}, staged_.noise, rng::substream(o.seed, noise_stream), g0 * uint64_t(chw));
        if (run_.net.dropout > 0)
            net_.set_dropout_seed(rng::substream(rng::substream(o.seed, dropout_stream), uint64_t(step_ * 4096 + c)));
    }

    // The round from the staged inputs: zeroes the gradients and leaves this round's in them,
    // the loss sum in staged_.loss. Reads nothing else that changes between rounds.
    void compute() {
        const Staged& st = staged_;
        const Shape shape = st.y.shape();
        const int64_t n = shape[0], chw = shape.numel_from(1);
        net_.zero_grad();
        TensorT noisy(shape), nv = noisy.view(Shape{n, 1, chw});
        scale_channels_forward(B{}, st.noise.view(Shape{n, 1, chw}), st.sigma, nv);
        axpby(B{}, T(1), st.y, T(1), noisy);
        typename nn::Precond<T, B, A>::Context ctx;
        auto out = net_.forward(noisy, st.sigma, st.labels, nn::ForwardMode{true, std::nullopt, true}, true, &ctx);
        TensorT dD(shape), dlogvar(Shape{n});
        Tensor<double, B> loss = st.loss;
        edm2_loss(B{}, out.D, st.y, st.sigma, out.logvar, run_.net.sigma_data,
                  run_.opt.loss_scaling / double(run_.opt.batch), dD, dlogvar, loss);
        net_.backward(dD, dlogvar, ctx);
    }

    // True when the step just taken crossed a multiple of `interval` images.
    [[nodiscard]] bool crossed(double interval) const {
        const double before = nimg_ - double(run_.opt.batch);
        return std::floor(nimg_ / interval) > std::floor(before / interval);
    }

    void status(double seconds, double images, double loss) {
        const double sum_per_step = sum_seconds_ / std::max(1.0, images / double(run_.opt.batch));
        sum_seconds_ = 0;
        if (!comm_.is_root()) return;
        const double sec_per_kimg = images > 0 ? seconds / images * 1000 : 0;
        const double remaining = (run_.duration - nimg_) / 1000 * sec_per_kimg;
        const double mem_mb = peak_memory_mb(), rss_mb = resident_mb();
        char line[256];
        std::snprintf(line, sizeof line,
                      "kimg %9.1f  time %9s  sec/kimg %8.2f  loss %8.4f  lr %.5f  mem %7.1f MB  rss %7.1f MB  eta %s",
                      nimg_ / 1000, duration(total_.seconds()).c_str(), sec_per_kimg, loss, last_lr_, mem_mb, rss_mb,
                      duration(remaining).c_str());
        std::string text = line;
        if (comm_.size() > 1) {
            std::snprintf(line, sizeof line, "  ranks %d  gradient sum %.4f s/step", comm_.size(), sum_per_step);
            text += line;
        }
        const std::size_t skipped = ds_.bad_samples ? ds_.bad_samples->count() : 0;
        if (skipped) text += "  skipped " + std::to_string(skipped) + " bad sample(s)";
        if (const auto* cache = data::CachedReader::of(ds_)) {
            const auto c = cache->stats();
            std::snprintf(line, sizeof line, "  cache %.0f%% hits", 100.0 * double(c.hits) / double(std::max<uint64_t>(1, c.hits + c.misses)));
            text += line;
        }
        log_(text);
        kimg_.push_back(nimg_ / 1000);
        losses_.push_back(loss);
        lrs_.push_back(last_lr_);
        nlohmann::json j{{"kimg", nimg_ / 1000}, {"step", step_},          {"time", total_.seconds()},
                         {"sec_per_kimg", sec_per_kimg}, {"loss", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json()},
                         {"lr", last_lr_},  {"peak_mem_mb", mem_mb}, {"rss_mb", rss_mb}};
        if (comm_.size() > 1) j["ranks"] = comm_.size(), j["gradient_sum_sec_per_step"] = sum_per_step;
        std::ofstream(dir_ / "stats.jsonl", std::ios::app) << j.dump() << "\n";
        write_loss_curve(dir_ / "loss.svg", kimg_, losses_, lrs_);
    }

    void write_snapshots() {
        if (!comm_.is_root()) return;
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
            const std::string tag = TrainOptions::sigma_rel_tag(ema_.sigma_rel(k));
            w.set_metadata("config", nn::to_json(run_.net));
            w.set_metadata("kimg", fixed(nimg_ / 1000, 3));
            w.set_metadata("sigma_rel", tag);
            w.write(dir_ / ("network-snapshot-" + kimg_tag(nimg_) + "-" + tag + ".safetensors"));
        }
    }

    void write_checkpoint() {
        if (!comm_.is_root()) return;
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
        w.set_metadata("loader_position", std::to_string(static_cast<uint64_t>(nimg_)));  // where every rank's shard resumes
        const auto path = checkpoint_path(dir_, nimg_);
        w.write(path);
        // Retention counts only this run's checkpoints (written or verified by it), never
        // files it cannot read, and removes an older one only once the new one is in place.
        std::erase(kept_, path);
        kept_.push_back(path);
        while (kept_.size() > 2) {
            std::filesystem::remove(kept_.front());
            kept_.erase(kept_.begin());
        }
    }

    // A checkpoint read and checked whole, nothing of the trainer changed yet.
    struct CheckpointState {
        std::filesystem::path path;
        io::SafetensorsFile file;
        double nimg = 0;
        int64_t step = 0;
        uint64_t loader_position = 0;
    };

    // Everything that can be wrong with a checkpoint is found here, before any state is
    // replaced: its format and network, its metadata, and exactly the tensors (names and
    // shapes) this trainer's state has.
    CheckpointState verify_checkpoint(const std::filesystem::path& path) {
        CheckpointState s{path, io::SafetensorsFile::open(path)};
        const io::SafetensorsFile& f = s.file;
        check(f.metadata_or("format", "") == "mpnet-training-state-1", f.label(), ": not an mpnet training state");
        check(f.metadata_or("config", "") == nn::to_json(run_.net), f.label(),
              ": the checkpoint's network configuration differs from this run's");
        s.step = metadata_integer<int64_t>(f, "step");
        s.loader_position = metadata_integer<uint64_t>(f, "loader_position");
        s.nimg = double(metadata_integer<int64_t>(f, "nimg"));
        check(s.nimg == double(s.step) * double(run_.opt.batch), f.label(), ": ", s.nimg, " images in ", s.step,
              " steps do not fit batch ", run_.opt.batch);
        std::map<std::string, std::vector<int64_t>> want{{"adam.step", {1}},
                                                        {"ema.sigma_rel", {int64_t(ema_.num_profiles())}}};
        auto add = [&](const std::string& name, const TensorT& t) { want[name] = t.shape().vec(); };
        nn::for_each_state_tensor(net_, [&](const std::string& name, TensorT& t) { add("net." + name, t); });
        adam_.visit_state("adam.", add);
        ema_.visit_state("ema.", add);
        for (const auto& [name, shape] : want) f.check_shape(name, shape);
        check(f.tensors().size() == want.size(), f.label(), ": ", f.tensors().size(),
              " tensors, a training state of this run has ", want.size());
        check(f.read<double>("ema.sigma_rel") == run_.opt.ema, f.label(), ": the EMA profiles differ from --ema");
        return s;
    }

    void apply_checkpoint(const CheckpointState& s) {
        try {
            nn::load_state(net_, s.file, "net.");
            adam_.load_state(s.file, "adam.");
            ema_.load_state(s.file, "ema.");
        } catch (const Error& e) {
            fail(e.what(), " (after the checkpoint was verified: the training state is incomplete, not resuming)");
        }
        nimg_ = s.nimg;
        step_ = s.step;
        loader_.seek(s.loader_position);
        kept_ = {s.path};
    }

    // Rank 0's training state on every rank: weights, buffers, Adam moments, counters. The
    // EMA stays on rank 0, the only rank that writes snapshots.
    void share_state() {
        nn::for_each_state_tensor(net_, [&](const std::string&, TensorT& t) { broadcast(t); });
        auto [m, v] = adam_.moments();
        broadcast(m);
        broadcast(v);
        int64_t adam_steps = adam_.steps();
        comm_.broadcast_value(adam_steps);
        adam_.set_steps(adam_steps);
        comm_.broadcast_value(nimg_);
        comm_.broadcast_value(step_);
        loader_.seek(static_cast<uint64_t>(nimg_));
    }
    void broadcast(TensorT& t) {
        auto host = t.to_host();
        comm_.broadcast(std::as_writable_bytes(std::span(host)));
        if (!comm_.is_root()) t.copy_from_host(host);
    }

    template <class I>
    static I metadata_integer(const io::SafetensorsFile& f, const std::string& key) {
        const auto it = f.metadata().find(key);
        check(it != f.metadata().end(), f.label(), ": metadata '", key, "' is missing");
        I v{};
        const std::string& text = it->second;
        const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
        bool negative = false;
        if constexpr (std::is_signed_v<I>) negative = v < 0;
        check(!text.empty() && r.ec == std::errc{} && r.ptr == text.data() + text.size() && !negative, f.label(),
              ": metadata '", key, "' is not a non-negative integer: '", text, "'");
        return v;
    }

    // Checkpoints and snapshots of another network (or other EMA profiles) would be mixed
    // with or overwritten by this run's: the directory holds another run.
    void refuse_foreign_files(const std::vector<std::filesystem::path>& checkpoints) const {
        std::vector<std::filesystem::path> files = checkpoints;
        for (const auto& e : std::filesystem::directory_iterator(dir_)) {
            const std::string name = e.path().filename().string();
            if (name.starts_with("network-snapshot-") && is_run_file(name)) files.push_back(e.path());
        }
        const nlohmann::json mine = nlohmann::json(run_.net);
        for (const auto& path : files) {
            std::optional<io::SafetensorsFile> f;
            nlohmann::json theirs;
            try {
                f.emplace(io::SafetensorsFile::open(path));
                theirs = nlohmann::json::parse(f->metadata_or("config", ""));
            } catch (const std::exception&) {
                continue;  // unreadable: skipped when resuming, never taken for another run
            }
            const std::string diff = json_differences(theirs, mine);
            check(diff.empty(), path.string(), " belongs to a run of another network (", diff,
                  "); use a new --outdir, or --start-over to set that run aside");
            if (f->contains("ema.sigma_rel") && f->info("ema.sigma_rel").dtype == io::DType::F64)
                check(f->read<double>("ema.sigma_rel") == run_.opt.ema, path.string(),
                      " belongs to a run with other --ema profiles; use a new --outdir, or --start-over");
        }
    }

    // The process's resident memory now (0 where /proc is missing).
    static double resident_mb() {
        std::ifstream statm("/proc/self/statm");
        double pages_total = 0, pages_resident = 0;
        if (!(statm >> pages_total >> pages_resident)) return 0;
        return pages_resident * double(::sysconf(_SC_PAGESIZE)) / 1048576.0;
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
    dist::Communicator& comm_;
    std::filesystem::path dir_;
    std::optional<RunDirLock> lock_;  // rank 0's
    int64_t chunks_per_rank_;
    nn::Precond<T, B, A> net_;
    Adam<T, B> adam_;
    PowerEma<T, B> ema_;
    data::Loader loader_;
    dist::GradientTree<T, B> tree_;
    std::vector<T> host_grads_;  // the gradient on the host, for the sum over ranks
    Tensor<double, B> unread_losses_{Shape{loss_capacity * chunks_per_rank_}};  // chunk losses of unread steps
    Staged staged_ = make_staged(run_, ds_);
    // Room for one batch of uploads: a round's inputs and the update's coefficients.
    HostStaging<B> staging_{std::array<std::size_t, 5>{staged_.y.bytes(), staged_.sigma.bytes(), staged_.labels.bytes(),
                                                       Adam<T, B>::staged_bytes, ema_.staged_bytes()}};
    std::unique_ptr<StepRunner> runner_;
    int64_t pending_steps_ = 0;
    double nimg_ = 0, last_lr_ = 0, sum_seconds_ = 0;
    int64_t step_ = 0, nonfinite_ = 0;
    MemoryPlanFor<B> memory_plan_;  // where a step's activations and gradients go
    Timer total_;
    std::vector<double> kimg_, losses_, lrs_;
    std::vector<std::filesystem::path> kept_;  // this run's checkpoints, oldest first
};

}  // namespace mpnet::train
