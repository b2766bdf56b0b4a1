// Power-function EMA: the profile maths and the post-hoc solve against the reference
// implementation (phema.safetensors), the in-training tracker, and an end-to-end check that a
// reconstructed profile matches one tracked directly.
#include <cmath>
#include <cstring>
#include <vector>

#include <doctest/doctest.h>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/phema/profile.hpp"
#include "mpnet/phema/reconstruct.hpp"
#include "mpnet/phema/snapshot_files.hpp"
#include "mpnet/train/ema.hpp"

using namespace mpnet;
namespace {

const io::SafetensorsFile& ref() {
    static const auto file = io::SafetensorsFile::open(MPNET_TEST_DATA "/reference/phema.safetensors");
    return file;
}
std::vector<double> vec(const std::string& name) { return ref().read<double>(name); }

double rel_diff(double got, double want) {
    if (got == want) return 0;
    return std::abs(got - want) / std::abs(want);
}

std::vector<phema::Profile> profiles(const std::string& setup, const char* which) {
    const auto ofs = vec("solve." + setup + "." + which + "_ofs");
    const auto std = vec("solve." + setup + "." + which + "_std");
    std::vector<phema::Profile> p;
    for (std::size_t i = 0; i < ofs.size(); ++i) p.push_back({ofs[i], std[i]});
    return p;
}

// Row-major golden matrix against an Eigen matrix: max relative (or absolute) element error.
double max_error(const Eigen::MatrixXd& got, const std::vector<double>& want, bool relative) {
    REQUIRE(static_cast<std::size_t>(got.size()) == want.size());
    double worst = 0;
    for (Eigen::Index i = 0; i < got.rows(); ++i)
        for (Eigen::Index j = 0; j < got.cols(); ++j) {
            const double w = want[static_cast<std::size_t>(i * got.cols() + j)];
            worst = std::max(worst, relative ? rel_diff(got(i, j), w) : std::abs(got(i, j) - w));
        }
    return worst;
}

}  // namespace

// The exponent solve runs at compile time.
static_assert(phema::std_to_exp(0.1) > 6.9372 && phema::std_to_exp(0.1) < 6.9373);

TEST_CASE("phema golden: exp_to_std and std_to_exp") {
    const auto e = vec("exp_to_std.exp"), s = vec("exp_to_std.std");
    double worst = 0;
    for (std::size_t i = 0; i < e.size(); ++i) worst = std::max(worst, rel_diff(phema::exp_to_std(e[i]), s[i]));
    MESSAGE("exp_to_std: max relative error " << worst);
    CHECK(worst <= 1e-10);

    const auto s2 = vec("std_to_exp.std"), e2 = vec("std_to_exp.exp");
    worst = 0;
    for (std::size_t i = 0; i < s2.size(); ++i) worst = std::max(worst, rel_diff(phema::std_to_exp(s2[i]), e2[i]));
    MESSAGE("std_to_exp: max relative error " << worst);
    CHECK(worst <= 1e-10);
}

