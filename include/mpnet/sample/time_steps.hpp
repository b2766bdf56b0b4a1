// The settings of the EDM sampler and its noise-level schedule (Karras et al. 2022, eq. 5).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
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
    // Guidance only at noise levels t in [guidance_sigma_min, guidance_sigma_max] (Kynkaanniemi
    // et al. 2024, "Applying guidance in a limited interval"); elsewhere D = net alone.
    double guidance_sigma_min = 0;
    double guidance_sigma_max = std::numeric_limits<double>::infinity();

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
        check(guidance_sigma_min >= 0 && std::isfinite(guidance_sigma_min) && !std::isnan(guidance_sigma_max) &&
                  guidance_sigma_max >= guidance_sigma_min,
              "sampler: need 0 <= guidance interval low <= high (got ", guidance_sigma_min, ", ", guidance_sigma_max,
              ")");
    }

    // Whether a guide, if given, is evaluated at noise level t.
    [[nodiscard]] bool guided_at(double t) const {
        return guidance != 1 && guidance_sigma_min <= t && t <= guidance_sigma_max;
    }

    // The churn of a step starting at t: gamma = min(S_churn / N, sqrt 2 - 1) inside
    // [S_min, S_max], 0 outside; the step then denoises at t_hat = t (1 + gamma).
    [[nodiscard]] double churn_gamma(double t) const {
        return S_churn > 0 && S_min <= t && t <= S_max ? std::min(S_churn / steps, std::sqrt(2.0) - 1) : 0.0;
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
// (none with euler), and one more for each of those where a guide is evaluated.
inline int64_t edm_nfe(const SamplerOptions& o, bool has_guide) {
    const std::vector<double> t = edm_time_steps(o);
    int64_t nfe = 0;
    auto denoise = [&](double level) { nfe += has_guide && o.guided_at(level) ? 2 : 1; };
    for (std::size_t i = 0; i < std::size_t(o.steps); ++i) {
        denoise(t[i] * (1 + o.churn_gamma(t[i])));
        if (!o.euler && i + 1 < std::size_t(o.steps)) denoise(t[i + 1]);
    }
    return nfe;
}

}  // namespace mpnet::sample
