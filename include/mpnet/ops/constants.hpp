// Constants fixed by the EDM2 definitions, shared by every backend.
#pragma once
#include <cmath>

namespace mpnet::ops {

inline constexpr double normalize_eps = 1e-4;  // normalize(x) = x / (eps + rms(x))
inline constexpr double silu_scale = 0.596;    // mp_silu(x) = silu(x) / 0.596
inline constexpr double sqrt2 = 1.4142135623730950488;

// mp_sum(a, b, t) = ((1-t) a + t b) / sqrt((1-t)^2 + t^2): the two output weights.
struct MpSumWeights {
    double wa, wb;
};
inline MpSumWeights mp_sum_weights(double t) {
    const double norm = std::sqrt((1 - t) * (1 - t) + t * t);
    return {(1 - t) / norm, t / norm};
}

// mp_cat of Na and Nb channels: the scale applied to each part.
inline MpSumWeights mp_cat_weights(double t, double na, double nb) {
    const double c = std::sqrt((na + nb) / ((1 - t) * (1 - t) + t * t));
    return {c * (1 - t) / std::sqrt(na), c * t / std::sqrt(nb)};
}

}  // namespace mpnet::ops