TEST_CASE("phema golden: beta, profile inner product and response") {
    const auto s = vec("beta.std"), tn = vec("beta.t_next"), td = vec("beta.t_delta"), b = vec("beta.beta");
    double worst = 0;
    for (std::size_t i = 0; i < s.size(); ++i) worst = std::max(worst, rel_diff(phema::beta(s[i], tn[i], td[i]), b[i]));
    MESSAGE("beta: max relative error " << worst);
    CHECK(worst <= 1e-10);
    CHECK(phema::beta(0.05, 2048, 2048) == 0.0);  // the first step starts the average afresh

    const auto ao = vec("corr.a_ofs"), as = vec("corr.a_std"), bo = vec("corr.b_ofs"), bs = vec("corr.b_std");
    const auto v = vec("corr.value");
    worst = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        const double got =
            phema::profile_dot(ao[i], phema::std_to_exp(as[i]), bo[i], phema::std_to_exp(bs[i]));
        worst = std::max(worst, rel_diff(got, v[i]));
    }
    MESSAGE("profile_dot: max relative error " << worst << " (smallest value " << v[4] << ")");
    CHECK(worst <= 1e-10);

    const auto ofs = vec("response.ofs"), rs = vec("response.std"), resp = vec("response.resp");
    const std::size_t len = resp.size() / ofs.size();
    worst = 0;
    for (std::size_t k = 0; k < ofs.size(); ++k) {
        std::vector<double> col(len);
        double sum = 0;
        for (std::size_t t = 0; t < len; ++t)
            sum += col[t] = phema::profile_density(static_cast<double>(t), ofs[k], phema::std_to_exp(rs[k]));
        for (std::size_t t = 0; t < len; ++t) worst = std::max(worst, rel_diff(col[t] / sum, resp[t * ofs.size() + k]));
    }
    MESSAGE("profile_density: max relative error " << worst);
    CHECK(worst <= 1e-10);
}

TEST_CASE("phema golden: reconstruction coefficients") {
    for (const std::string setup : {"small", "large"}) {
        CAPTURE(setup);
        const auto in = profiles(setup, "in"), out = profiles(setup, "out");
        const double err_a = max_error(phema::gram_matrix(in), vec("solve." + setup + ".A"), true);
        const double err_b = max_error(phema::cross_matrix(in, out), vec("solve." + setup + ".B"), true);
        bool warned = false;
        const Eigen::MatrixXd x = phema::solve_coefficients(in, out, [&](double) { warned = true; });
        const double err_x = max_error(x, vec("solve." + setup + ".X"), false);
        const double cond = phema::condition_number(phema::gram_matrix(in));
        MESSAGE(setup << ": A rel " << err_a << ", B rel " << err_b << ", X abs " << err_x << ", cond(A) " << cond);
        CHECK(err_a <= 1e-10);
        CHECK(err_b <= 1e-10);
        CHECK(err_x <= 1e-9);
        CHECK_FALSE(warned);
        for (Eigen::Index j = 0; j < x.cols(); ++j) {
            double sum = 0;  // a plain loop: GCC 12 warns spuriously inside Eigen's AVX-512 sum()
            for (Eigen::Index i = 0; i < x.rows(); ++i) sum += x(i, j);
            CHECK(std::abs(sum - 1) <= 1e-12);
        }
    }
}

TEST_CASE("phema: std_to_exp is accurate over its whole range and rejects the rest") {
    // Round trip through the closed form: sigma(gamma(sigma)) = sigma. Near std_max the exponent
    // is a double root, so its rounding error grows like sqrt(eps); 0.28 is still far from it.
    double worst = 0;
    for (double s = 0.001; s <= 0.28; s += 0.0005) worst = std::max(worst, rel_diff(phema::exp_to_std(phema::std_to_exp(s)), s));
    MESSAGE("sigma_rel round trip over [0.001, 0.28]: max relative error " << worst);
    CHECK(worst <= 1e-14);
    // The narrowest profile of the range, against a 50-digit bisection of the cubic.
    CHECK(rel_diff(phema::std_to_exp(0.001), 996.99949899786998740) <= 1e-14);
    CHECK(std::abs(phema::std_to_exp(phema::std_max) - phema::exp_min) < 1e-7);
    CHECK(std::abs(phema::exp_to_std(phema::exp_min) - phema::std_max) < 1e-15);
    for (const double bad : {0.0, -0.05, 0.31, 1.0, std::nan(""), HUGE_VAL}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(phema::std_to_exp(bad), Error);
    }
    CHECK_THROWS_AS(phema::exp_to_std(-0.5), Error);
    CHECK_THROWS_AS(phema::beta(0.05, 1000, 2000), Error);  // a step longer than the run
    CHECK_THROWS_AS(phema::profile_dot(0, 5, 10, 5), Error);
}

