// The settings of the EDM sampler and its noise-level schedule (Karras et al. 2022, eq. 5).
#pragma once
#include <cmath>
#include <limits>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::sample {

struct SamplerOptions {
    int steps = 32;               // N: noise levels t_0 > ... > t_{N-1}, then t_N = 0
    double sigma_min = 0.002;
    double sigma_max = 80;
    double rho = 7;
    double S_churn = 0;           // stochasticity: total churn over the run (0 = deterministic)
    double S_min = 0;             // churn only where S_min <= t <= S_max
    double S_max = std::numeric_limits<double>::infinity();
    double S_noise = 1;           // scale of the added noise (slightly > 1 offsets detail loss)
    bool euler = false;           // first order only: N evaluations instead of 2N - 1
    double guidance = 1;          // w in D = g + w (net - g); 1 leaves the guide unused

    // The most noise levels a run may ask for: far beyond any useful schedule (EDM2 uses
    // 32-64), small enough that the schedule always fits in memory.
    static constexpr int max_steps = 100'000;

    // Throws naming the first setting the sampler cannot run with: every value finite (S_max
    // may be +inf), and a schedule whose levels are all finite and positive.
    void validate() const {
        check(steps >= 1 && steps <= max_steps, "sampler: steps must be at least 1 and at most ", max_steps,
              " (got ", steps, ")");
        check(sigma_min > 0 && std::isfinite(sigma_max) && sigma_max >= sigma_min,
              "sampler: need 0 < sigma_min <= sigma_max < inf (got ", sigma_min, ", ", sigma_max, ")");
        check(rho > 0 && std::isfinite(rho), "sampler: rho must be positive and finite (got ", rho, ")");
        const double a = std::pow(sigma_max, 1 / rho), b = std::pow(sigma_min, 1 / rho);
        check(std::isfinite(a) && std::pow(b, rho) > 0, "sampler: rho ", rho, " makes the noise levels between ",
              sigma_min, " and ", sigma_max, " overflow or vanish in double precision");
        check(S_churn >= 0 && std::isfinite(S_churn) && S_noise >= 0 && std::isfinite(S_noise),
              "sampler: S_churn and S_noise must be non-negative and finite");
        check(S_min >= 0 && std::isfinite(S_min) && !std::isnan(S_max) && S_max >= S_min,
              "sampler: need 0 <= S_min <= S_max (got ", S_min, ", ", S_max, ")");
        check(std::isfinite(guidance), "sampler: guidance must be finite");
    }
};

// t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i < N,
// and t_N = 0: N + 1 values, in double whatever the network's precision. With N = 1 the
// single level is sigma_max.
inline std::vector<double> edm_time_steps(const SamplerOptions& o) {
    o.validate();
    const double a = std::pow(o.sigma_max, 1 / o.rho), b = std::pow(o.sigma_min, 1 / o.rho);
    std::vector<double> t(static_cast<std::size_t>(o.steps) + 1, 0.0);
    for (int i = 0; i < o.steps; ++i) {
        const double frac = o.steps > 1 ? double(i) / (o.steps - 1) : 0.0;
        t[static_cast<std::size_t>(i)] = std::pow(a + frac * (b - a), o.rho);
    }
    return t;
}

// Network evaluations per image: one per step plus a correction for all but the last
// (none with euler), twice that when a guide is evaluated beside the network.
inline int64_t edm_nfe(const SamplerOptions& o, bool has_guide) {
    const int64_t per_denoise = (has_guide && o.guidance != 1) ? 2 : 1;
    return per_denoise * (o.euler ? o.steps : 2 * o.steps - 1);
}

}  // namespace mpnet::sample
