// Power-function EMA profiles (EDM2, section 3.1 and appendix C.1).
//
// An EMA whose beta at images-seen t is (1 - dt/t)^(gamma+1) averages the training
// trajectory up to time T with the density p(t) = (gamma+1) t^gamma / T^(gamma+1) on [0, T].
// Its relative width sigma_rel = std(p) / T = sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))).
// Everything here is double precision and backend-agnostic.
#pragma once
#include <cmath>
#include <limits>

#include "mpnet/core/error.hpp"

namespace mpnet::phema {

// sigma_rel(gamma) rises from 0 at gamma = -1 to its maximum at the root of
// gamma^2 + 3 gamma + 1 = 0 (gamma = -1/phi^2, phi the golden ratio), then falls to 0 as
// gamma grows. std_to_exp inverts the falling branch, so exponents start at exp_min and
// relative widths end at std_max = phi^(-5/2).
inline constexpr double exp_min = -0.38196601125010515180;
inline constexpr double std_max = 0.30028310600077760789;

namespace detail {

// q(gamma) = sigma^2 (gamma+2)^2 (gamma+3) - (gamma+1): the cubic of docs/design.md section 4.3
// multiplied by sigma^2, written in factored form so no coefficient of size sigma^-2 is ever
// formed.
constexpr double cubic(double gamma, double s2) {
    const double g2 = gamma + 2;
    return s2 * g2 * g2 * (gamma + 3) - (gamma + 1);
}
constexpr double cubic_slope(double gamma, double s2) {
    const double g2 = gamma + 2;
    return s2 * g2 * (3 * gamma + 8) - 1;
}

}  // namespace detail

// The exponent gamma >= exp_min of the profile with relative width sigma_rel.
//
// Newton's method on q from gamma0 = 1/sigma - 2: every root has gamma + 2 < 1/sigma
// (sigma^2 = (gamma+1) / ((gamma+2)^2 (gamma+3)) < 1/(gamma+2)^2), q is convex right of -7/3
// and q(gamma0) = 2 > 0, so the iterates fall monotonically onto the largest root. In floating point they
// stop falling once the root is reached to rounding, which ends the loop without a
// tolerance; near std_max the root is double and convergence turns linear, hence the cap.
constexpr double std_to_exp(double sigma_rel) {
    if (!(sigma_rel > 0 && sigma_rel <= std_max))
        fail("phema: sigma_rel ", sigma_rel, " is outside the valid range (0, ", std_max,
             "]: wider profiles do not exist");
    const double s2 = sigma_rel * sigma_rel;
    double gamma = 1 / sigma_rel - 2;
    for (int i = 0; i < 200; ++i) {
        const double slope = detail::cubic_slope(gamma, s2);
        if (!(slope > 0)) break;  // at the double root (sigma_rel = std_max) itself
        const double next = gamma - detail::cubic(gamma, s2) / slope;
        if (!(next < gamma)) break;
        gamma = next;
    }
    return gamma < exp_min ? exp_min : gamma;
}

inline double exp_to_std(double gamma) {
    if (!(gamma >= exp_min && gamma < std::numeric_limits<double>::infinity()))
        fail("phema: exponent ", gamma, " is outside the valid range [", exp_min,
             ", inf): std_to_exp never yields it, and its width is shared with a larger exponent");
    const double g2 = gamma + 2;
    return std::sqrt((gamma + 1) / (g2 * g2 * (gamma + 3)));
}

// The EMA decay for the step that brings the images seen from t_next - t_delta to t_next.
// log1p keeps (1 - t_delta/t_next) accurate when the step is small against t_next; the
// first step (t_delta == t_next) gives exactly 0, so the average starts at the parameters.
inline double beta_from_exp(double gamma, double t_next, double t_delta) {
    if (!(t_delta > 0 && t_delta <= t_next && t_next < std::numeric_limits<double>::infinity()))
        fail("phema: beta needs 0 < t_delta <= t_next < inf, got t_delta ", t_delta, ", t_next ", t_next);
    return std::exp((gamma + 1) * std::log1p(-t_delta / t_next));
}

inline double beta(double sigma_rel, double t_next, double t_delta) {
    return beta_from_exp(std_to_exp(sigma_rel), t_next, t_delta);
}

// The profile's averaging density at time t, for an average taken at time t_end.
inline double profile_density(double t, double t_end, double gamma) {
    if (t < 0 || t > t_end) return 0;
    return std::exp(gamma * std::log(t / t_end)) * (gamma + 1) / t_end;
}

// Inner product  integral p_a(t) p_b(t) dt  of the profiles ending at t_a and t_b:
// (gamma_a+1)(gamma_b+1) (t_min/t_max)^gamma_later / ((gamma_a+gamma_b+1) t_max), where
// gamma_later is the exponent of the profile that ends at t_max. With exponents near 100 the
// power underflows long before the product does, so it is formed in log space.
inline double profile_dot(double t_a, double gamma_a, double t_b, double gamma_b) {
    constexpr double inf = std::numeric_limits<double>::infinity();
    if (!(t_a > 0 && t_a < inf && t_b > 0 && t_b < inf))
        fail("phema: profile times must be positive and finite, got ", t_a, " and ", t_b);
    if (!(gamma_a + gamma_b + 1 > 0 && gamma_a < inf && gamma_b < inf))
        fail("phema: exponents ", gamma_a, " and ", gamma_b, " give a divergent inner product");
    const bool a_first = t_a < t_b;
    const double t_min = a_first ? t_a : t_b;
    const double t_max = a_first ? t_b : t_a;
    const double gamma_later = a_first ? gamma_b : gamma_a;
    const double ratio = t_min / t_max;
    const double log_ratio = ratio > 0 ? std::log(ratio) : std::log(t_min) - std::log(t_max);
    const double log_value = std::log((gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)) +
                             gamma_later * log_ratio - std::log(t_max);
    return std::exp(log_value);
}

}  // namespace mpnet::phema