TEST_CASE("phema: solve_coefficients reports singular and ill-conditioned systems") {
    // Two copies of one snapshot: A is singular, no combination is defined.
    CHECK_THROWS_WITH_AS(phema::solve_coefficients({{100, 0.05}, {100, 0.05}}, {{100, 0.07}}),
                         doctest::Contains("not finite"), Error);
    // Two nearly equal widths at one time: solvable but very ill-conditioned.
    double cond = 0;
    phema::solve_coefficients({{100, 0.05}, {100, 0.0500001}, {100, 0.1}}, {{100, 0.07}},
                              [&](double c) { cond = c; });
    MESSAGE("near-duplicate snapshots: cond(A) = " << cond);
    CHECK(cond > phema::ill_conditioned);
    CHECK_THROWS_AS(phema::solve_coefficients({}, {{100, 0.07}}), Error);
    CHECK_THROWS_AS(phema::solve_coefficients({{100, 0.05}}, {{100, 0.4}}), Error);
}

namespace {

using Ema = train::PowerEma<double, CpuBackend>;

// A toy training trajectory: `width` parameters drifting along slow sinusoids plus a random
// walk, with fresh noise each step (what SGD noise looks like around a moving optimum).
double trajectory(int64_t step, int64_t e) {
    const double drift = std::sin(0.013 * step * (1 + e % 5) + 0.7 * e) + 0.002 * step;
    double walk = 0;
    for (int64_t s = 1; s <= step; s += 16) walk += 0.05 * rng::normal(7, uint64_t(e) * 100000 + uint64_t(s));
    return drift + walk + 0.3 * rng::normal(11, uint64_t(e) * 100000 + uint64_t(step));
}

// The weight the power-function EMA taken after step n gives the parameters of step s <= n
// (batch size constant): the density integrated over the step, ((s/n)^(g+1) - ((s-1)/n)^(g+1)).
double step_weight(int64_t s, int64_t n, double gamma) {
    const double g1 = gamma + 1;
    return std::pow(double(s) / double(n), g1) - std::pow(double(s - 1) / double(n), g1);
}

}  // namespace

TEST_CASE("PowerEma: the first step copies, later steps follow beta") {
    auto p = CpuTensor<double>::from_host({2}, std::vector<double>{1.0, 2.0});
    Ema ema({0.05, 0.10}, {{"w", p}});
    auto q = CpuTensor<double>::from_host({2}, std::vector<double>{5.0, -3.0});
    ema.update({{"w", q}}, 512, 512);
    CHECK(ema.profile(0)[0].second.to_host() == std::vector<double>{5.0, -3.0});
    auto r = CpuTensor<double>::from_host({2}, std::vector<double>{7.0, 0.0});
    ema.update({{"w", r}}, 1024, 512);
    const double b = phema::beta(0.10, 1024, 512);
    CHECK(ema.profile(1)[0].second.to_host()[0] == doctest::Approx(b * 5 + (1 - b) * 7).epsilon(1e-15));
    CHECK_THROWS_AS(ema.update({{"v", r}}, 1536, 512), Error);                       // another parameter
    CHECK_THROWS_AS(ema.update({{"w", CpuTensor<double>::zeros({3})}}, 1536, 512), Error);  // another shape
    CHECK_THROWS_AS(ema.update({{"w", r}}, 256, 512), Error);                         // time before one step
    CHECK(ema.profile(1)[0].second.to_host()[0] == doctest::Approx(b * 5 + (1 - b) * 7).epsilon(1e-15));
}

