// The trainer's options, named like the reference trainer's, with JSON round-trip (the
// run directory keeps them, and a resumed run must use the same ones).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/core/error.hpp"

namespace mpnet::train {

struct TrainOptions {
    std::string outdir = "training-runs/run";
    std::string data = "fashion-mnist";
    std::string preset = "fmnist-s";
    bool cond = true;
    int64_t batch = 64;
    int64_t batch_gpu = 0;  // images per forward/backward round; 0 = batch (no accumulation)
    double duration = 0;    // images; 0 = the preset's
    double lr = 0;          // 0 = the preset's
    double decay = -1;      // ref_batches; <0 = the preset's
    double rampup = -1;     // images; <0 = the preset's
    double dropout = -1;    // <0 = the preset's
    double P_mean = NAN, P_std = NAN;  // NaN = the preset's
    uint64_t seed = 0;
    double status = 6400;       // images between status lines
    double snapshot = 64000;    // images between EMA snapshots
    double checkpoint = 32000;  // images between training-state checkpoints
    std::vector<double> ema = {0.050, 0.100};
    bool xflip = false;
    bool quiet = false;
    int64_t max_nonfinite_steps = 100;  // consecutive steps with a non-finite loss before giving up
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrainOptions, outdir, data, preset, cond, batch, batch_gpu, duration,
                                                lr, decay, rampup, dropout, P_mean, P_std, seed, status, snapshot,
                                                checkpoint, ema, xflip, quiet, max_nonfinite_steps)

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
    check(scale > 0 && v >= 0 && std::isfinite(v), "'", text, "' is not an image count (examples: 6400, 64k, 8Mi)");
    return v * scale;
}

}  // namespace mpnet::train
