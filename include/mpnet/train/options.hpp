// The trainer's options, named like the reference trainer's, with JSON round-trip (the
// run directory keeps them, and a resumed run must use the same ones).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/core/error.hpp"
#include "mpnet/phema/profile.hpp"

namespace mpnet::train {

struct TrainOptions {
    std::string outdir = "training-runs/run";
    std::string data = "fashion-mnist";
    std::string data_storage = "auto";  // a PNG folder or zip: "auto", "memory" or "stream" (data/image_folder.hpp)
    int64_t data_threads = 1;           // threads decoding a streamed dataset's images
    bool skip_bad = false;              // replace unreadable samples instead of stopping (data/dataset.hpp)
    int64_t data_cache_mib = 0;         // a streamed dataset's cache of decoded samples (data/cached_reader.hpp)
    std::string preset = "fmnist-s";
    nlohmann::json net = nlohmann::json::object();  // network settings over the preset's (NetworkConfig keys)
    bool cond = true;
    int64_t batch = 64;
    int64_t batch_gpu = 0;  // images per forward/backward round; 0 = batch (no accumulation)
    double duration = 0;    // images; 0 = the preset's
    double lr = 0;          // 0 = the preset's
    double decay = -1;      // ref_batches; -1 = the preset's
    double rampup = -1;     // images; -1 = the preset's
    double dropout = -1;    // -1 = the preset's
    double P_mean = NAN, P_std = NAN;  // NaN = the preset's
    // --ls: the loss's gradient is multiplied by it before the backward pass, to keep a
    // half-precision backward's small gradients above underflow. As in the reference it is not
    // divided out again: Adam is blind to the gradient's scale but for its eps.
    double loss_scaling = 1;
    uint64_t seed = 0;
    double status = 6400;       // images between status lines
    double snapshot = 64000;    // images between EMA snapshots
    double checkpoint = 32000;  // images between training-state checkpoints
    std::vector<double> ema = {0.050, 0.100};
    bool xflip = false;
    bool quiet = false;
    bool start_over = false;            // set a different run found in outdir aside instead of refusing
    int64_t max_nonfinite_steps = 100;  // consecutive steps with a non-finite loss before giving up

    // The largest batch accepted: far above EDM2's 2048, small enough that a batch's
    // buffers can never overflow a size computation.
    static constexpr int64_t max_batch = 1 << 20;

    // Throws naming the first option (as the command line spells it) whose value no run can
    // use. The "preset's" markers above are the only out-of-range values accepted.
    void validate() const {
        auto finite = [](double v) { return std::isfinite(v); };
        check(batch >= 1 && batch <= max_batch, "--batch ", batch, " is outside [1, ", max_batch, "]");
        check(batch_gpu == 0 || (batch_gpu >= 1 && batch % batch_gpu == 0), "--batch ", batch,
              " is not a multiple of --batch-gpu ", batch_gpu);
        check(duration == 0 || (duration > 0 && finite(duration)), "--duration ", duration, " is not positive");
        check(lr == 0 || (lr > 0 && finite(lr)), "--lr ", lr, " is not positive");
        check(decay == -1 || (decay >= 0 && finite(decay)), "--decay ", decay, " is negative");
        check(rampup == -1 || (rampup >= 0 && finite(rampup)), "--rampup ", rampup, " is negative");
        check(dropout == -1 || (dropout >= 0 && dropout < 1), "--dropout ", dropout, " is outside [0, 1)");
        check(std::isnan(P_mean) || finite(P_mean), "--P_mean must be finite");
        check(std::isnan(P_std) || (P_std > 0 && finite(P_std)), "--P_std ", P_std, " is not positive");
        check(loss_scaling > 0 && finite(loss_scaling), "--ls ", loss_scaling, " is not positive");
        for (const double v : {status, snapshot, checkpoint})
            check(v > 0 && finite(v), "--status, --snapshot and --checkpoint must be positive");
        check(snapshot >= 1000, "--snapshot ", snapshot, " is below 1000 images: snapshot files are named by kimg");
        check(!ema.empty(), "--ema needs at least one sigma_rel");
        for (std::size_t i = 0; i < ema.size(); ++i) {
            check(ema[i] > 0 && ema[i] <= phema::std_max, "--ema ", ema[i], " is outside (0, ", phema::std_max, "]");
            for (std::size_t j = 0; j < i; ++j)
                check(sigma_rel_tag(ema[i]) != sigma_rel_tag(ema[j]), "--ema ", ema[j], " and ", ema[i],
                      " would both be written to the snapshot files named ", sigma_rel_tag(ema[i]));
        }
        check(net.is_object(), "network settings must be a JSON object");
        check(data_storage == "auto" || data_storage == "memory" || data_storage == "stream", "--data-storage '",
              data_storage, "' is not one of auto, memory, stream");
        check(data_threads >= 1 && data_threads <= 256, "--data-threads ", data_threads, " is outside [1, 256]");
        check(data_cache_mib >= 0, "--data-cache ", data_cache_mib, " is negative");
        check(max_nonfinite_steps >= 1, "max_nonfinite_steps must be at least 1");
    }

    // sigma_rel as snapshot file names write it.
    static std::string sigma_rel_tag(double sigma_rel) {
        char tag[32];
        std::snprintf(tag, sizeof tag, "%.3f", sigma_rel);
        return tag;
    }
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrainOptions, outdir, data, data_storage, data_threads, skip_bad, data_cache_mib, preset, net, cond, batch, batch_gpu,
                                                duration, lr, decay, rampup, dropout, P_mean, P_std, loss_scaling, seed, status,
                                                snapshot, checkpoint, ema, xflip, quiet, start_over,
                                                max_nonfinite_steps)

// Options that may change between the starts of one run: its length, reporting and
// stopping policy, and how the data is held (the same pixels either way). --skip-bad too:
// a run stopped by a corrupt file is meant to continue with it. Every other option must
// stay as the run began.
inline bool may_change_on_resume(const std::string& key) {
    for (const char* k : {"duration", "status", "snapshot", "checkpoint", "quiet", "outdir", "start_over",
                          "max_nonfinite_steps", "data_storage", "data_threads", "skip_bad", "data_cache_mib"})
        if (key == k) return true;
    return false;
}

// Parses an image count like the reference: "2000", "64k", "8Mi", "1.5M" (k/M/G = 1e3/1e6/1e9,
// Ki/Mi/Gi = 2^10/2^20/2^30).
inline double parse_images(const std::string& text) {
    std::size_t used = 0;
    double v = 0;
    try {
        v = std::stod(text, &used);
    } catch (const std::exception&) {
        fail("'", text, "' is not an image count (examples: 6400, 64k, 8Mi)");
    }
    const std::string unit = text.substr(used);
    const double scale = unit.empty() ? 1
                         : unit == "k" || unit == "K" ? 1e3
                         : unit == "M"                ? 1e6
                         : unit == "G"                ? 1e9
                         : unit == "Ki"               ? 1024.0
                         : unit == "Mi"               ? 1048576.0
                         : unit == "Gi"               ? 1073741824.0
                                                      : -1;
    check(scale > 0 && v >= 0 && std::isfinite(v * scale), "'", text,
          "' is not an image count (examples: 6400, 64k, 8Mi)");
    return v * scale;
}

}  // namespace mpnet::train