TEST_CASE("PowerEma: checkpoint state restores bit for bit") {
    const Shape shape{3, 4};
    auto param = [&](int64_t step) {
        std::vector<float> v(12);
        for (int64_t e = 0; e < 12; ++e) v[size_t(e)] = float(trajectory(step, e));
        return CpuTensor<float>::from_host(shape, v);
    };
    using FloatEma = train::PowerEma<float, CpuBackend>;
    FloatEma a({0.05, 0.10}, {{"net.w", param(0)}});
    for (int64_t s = 1; s <= 20; ++s) a.update({{"net.w", param(s)}}, double(s) * 64, 64);

    io::SafetensorsWriter w;
    a.save_state(w, "ema.");
    const auto file = io::SafetensorsFile::from_bytes(w.to_bytes(), "checkpoint");
    CHECK(file.contains("ema.sigma_rel"));
    CHECK(file.contains("ema.1.net.w"));
    FloatEma b({0.05, 0.10}, {{"net.w", param(0)}});
    b.load_state(file, "ema.");
    for (int64_t s = 21; s <= 30; ++s) {
        a.update({{"net.w", param(s)}}, double(s) * 64, 64);
        b.update({{"net.w", param(s)}}, double(s) * 64, 64);
    }
    for (std::size_t k = 0; k < 2; ++k) {
        const auto x = a.profile(k)[0].second.to_host(), y = b.profile(k)[0].second.to_host();
        CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    }
    FloatEma other({0.05, 0.07}, {{"net.w", param(0)}});
    CHECK_THROWS_WITH_AS(other.load_state(file, "ema."), doctest::Contains("other profiles"), Error);
    FloatEma wrong_shape({0.05, 0.10}, {{"net.w", CpuTensor<float>::zeros({12})}});
    CHECK_THROWS_AS(wrong_shape.load_state(file, "ema."), Error);
}

