// Reference statistics on disk: mpnet's safetensors files, and the EDM2 authors' .pkl files
// (img512.pkl, img64.pkl...) read without running any of their pickled code.
//
// mpnet's format: for each metric ("fid", "fd_dinov2"), "<metric>.mu" [D] and
// "<metric>.sigma" [D, D] as float64; metadata "num_images". The authors' format: a pickled
// dict {num_images: int, fid: {mu, sigma}, fd_dinov2: {mu, sigma}} of NumPy float64 arrays.
#pragma once
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <string_view>

#include "mpnet/core/error.hpp"
#include "mpnet/io/pickle.hpp"
#include "mpnet/io/safetensors.hpp"
#include "mpnet/io/torch_pickle.hpp"
#include "mpnet/metrics/frechet.hpp"

namespace mpnet::metrics {

// Statistics per metric name, as the authors key them.
using MetricStats = std::map<std::string, FeatureStats>;

inline constexpr std::string_view metric_names[] = {"fid", "fd_dinov2"};

inline void save_stats(const MetricStats& stats, const std::filesystem::path& path) {
    check(!stats.empty(), path.string(), ": no statistics to write");
    io::SafetensorsWriter w;
    int64_t count = -1;
    for (const auto& [name, s] : stats) {
        check(s.sigma.size() == std::size_t(s.dim() * s.dim()), "statistics '", name, "' are malformed");
        w.add<double>(name + ".mu", {s.dim()}, std::span<const double>(s.mu));
        w.add<double>(name + ".sigma", {s.dim(), s.dim()}, std::span<const double>(s.sigma));
        count = s.count;
    }
    w.set_metadata("num_images", std::to_string(count));
    w.write(path);
}

namespace detail {

inline MetricStats load_safetensors_stats(const std::filesystem::path& path) {
    const auto file = io::SafetensorsFile::open(path);
    const auto& meta = file.metadata();
    const auto it = meta.find("num_images");
    int64_t count = 0;
    try {
        count = it == meta.end() ? 0 : std::stoll(it->second);
    } catch (const std::exception&) {
        fail(path.string(), ": metadata num_images '", it->second, "' is not a number");
    }
    MetricStats stats;
    for (const auto name : metric_names) {
        const std::string n(name);
        if (!file.contains(n + ".mu")) continue;
        check(file.contains(n + ".sigma"), path.string(), ": '", n, ".mu' without '", n, ".sigma'");
        const auto& mu_shape = file.info(n + ".mu").shape;
        check(mu_shape.size() == 1 && file.info(n + ".sigma").shape == std::vector<int64_t>{mu_shape[0], mu_shape[0]},
              path.string(), ": '", n, ".sigma' is not the square of '", n, ".mu'");
        stats[n] = FeatureStats{count, file.read<double>(n + ".mu"), file.read<double>(n + ".sigma")};
    }
    check(!stats.empty(), path.string(), ": no feature statistics (fid.mu or fd_dinov2.mu) in this file");
    return stats;
}

inline bool allowed_stats_global(std::string_view module, std::string_view name) {
    const bool numpy_core = module == "numpy.core.multiarray" || module == "numpy._core.multiarray";
    return (numpy_core && name == "_reconstruct") || (module == "numpy" && (name == "ndarray" || name == "dtype")) ||
           (module == "dnnlib.util" && name == "EasyDict");
}

inline MetricStats load_pickle_stats(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    check(bool(in), path.string(), ": cannot open");
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string label = path.string();
    io::PickleReader reader(bytes, label, allowed_stats_global);
    const auto* root = reader.load();
    check(root->has_entries(), label, ": not a statistics pickle (the top level is ", io::describe(*root), ")");
    int64_t count = 0;
    if (const auto* n = root->get("num_images")) {
        check(n->is(io::PyObject::Kind::integer), label, ": num_images is a ", io::describe(*n));
        count = n->integer;
    }
    MetricStats stats;
    for (const auto name : metric_names) {
        const auto* m = root->get(name);
        if (!m) continue;
        check(m->has_entries(), label, ": '", name, "' is a ", io::describe(*m), ", not a dict");
        const std::string where = label + ": " + std::string(name);
        FeatureStats s{count, io::torch_pickle::numpy_floats(m->get("mu"), where + ".mu"),
                       io::torch_pickle::numpy_floats(m->get("sigma"), where + ".sigma")};
        check(!s.mu.empty() && s.sigma.size() == s.mu.size() * s.mu.size(), label, ": '", name, "' has ", s.mu.size(),
              " means and ", s.sigma.size(), " covariance entries");
        stats[std::string(name)] = std::move(s);
    }
    check(!stats.empty(), label, ": no 'fid' or 'fd_dinov2' statistics in this pickle");
    return stats;
}

}  // namespace detail

// By extension: .pkl is the authors' format, anything else mpnet's safetensors.
inline MetricStats load_stats(const std::filesystem::path& path) {
    check(std::filesystem::exists(path), path.string(), ": no such file");
    return path.extension() == ".pkl" ? detail::load_pickle_stats(path) : detail::load_safetensors_stats(path);
}

}  // namespace mpnet::metrics
