// mpnet-metrics' feature networks on a backend: an interface the host-side program calls,
// implemented once per backend (FeatureEngineOn<B>), so that the GPU instantiation lives in
// a .cu file of its own (metrics_cuda.cu) and mpnet-metrics.cpp never sees CUDA headers.
#pragma once
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "device.hpp"
#include "mpnet/dist/communicator.hpp"
#include "mpnet/metrics/frechet.hpp"
#include "mpnet/metrics/stats_file.hpp"

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/metrics/dinov2.hpp"
#include "mpnet/metrics/inception_v3.hpp"
#include "mpnet/metrics/preprocess.hpp"

namespace mpnet::cli {

class FeatureEngine {
public:
    virtual ~FeatureEngine() = default;
    virtual void load_inception(const std::filesystem::path& path) = 0;
    virtual void load_dinov2(const std::filesystem::path& path) = 0;
    // Features [N, D] (row-major) of a batch of 8-bit images, for "fid" or "fd_dinov2".
    virtual std::vector<float> features(const std::string& metric, const metrics::ImageBatch& images) = 0;
    [[nodiscard]] virtual int64_t dim(const std::string& metric) const = 0;
};

template <FeatureKernels B>
class FeatureEngineOn final : public FeatureEngine {
public:
    void load_inception(const std::filesystem::path& path) override {
        inception_.emplace(metrics::InceptionV3<float, B>::load(io::SafetensorsFile::open(path)));
    }
    void load_dinov2(const std::filesystem::path& path) override {
        dinov2_.emplace(metrics::DinoV2<float, B>::load(io::SafetensorsFile::open(path), metrics::dinov2_size));
    }

    std::vector<float> features(const std::string& metric, const metrics::ImageBatch& images) override {
        const int64_t n = images.count;
        if (metric == "fid") {
            const auto x = Tensor<float, B>::from_host(Shape{n, 3, metrics::inception_size, metrics::inception_size},
                                                       metrics::inception_input(images));
            return inception_->features(x).to_host();
        }
        const auto x =
            Tensor<float, B>::from_host(Shape{n, 3, metrics::dinov2_size, metrics::dinov2_size}, metrics::dinov2_input(images));
        return dinov2_->features(x).to_host();
    }

    [[nodiscard]] int64_t dim(const std::string& metric) const override {
        return metric == "fid" ? metrics::inception_features : dinov2_->channels();
    }

private:
    std::optional<metrics::InceptionV3<float, B>> inception_;
    std::optional<metrics::DinoV2<float, B>> dinov2_;
};

#ifdef MPNET_WITH_CUDA
std::unique_ptr<FeatureEngine> make_cuda_feature_engine();  // metrics_cuda.cu
#endif

// The feature networks on --device (the GPU already selected by the caller).
inline std::unique_ptr<FeatureEngine> make_feature_engine(const DeviceOption& device) {
#ifdef MPNET_WITH_CUDA
    if (device.cuda) return make_cuda_feature_engine();
#endif
    (void)device;
    return std::make_unique<FeatureEngineOn<CpuBackend>>();
}

// What to score and with which weights: the --inception / --dinov2 / --metrics options.
struct ScoringOptions {
    std::filesystem::path inception, dinov2;
    std::vector<std::string> metrics;  // "fid", "fd_dinov2"
};

// Feature statistics accumulated batch by batch, for each metric asked.
class StatsRun {
public:
    StatsRun(const ScoringOptions& o, const DeviceOption& device) : metrics_(o.metrics), engine_(make_feature_engine(device)) {
        if (!o.inception.empty()) engine_->load_inception(o.inception);
        if (!o.dinov2.empty()) engine_->load_dinov2(o.dinov2);
        for (const auto& m : metrics_) acc_.emplace_back(engine_->dim(m));
    }

    void add(const metrics::ImageBatch& images) {
        for (std::size_t m = 0; m < metrics_.size(); ++m) {
            const auto f = engine_->features(metrics_[m], images);
            acc_[m].add(std::span<const float>(f), images.count);
        }
    }

    // The statistics over every process's images.
    metrics::MetricStats finish(dist::Communicator& comm) {
        metrics::MetricStats stats;
        for (std::size_t m = 0; m < metrics_.size(); ++m) {
            acc_[m].sum_across([&](std::span<double> v) { comm.sum(v); });
            stats[metrics_[m]] = acc_[m].finish();
        }
        return stats;
    }

private:
    std::vector<std::string> metrics_;
    std::unique_ptr<FeatureEngine> engine_;
    std::vector<metrics::StatsAccumulator> acc_;
};

// Prints "<metric> = <value>" for each of `wanted` (all metrics both hold, if empty).
inline void print_distances(const metrics::MetricStats& stats, const metrics::MetricStats& ref,
                            const std::vector<std::string>& wanted, const std::string& ref_path) {
    std::vector<std::string> names = wanted;
    if (names.empty())
        for (const auto name : metrics::metric_names)
            if (stats.contains(std::string(name)) && ref.contains(std::string(name))) names.emplace_back(name);
    check(!names.empty(), "the two statistics files have no metric in common");
    for (const auto& name : names) {
        check(stats.contains(name), "no '", name, "' statistics to score");
        check(ref.contains(name), ref_path, ": no '", name, "' statistics");
        std::printf("%s = %.8g\n", name.c_str(), metrics::frechet_distance(stats.at(name), ref.at(name)));
    }
    std::fflush(stdout);
}

// Reference statistics that hold every metric asked, read before any long work starts.
inline metrics::MetricStats load_reference(const std::filesystem::path& path, const std::vector<std::string>& metrics) {
    auto ref = metrics::load_stats(path);
    for (const auto& m : metrics) check(ref.contains(m), path.string(), ": no '", m, "' statistics");
    return ref;
}

}  // namespace mpnet::cli
