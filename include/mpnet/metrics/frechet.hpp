// Feature statistics and the Fréchet distance between two Gaussians, in double precision.
//
// Statistics are accumulated as the EDM2 authors' calculate_metrics.py does: the sum of the
// features and the sum of their outer products, then mu = sum / n and
// sigma = (sum of outer products - n mu mu^T) / (n - 1).
//
// The distance is |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). The authors take the
// trace of scipy.linalg.sqrtm(S1 S2), a Schur-form square root of a non-symmetric product.
// Here the same trace comes from a symmetric problem: with S1 = A A^T, S1 S2 has the
// eigenvalues of A^T S2 A, which is symmetric positive semi-definite, so
// tr sqrt(S1 S2) = sum of sqrt(eigenvalues of A^T S2 A). Values that rounding makes slightly
// negative are taken as zero, which keeps singular and ill-conditioned covariances (fewer
// images than features) real and stable.
#pragma once
#include <Eigen/Core>
#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::metrics {

struct FeatureStats {
    int64_t count = 0;          // images
    std::vector<double> mu;     // [D]
    std::vector<double> sigma;  // [D, D], row-major

    [[nodiscard]] int64_t dim() const { return int64_t(mu.size()); }
};

// Running sums of features [rows, D].
class StatsAccumulator {
public:
    explicit StatsAccumulator(int64_t dim) : sum_(Eigen::VectorXd::Zero(dim)), outer_(Eigen::MatrixXd::Zero(dim, dim)) {}

    [[nodiscard]] int64_t dim() const { return sum_.size(); }
    [[nodiscard]] int64_t count() const { return count_; }

    template <class F>
    void add(std::span<const F> features, int64_t rows) {
        check(rows >= 0 && features.size() == std::size_t(rows * dim()), "feature statistics: ", features.size(),
              " values are not ", rows, " rows of ", dim());
        if (rows == 0) return;
        Eigen::MatrixXd f(dim(), rows);  // one image per column
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t d = 0; d < dim(); ++d) f(d, r) = double(features[std::size_t(r * dim() + d)]);
        sum_ += f.rowwise().sum();
        outer_.selfadjointView<Eigen::Lower>().rankUpdate(f);
        count_ += rows;
    }

    // Replaces the sums by sum(this process's sums) over processes: `sum` adds a vector of
    // doubles elementwise across them in place (a communicator's all-reduce).
    void sum_across(const std::function<void(std::span<double>)>& sum) {
        const int64_t d = dim();
        std::vector<double> packed(std::size_t(1 + d + d * d));
        packed[0] = double(count_);
        Eigen::Map<Eigen::VectorXd>(packed.data() + 1, d) = sum_;
        Eigen::Map<Eigen::MatrixXd>(packed.data() + 1 + d, d, d) = outer_;
        sum(packed);
        count_ = int64_t(packed[0]);
        sum_ = Eigen::Map<Eigen::VectorXd>(packed.data() + 1, d);
        outer_ = Eigen::Map<Eigen::MatrixXd>(packed.data() + 1 + d, d, d);
    }

    // Needs at least two images.
    [[nodiscard]] FeatureStats finish() const {
        check(count_ >= 2, "feature statistics need at least 2 images, got ", count_);
        const double n = double(count_);
        const Eigen::VectorXd mu = sum_ / n;
        Eigen::MatrixXd sigma = outer_.selfadjointView<Eigen::Lower>();
        sigma = (sigma - n * mu * mu.transpose()) / (n - 1);
        FeatureStats s{count_, std::vector<double>(mu.data(), mu.data() + mu.size()), std::vector<double>(sigma.size())};
        Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(s.sigma.data(), dim(), dim()) =
            sigma;
        return s;
    }

private:
    Eigen::VectorXd sum_;
    Eigen::MatrixXd outer_;  // lower triangle of the sum of f f^T
    int64_t count_ = 0;
};

namespace detail {

inline Eigen::MatrixXd square_matrix(const FeatureStats& s) {
    return Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(s.sigma.data(),
                                                                                                   s.dim(), s.dim());
}

}  // namespace detail

namespace detail {

// A with S1 = A A^T: P^T L sqrt(D) from a pivoted LDL^T factorisation, or, where it meets a
// zero pivot (a singular S1: fewer images than features), the symmetric square root from an
// eigen-decomposition. Pivots and eigenvalues that rounding makes negative count as zero.
inline Eigen::MatrixXd psd_factor(const Eigen::MatrixXd& s1) {
    const Eigen::LDLT<Eigen::MatrixXd> ldlt(s1);
    if (ldlt.info() == Eigen::Success) {
        Eigen::MatrixXd a = ldlt.matrixL();
        a = a * ldlt.vectorD().cwiseMax(0.0).cwiseSqrt().asDiagonal();
        return ldlt.transpositionsP().transpose() * a;
    }
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(s1);
    check(eig.info() == Eigen::Success, "Fréchet distance: the eigen-decomposition of a covariance did not converge");
    return eig.eigenvectors() * eig.eigenvalues().cwiseMax(0.0).cwiseSqrt().asDiagonal();
}

}  // namespace detail

// tr sqrt(S1 S2) for symmetric positive semi-definite S1, S2: with S1 = A A^T,
// S1 S2 = A (A^T S2) has the eigenvalues of A^T S2 A, which is symmetric positive
// semi-definite, so only its eigenvalues are needed.
inline double trace_sqrt_product(const Eigen::MatrixXd& s1, const Eigen::MatrixXd& s2) {
    const Eigen::MatrixXd a = detail::psd_factor(s1);
    Eigen::MatrixXd m = a.transpose() * s2 * a;
    m = (m + m.transpose()).eval() * 0.5;  // symmetric to the last bit
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(m, Eigen::EigenvaluesOnly);
    check(eig.info() == Eigen::Success, "Fréchet distance: the eigen-decomposition did not converge");
    return eig.eigenvalues().cwiseMax(0.0).cwiseSqrt().sum();
}

inline double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
    check(a.dim() == b.dim() && a.dim() > 0 && a.sigma.size() == std::size_t(a.dim() * a.dim()) &&
              b.sigma.size() == a.sigma.size(),
          "Fréchet distance: statistics of ", a.dim(), " and ", b.dim(), " features");
    double mean_term = 0;
    for (int64_t i = 0; i < a.dim(); ++i) mean_term += (a.mu[std::size_t(i)] - b.mu[std::size_t(i)]) * (a.mu[std::size_t(i)] - b.mu[std::size_t(i)]);
    const Eigen::MatrixXd s1 = detail::square_matrix(a), s2 = detail::square_matrix(b);
    return mean_term + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2);
}

}  // namespace mpnet::metrics
