// What resampling is on any backend: the modes, the normalised 1-D filter and the shape
// a resampled tensor has.
#pragma once
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

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

// The shape of resample(x, mode) for an NCHW x of shape s: height and width doubled (up)
// or halved (down).
inline Shape resampled_shape(const Shape& s, Resample mode) {
    if (mode == Resample::keep) return s;
    const int64_t f = mode == Resample::up ? 2 : 1, d = mode == Resample::down ? 2 : 1;
    return Shape{s[0], s[1], s[2] * f / d, s[3] * f / d};
}

// The argument check of resample_forward (x -> y) and resample_backward (dy -> dx): the
// resampled side must be resampled_shape of the other.
inline void check_resampled(const Shape& in, const Shape& out, Resample mode, const char* what) {
    check((mode == Resample::keep || in.rank() == 4) && out == resampled_shape(in, mode), what, ": ", out,
          " is not the ", to_string(mode), "-resampled shape of ", in);
}

}  // namespace mpnet::ops
