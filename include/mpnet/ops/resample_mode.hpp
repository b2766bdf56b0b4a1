// Resampling modes and the normalised 1-D filter shared by every backend.
#pragma once
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::ops {

enum class Resample { keep, up, down };

inline std::string_view to_string(Resample m) {
    return m == Resample::keep ? "keep" : m == Resample::up ? "up" : "down";
}
inline Resample parse_resample(std::string_view s) {
    if (s == "keep") return Resample::keep;
    if (s == "up") return Resample::up;
    if (s == "down") return Resample::down;
    fail("unknown resample mode '", s, "' (expected keep, up or down)");
}

// f / sum(f); the filter must have even length so that the output is exactly half/double.
inline std::vector<double> normalized_filter(const std::vector<double>& f) {
    check(!f.empty() && f.size() % 2 == 0, "resample filter must have even, non-zero length (got ", f.size(), ")");
    const double s = std::accumulate(f.begin(), f.end(), 0.0);
    check(s != 0, "resample filter sums to zero");
    std::vector<double> out(f);
    for (double& v : out) v /= s;
    return out;
}

}  // namespace mpnet::ops
