// Post-hoc EMA: the coefficients that combine stored EMA snapshots into a new profile.
//
// Each snapshot is the training trajectory averaged with a power-function density p_i; a
// target profile p is approximated by sum_i x_i p_i, the least-squares fit in L2 over time.
// Its normal equations are A x = b with A[i][j] = <p_i, p_j> (the Gram matrix of the
// snapshots) and b[i] = <p_i, p>. Each column is then rescaled to sum 1 so the combination
// stays an average even where the fit is inexact.
#pragma once
#include <Eigen/Dense>
#include <Eigen/SVD>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/phema/profile.hpp"

namespace mpnet::phema {

// A power-function profile: the average taken at `time` (any unit, e.g. kimg: only ratios
// of times matter) with relative width `sigma_rel`.
struct Profile {
    double time;
    double sigma_rel;
};
using Snapshot = Profile;
using Target = Profile;

// Above this the solve loses more than half of double precision's 16 digits.
inline constexpr double ill_conditioned = 1e8;

// Called with cond(A) when it exceeds ill_conditioned.
using ConditionWarning = std::function<void(double condition_number)>;

namespace detail {
inline std::vector<double> exponents(const std::vector<Profile>& profiles) {
    std::vector<double> gammas;
    gammas.reserve(profiles.size());
    for (const Profile& p : profiles) gammas.push_back(std_to_exp(p.sigma_rel));
    return gammas;
}
}  // namespace detail

// B[i][j] = <p_in_i, p_out_j>.
inline Eigen::MatrixXd cross_matrix(const std::vector<Snapshot>& in, const std::vector<Target>& out) {
    const std::vector<double> g_in = detail::exponents(in), g_out = detail::exponents(out);
    Eigen::MatrixXd b(static_cast<Eigen::Index>(in.size()), static_cast<Eigen::Index>(out.size()));
    for (Eigen::Index i = 0; i < b.rows(); ++i)
        for (Eigen::Index j = 0; j < b.cols(); ++j) {
            const auto ui = static_cast<std::size_t>(i), uj = static_cast<std::size_t>(j);
            b(i, j) = profile_dot(in[ui].time, g_in[ui], out[uj].time, g_out[uj]);
        }
    return b;
}

// A = the snapshots' Gram matrix.
inline Eigen::MatrixXd gram_matrix(const std::vector<Snapshot>& in) { return cross_matrix(in, in); }

// Ratio of the largest to the smallest singular value (infinite when singular).
inline double condition_number(const Eigen::MatrixXd& a) {
    const Eigen::VectorXd s = Eigen::BDCSVD<Eigen::MatrixXd>(a).singularValues();
    if (s.size() == 0) return 1;
    // Sorted in decreasing order; read directly, as GCC 12 warns spuriously in Eigen's AVX-512 minCoeff.
    const double smin = s[s.size() - 1];
    return smin > 0 ? s[0] / smin : std::numeric_limits<double>::infinity();
}

// X[i][j]: the weight of snapshot i in target j; each column sums to 1.
// Partial-pivoting LU, as numpy.linalg.solve in the reference: A is symmetric positive
// definite in exact arithmetic, but with cond(A) ~ 1e5 and above rounding can break the
// positivity a Cholesky factorisation relies on.
inline Eigen::MatrixXd solve_coefficients(const std::vector<Snapshot>& in, const std::vector<Target>& out,
                                          const ConditionWarning& warn = {}) {
    check(!in.empty(), "phema: no snapshots to reconstruct from");
    check(!out.empty(), "phema: no target profiles to reconstruct");
    const Eigen::MatrixXd a = gram_matrix(in);
    const Eigen::MatrixXd b = cross_matrix(in, out);
    if (warn) {
        const double cond = condition_number(a);
        if (!(cond <= ill_conditioned)) warn(cond);
    }
    Eigen::MatrixXd x = a.partialPivLu().solve(b);
    for (Eigen::Index j = 0; j < x.cols(); ++j) {
        double sum = 0;  // a plain loop: GCC 12 warns spuriously inside Eigen's AVX-512 sum()
        for (Eigen::Index i = 0; i < x.rows(); ++i) sum += x(i, j);
        for (Eigen::Index i = 0; i < x.rows(); ++i) x(i, j) /= sum;
        for (Eigen::Index i = 0; i < x.rows(); ++i)
            if (!std::isfinite(x(i, j)))
                fail("phema: coefficient of snapshot ", i, " (time ", in[static_cast<std::size_t>(i)].time,
                     ", sigma_rel ", in[static_cast<std::size_t>(i)].sigma_rel, ") for target ", j, " (time ",
                     out[static_cast<std::size_t>(j)].time, ", sigma_rel ", out[static_cast<std::size_t>(j)].sigma_rel,
                     ") is not finite: the snapshots cannot represent it (duplicate or singular set)");
    }
    return x;
}

}  // namespace mpnet::phema