// End to end: EMAs of widths 0.05 and 0.10 snapshotted every k steps, combined post hoc into
// width 0.07, against a 0.07 EMA tracked in the same run.
//
// Why the error is what it is: with a constant batch, the EMA after step n is exactly
// sum_s w_n(s) theta_s with the step weights of step_weight() (beta telescopes). So the
// reconstruction error is exactly sum_s R_s theta_s, R = sum_i x_i w^(i) - w^(target), the
// residual of the least-squares fit of the target's step weights. Both weightings sum to 1, so
// sum_s R_s = 0 and |error| <= ||R||_1 * (max_s theta_s - min_s theta_s) / 2 for any trajectory.
// The test checks the identity to rounding (which proves the tracker right) and the bound.
TEST_CASE("phema end to end: a 0.07 profile rebuilt from 0.05 and 0.10 snapshots") {
    constexpr int64_t steps = 400, every = 10, width = 32;
    constexpr double batch = 256;
    const std::vector<double> widths{0.05, 0.10};
    std::vector<std::vector<double>> theta(steps + 1, std::vector<double>(width));
    for (int64_t s = 0; s <= steps; ++s)
        for (int64_t e = 0; e < width; ++e) theta[size_t(s)][size_t(e)] = trajectory(s, e);
    auto param = [&](int64_t s) { return CpuTensor<double>::from_host({width}, theta[size_t(s)]); };

    Ema tracked(widths, {{"p", param(0)}});
    Ema direct({0.07}, {{"p", param(0)}});
    std::vector<phema::Snapshot> snaps;
    std::vector<std::vector<double>> snap_values;
    for (int64_t s = 1; s <= steps; ++s) {
        tracked.update({{"p", param(s)}}, double(s) * batch, batch);
        direct.update({{"p", param(s)}}, double(s) * batch, batch);
        if (s % every) continue;
        for (std::size_t k = 0; k < widths.size(); ++k) {
            snaps.push_back({double(s) * batch / 1000, widths[k]});  // in kimg: the unit does not matter
            snap_values.push_back(tracked.profile(k)[0].second.to_host());
        }
    }
    double cond = 0;
    const Eigen::MatrixXd x = phema::solve_coefficients(snaps, {{double(steps) * batch / 1000, 0.07}},
                                                        [&](double c) { cond = c; });
    CHECK(cond == 0);  // no warning: 80 snapshots are well within double precision

    // R: the residual step weights of the fit.
    std::vector<double> r(steps + 1, 0.0);
    for (int64_t s = 1; s <= steps; ++s) r[size_t(s)] = -step_weight(s, steps, phema::std_to_exp(0.07));
    for (std::size_t i = 0; i < snaps.size(); ++i) {
        const auto n = int64_t(std::llround(snaps[i].time * 1000 / batch));
        for (int64_t s = 1; s <= n; ++s) r[size_t(s)] += x(Eigen::Index(i), 0) * step_weight(s, n, phema::std_to_exp(snaps[i].sigma_rel));
    }
    double r_l1 = 0;
    for (const double v : r) r_l1 += std::abs(v);

    const auto want = direct.profile(0)[0].second.to_host();
    double worst_identity = 0, worst_ratio = 0, worst_rel = 0, naive_rel = 0;
    for (int64_t e = 0; e < width; ++e) {
        double got = 0, predicted = 0, lo = INFINITY, hi = -INFINITY;
        for (std::size_t i = 0; i < snaps.size(); ++i) got += x(Eigen::Index(i), 0) * snap_values[i][size_t(e)];
        for (int64_t s = 1; s <= steps; ++s) {
            predicted += r[size_t(s)] * theta[size_t(s)][size_t(e)];
            lo = std::min(lo, theta[size_t(s)][size_t(e)]);
            hi = std::max(hi, theta[size_t(s)][size_t(e)]);
        }
        const double err = got - want[size_t(e)], half_range = (hi - lo) / 2;
        worst_identity = std::max(worst_identity, std::abs(err - predicted) / half_range);
        worst_ratio = std::max(worst_ratio, std::abs(err) / (r_l1 * half_range));
        worst_rel = std::max(worst_rel, std::abs(err) / half_range);
        // For scale: the 0.05 and 0.10 EMAs themselves differ from the 0.07 one by this much.
        const auto last = snap_values.size() - 2;
        naive_rel = std::max(naive_rel, std::abs(snap_values[last][size_t(e)] - want[size_t(e)]) / half_range);
    }
    MESSAGE("0.07 from 0.05/0.10 every " << every << " of " << steps << " steps: ||R||_1 = " << r_l1
            << ", max |error| / half-range = " << worst_rel << " (the 0.05 EMA itself: " << naive_rel
            << "), error / bound <= " << worst_ratio << ", identity residual " << worst_identity);
    CHECK(worst_identity <= 1e-12);  // the exact error formula holds to double rounding
    CHECK(worst_ratio <= 1.0);       // the trajectory-independent bound
    CHECK(r_l1 <= 1e-3);             // and the bound is tight enough to mean something
}

TEST_CASE("phema: snapshot file names") {
    CHECK(phema::snapshot_file_name("network-snapshot", 256, 0.05) == "network-snapshot-0000256-0.050.safetensors");
    const auto f = phema::parse_snapshot_file_name("/runs/00001-fmnist/network-snapshot-0012345-0.100.safetensors");
    REQUIRE(f.has_value());
    CHECK(f->prefix == "network-snapshot");
    CHECK(f->kimg == 12345);
    CHECK(f->time == 12345.0);
    CHECK(f->sigma_rel == 0.1);
    CHECK(f->path.filename() == "network-snapshot-0012345-0.100.safetensors");
    CHECK(phema::parse_snapshot_file_name("a-b-12345678-0.25.safetensors")->prefix == "a-b");
    for (const char* bad : {"network-snapshot-0000256-0.050.pkl", "network-snapshot-0000256-0,050.safetensors",
                            "network-snapshot-00x0256-0.050.safetensors", "network-snapshot-0000256-.050.safetensors",
                            "network-snapshot-0000256-0.safetensors", "-0000256-0.050.safetensors",
                            "0000256-0.050.safetensors", "network-snapshot-99999999999999999999-0.050.safetensors",
                            "training-state-0000256.safetensors"}) {
        CAPTURE(bad);
        CHECK_FALSE(phema::parse_snapshot_file_name(bad).has_value());
    }
}
