// The sample-quality metrics: the feature networks' kernels against direct double
// references, the preprocessing and the two networks against the reference code
// (pytorch-fid's Inception-v3 fed as the EDM2 authors' detector feeds it, dinov2's ViT-L/14
// at depth 2, both with the formula weights of scripts/metrics_golden.py), the Fréchet
// distance against calculate_metrics.py's scipy formula, and the statistics files.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "formula_weights.hpp"
#include "golden.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/metrics/dinov2.hpp"
#include "mpnet/metrics/frechet.hpp"
#include "mpnet/metrics/inception_v3.hpp"
#include "mpnet/metrics/preprocess.hpp"
#include "mpnet/metrics/stats_file.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

const io::SafetensorsFile& metrics_golden() {
    static const auto f = io::SafetensorsFile::open(test::test_data_dir() + "/metrics_golden.safetensors");
    return f;
}
const io::SafetensorsFile& fd_golden() {
    static const auto f = io::SafetensorsFile::open(test::test_data_dir() + "/metrics_fd.safetensors");
    return f;
}

using Inception = metrics::InceptionV3<float, CpuBackend>;
using Dino = metrics::DinoV2<float, CpuBackend>;

// Direct convolution in double: y[n, o, oy, ox] = b[o] + sum x[n, c, oy s - p + i, ox s - p + j] w[o, c, i, j].
CpuTensor<double> direct_conv(const CpuTensor<double>& x, const CpuTensor<double>& w, const CpuTensor<double>& b,
                              ops::Conv2dStep s, bool relu) {
    const auto e = ops::conv2d_bias_extents(
        x.shape(), w.shape(), b.shape(), s,
        Shape{x.size(0), w.size(0), ops::output_extent(x.size(2), w.size(2), s.stride_h, s.pad_h),
              ops::output_extent(x.size(3), w.size(3), s.stride_w, s.pad_w)});
    CpuTensor<double> y(Shape{e.n, e.cout, e.ho, e.wo});
    for (int64_t n = 0; n < e.n; ++n)
        for (int64_t o = 0; o < e.cout; ++o)
            for (int64_t oy = 0; oy < e.ho; ++oy)
                for (int64_t ox = 0; ox < e.wo; ++ox) {
                    double acc = b.data()[o];
                    for (int64_t c = 0; c < e.cin; ++c)
                        for (int64_t i = 0; i < e.kh; ++i)
                            for (int64_t j = 0; j < e.kw; ++j) {
                                const int64_t iy = oy * s.stride_h - s.pad_h + i, ix = ox * s.stride_w - s.pad_w + j;
                                if (iy < 0 || iy >= e.h || ix < 0 || ix >= e.w) continue;
                                acc += x.data()[((n * e.cin + c) * e.h + iy) * e.w + ix] *
                                       w.data()[((o * e.cin + c) * e.kh + i) * e.kw + j];
                            }
                    y.data()[((n * e.cout + o) * e.ho + oy) * e.wo + ox] = relu ? std::max(acc, 0.0) : acc;
                }
    return y;
}

template <class T>
CpuTensor<T> cast(const CpuTensor<double>& x) {
    CpuTensor<T> y(x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) y.data()[i] = T(x.data()[i]);
    return y;
}

// 8-bit images [N, C, H, W] of the golden file.
struct Images {
    std::vector<uint8_t> pixels;
    std::vector<int64_t> shape;
};

metrics::ImageBatch batch_of(const Images& t) {
    return {t.pixels, t.shape[0], t.shape[1], t.shape[2], t.shape[3]};
}

Images load_u8(const std::string& name) {
    const auto& f = metrics_golden();
    return {f.read<uint8_t>(name), f.info(name).shape};
}

// Every 13th row and column of a preprocessed batch, as the golden file samples it.
CpuTensor<float> every_13th(const std::vector<float>& x, int64_t n, int64_t size) {
    const int64_t s = (size + 12) / 13;
    CpuTensor<float> y(Shape{n, 3, s, s});
    for (int64_t p = 0; p < n * 3; ++p)
        for (int64_t r = 0; r < s; ++r)
            for (int64_t c = 0; c < s; ++c) y.data()[(p * s + r) * s + c] = x[std::size_t((p * size + 13 * r) * size + 13 * c)];
    return y;
}

metrics::FeatureStats stats_from(const std::string& prefix, const std::string& suffix) {
    const auto& f = fd_golden();
    return {2, f.read<double>(prefix + ".mu" + suffix), f.read<double>(prefix + ".sigma" + suffix)};
}

}  // namespace

TEST_CASE_TEMPLATE("feature kernels: conv2d_bias_forward against a direct convolution", T, float, double) {
    struct Case {
        int64_t cin, cout, h, w, kh, kw;
        ops::Conv2dStep step;
    };
    const Case cases[] = {
        {3, 5, 11, 9, 3, 3, {2, 2, 0, 0}},    // Inception's stride-2 3x3
        {4, 6, 7, 8, 1, 7, {1, 1, 0, 3}},     // 1x7
        {4, 6, 7, 8, 7, 1, {1, 1, 3, 0}},     // 7x1
        {5, 7, 9, 6, 5, 5, {1, 1, 2, 2}},     // "same": the packed kernel
        {6, 4, 5, 7, 1, 1, {1, 1, 0, 0}},     // pointwise: no unfolding
        {3, 8, 28, 28, 14, 14, {14, 14, 0, 0}},  // DINOv2's patch embedding
        {4, 3, 8, 8, 3, 3, {1, 1, 0, 0}},     // "valid" 3x3
        {2, 3, 6, 5, 3, 2, {2, 1, 1, 0}},     // mixed strides and paddings
    };
    uint64_t seed = 10;
    for (const auto& c : cases)
        for (const bool relu : {false, true}) {
            const auto x = test::random_tensor(Shape{2, c.cin, c.h, c.w}, seed++);
            const auto w = test::random_tensor(Shape{c.cout, c.cin, c.kh, c.kw}, seed++, 0.3);
            const auto b = test::random_tensor(Shape{c.cout}, seed++);
            const auto want = direct_conv(x, w, b, c.step, relu);
            CpuTensor<T> y(want.shape());
            conv2d_bias_forward(CpuBackend{}, cast<T>(x), cast<T>(w), cast<T>(b), c.step, relu, y);
            INFO("kernel ", c.kh, "x", c.kw, ", stride ", c.step.stride_h, "x", c.step.stride_w, ", relu ", relu);
            MPNET_CHECK_CLOSE(y, want, test::fwd_tol<T>);
        }
    CpuTensor<T> wrong(Shape{2, 5, 5, 5});
    CHECK_THROWS_WITH_AS(conv2d_bias_forward(CpuBackend{}, cast<T>(test::random_tensor(Shape{2, 3, 11, 9}, 1)),
                                             cast<T>(test::random_tensor(Shape{5, 3, 3, 3}, 2)),
                                             cast<T>(test::random_tensor(Shape{5}, 3)), ops::Conv2dStep{2, 2, 0, 0},
                                             false, wrong),
                         doctest::Contains("expected [2, 5, 5, 4]"), Error);
}

TEST_CASE_TEMPLATE("feature kernels: pooling, window copies, layer norm and GELU against direct references", T, float,
                   double) {
    const auto xd = test::random_tensor(Shape{2, 3, 9, 8}, 40);
    const auto x = cast<T>(xd);
    SUBCASE("pooling") {
        const ops::PoolStep steps[] = {{3, 2, 0, ops::Pooling::max},
                                       {3, 1, 1, ops::Pooling::max},
                                       {3, 1, 1, ops::Pooling::average_valid},
                                       {8, 1, 0, ops::Pooling::average_valid}};
        for (const auto& p : steps) {
            const int64_t ho = ops::output_extent(9, p.size, p.stride, p.pad), wo = ops::output_extent(8, p.size, p.stride, p.pad);
            CpuTensor<double> want(Shape{2, 3, ho, wo});
            for (int64_t q = 0; q < 6; ++q)
                for (int64_t oy = 0; oy < ho; ++oy)
                    for (int64_t ox = 0; ox < wo; ++ox) {
                        double m = -1e300, s = 0;
                        int count = 0;
                        for (int64_t i = 0; i < p.size; ++i)
                            for (int64_t j = 0; j < p.size; ++j) {
                                const int64_t iy = oy * p.stride - p.pad + i, ix = ox * p.stride - p.pad + j;
                                if (iy < 0 || iy >= 9 || ix < 0 || ix >= 8) continue;
                                const double v = xd.data()[(q * 9 + iy) * 8 + ix];
                                m = std::max(m, v), s += v, ++count;
                            }
                        want.data()[(q * ho + oy) * wo + ox] = p.mode == ops::Pooling::max ? m : s / count;
                    }
            CpuTensor<T> y(want.shape());
            pool2d_forward(CpuBackend{}, x, p, y);
            INFO("window ", p.size, ", stride ", p.stride, ", pad ", p.pad);
            MPNET_CHECK_CLOSE(y, want, test::fwd_tol<T>);
        }
    }
    SUBCASE("window copies") {
        CpuTensor<T> y = CpuTensor<T>::zeros(Shape{2, 5, 1, 80});
        copy_window(CpuBackend{}, x, ops::CopyWindow{1, 3, 2, 7, 2, 60}, y);
        for (int64_t n = 0; n < 2; ++n)
            for (int64_t c = 0; c < 5; ++c)
                for (int64_t t = 0; t < 80; ++t) {
                    const bool inside = c >= 2 && c < 4 && t >= 7 && t < 67;
                    const T want = inside ? x.data()[(n * 3 + c - 1) * 72 + t - 7 + 3] : T(0);
                    REQUIRE(y.data()[(n * 5 + c) * 80 + t] == want);
                }
        CHECK_THROWS_WITH_AS(copy_window(CpuBackend{}, x, ops::CopyWindow{0, 20, 0, 0, 1, 60}, y),
                             doctest::Contains("copy_window"), Error);
    }
    SUBCASE("layer norm over channels") {
        const auto g = test::random_tensor(Shape{3}, 41), b = test::random_tensor(Shape{3}, 42);
        CpuTensor<double> want(xd.shape());
        for (int64_t n = 0; n < 2; ++n)
            for (int64_t t = 0; t < 72; ++t) {
                double mean = 0, var = 0;
                for (int64_t c = 0; c < 3; ++c) mean += xd.data()[(n * 3 + c) * 72 + t] / 3;
                for (int64_t c = 0; c < 3; ++c) var += std::pow(xd.data()[(n * 3 + c) * 72 + t] - mean, 2) / 3;
                for (int64_t c = 0; c < 3; ++c)
                    want.data()[(n * 3 + c) * 72 + t] =
                        (xd.data()[(n * 3 + c) * 72 + t] - mean) / std::sqrt(var + 1e-6) * g.data()[c] + b.data()[c];
            }
        CpuTensor<T> y(x.shape());
        layer_norm_channels_forward(CpuBackend{}, x, 1e-6, cast<T>(g), cast<T>(b), y);
        MPNET_CHECK_CLOSE(y, want, test::fwd_tol<T>);
    }
    SUBCASE("GELU") {
        // torch.nn.functional.gelu in float64.
        const double in[] = {-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5};
        const double out[] = {-0.00404969409489031, -0.15865525393145702, -0.10032341857926907, 0.0,
                              0.34573123063700656, 0.841344746068543, 2.4844758366855597};
        CpuTensor<T> v(Shape{7}), y(Shape{7});
        for (int i = 0; i < 7; ++i) v.data()[i] = T(in[i]);
        gelu_forward(CpuBackend{}, v, y);
        for (int i = 0; i < 7; ++i) CHECK(double(y.data()[i]) == doctest::Approx(out[i]).epsilon(test::fwd_tol<T>));
    }
}

// Relative to the largest magnitude. The reference computes its sampling coordinates and
// weights in float32 (affine_grid's coordinates near 300 carry errors of 2e-5 pixel), we in
// double: measured 5e-6 to 2.2e-5 (the 310-row image). 5e-5 bounds that rounding; a half-pixel
// shift of the grid, on these random pixels, moves values by a large part of their range.
TEST_CASE("metrics preprocessing: the authors' Inception and DINOv2 inputs") {
    const auto images = load_u8("images"), gray = load_u8("gray");
    const auto inc = metrics::inception_input(batch_of(images));
    REQUIRE(inc.size() == std::size_t(2 * 3 * 299 * 299));
    MPNET_CHECK_CLOSE(every_13th(inc, 2, 299), test::load<float>(metrics_golden(), "inception.input_sample"), 5e-5);
    MPNET_CHECK_CLOSE(every_13th(metrics::inception_input(batch_of(gray)), 1, 299),
                      test::load<float>(metrics_golden(), "inception.gray_sample"), 5e-5);
    MPNET_CHECK_CLOSE(every_13th(metrics::dinov2_input(batch_of(images)), 2, 224),
                      test::load<float>(metrics_golden(), "dinov2.input_sample"), 5e-5);
    // The resize alone, before normalisation: where the antialiasing filter is stretched.
    const auto resized = metrics::detail::resample(batch_of(gray), metrics::detail::antialiased_bicubic_taps(310, 224),
                                                   metrics::detail::antialiased_bicubic_taps(150, 224), 1.0, 0.0);
    MPNET_CHECK_CLOSE(every_13th(resized, 1, 224), test::load<float>(metrics_golden(), "dinov2.gray_resized_sample"),
                      5e-5);
    const std::vector<uint8_t> two(2 * 2 * 4 * 4);
    CHECK_THROWS_WITH_AS(metrics::inception_input(metrics::ImageBatch{two, 2, 2, 4, 4}),
                         doctest::Contains("1 or 3 channels"), Error);
}

// Features relative to their largest magnitude. Inception-v3: 94 layers in float32 summed
// in other orders than the reference's (measured 2.9e-7); DINOv2: two blocks of width 1024
// (measured 1.5e-6). 1e-5 leaves room for other CPUs' kernels.
TEST_CASE("metrics: Inception-v3 features match pytorch-fid's network") {
    const auto weights = test::formula_weights(metrics_golden(), "inception");
    const auto net = Inception::load(weights);
    const auto in = metrics::inception_input(batch_of(load_u8("images")));
    const auto f = net.features(CpuTensor<float>::from_host(Shape{2, 3, 299, 299}, in));
    CHECK(f.shape() == Shape{2, 2048});
    MPNET_CHECK_CLOSE(f, test::load<float>(metrics_golden(), "inception.features"), 1e-5);

    CHECK_THROWS_WITH_AS(Inception::load(
                             test::formula_weights(metrics_golden(), "inception", "Mixed_6c.branch7x7_2.bn.running_var")),
                         doctest::Contains("missing tensor 'Mixed_6c.branch7x7_2.bn.running_var'"), Error);
    CHECK_THROWS_WITH_AS(
        Inception::load(test::formula_weights(metrics_golden(), "inception", "", "aux.w")),
        doctest::Contains("tensor 'aux.w' is not part of Inception-v3"), Error);
    CHECK_THROWS_WITH_AS(net.features(CpuTensor<float>(Shape{1, 3, 224, 224})),
                         doctest::Contains("is not [N, 3, 299, 299]"), Error);
}

TEST_CASE("metrics: DINOv2 ViT-L/14 features (depth 2) match dinov2's network") {
    const auto weights = test::formula_weights(metrics_golden(), "dinov2");
    const auto net = Dino::load(weights, metrics::dinov2_size);
    CHECK(net.channels() == 1024);
    CHECK(net.depth() == 2);
    const auto in = metrics::dinov2_input(batch_of(load_u8("images")));
    const auto f = net.features(CpuTensor<float>::from_host(Shape{2, 3, 224, 224}, in));
    CHECK(f.shape() == Shape{2, 1024});
    MPNET_CHECK_CLOSE(f, test::load<float>(metrics_golden(), "dinov2.features"), 1e-5);

    CHECK_THROWS_WITH_AS(Dino::load(
                             test::formula_weights(metrics_golden(), "dinov2", "blocks.1.ls2.gamma"), 224),
                         doctest::Contains("missing tensor 'blocks.1.ls2.gamma'"), Error);
    CHECK_THROWS_WITH_AS(Dino::load(weights, 220),
                         doctest::Contains("do not make a DINOv2 ViT for 220 px images"), Error);
}

// calculate_metrics.py's values come from scipy's sqrtm, whose own error shows in its
// distance of a set to itself (4.8e-7 for the singular case here); ours is an
// eigen-decomposition. 1e-6 of the distance bounds both. A set's distance to itself is the
// square roots of the rounding of the singular covariance's null eigenvalues, about
// sqrt(1e-16 |S|) each: 5.2e-7 (scipy's: 4.8e-7), so bounded by 1e-8 of the distance.
TEST_CASE("Fréchet distance against calculate_metrics.py (scipy.linalg.sqrtm)") {
    for (const std::string c : {"fd0", "fd1", "fd2"}) {
        const auto a = stats_from(c, "1"), b = stats_from(c, "2");
        const double want = fd_golden().read<double>(c + ".value")[0];
        INFO(c);
        CHECK(metrics::frechet_distance(a, b) == doctest::Approx(want).epsilon(1e-6));
        CHECK(metrics::frechet_distance(b, a) == doctest::Approx(want).epsilon(1e-6));
        CHECK(std::abs(metrics::frechet_distance(a, a)) < 1e-8 * want);
        // Shifting the mean by d adds |d|^2 and nothing else.
        auto shifted = a;
        double d2 = 0;
        for (std::size_t i = 0; i < shifted.mu.size(); ++i) {
            const double d = 0.01 * double(i % 7) - 0.03;
            shifted.mu[i] += d, d2 += d * d;
        }
        CHECK(metrics::frechet_distance(a, shifted) == doctest::Approx(d2).epsilon(1e-6));
    }
    CHECK_THROWS_WITH_AS(metrics::frechet_distance(stats_from("fd0", "1"), stats_from("pkl.fid", "")),
                         doctest::Contains("statistics of 48 and 16 features"), Error);
}

TEST_CASE("feature statistics: accumulated in batches as calculate_metrics.py does") {
    const int64_t d = 5, n = 9;
    const auto f = test::random_tensor(Shape{n, d}, 50);
    metrics::StatsAccumulator acc(d);
    acc.add(std::span<const double>(f.data(), 4 * d), 4);
    acc.add(std::span<const double>(f.data() + 4 * d, 5 * d), 5);
    const auto s = acc.finish();
    CHECK(s.count == n);
    for (int64_t i = 0; i < d; ++i) {
        double mean_i = 0;
        for (int64_t r = 0; r < n; ++r) mean_i += f.data()[r * d + i] / double(n);
        CHECK(s.mu[std::size_t(i)] == doctest::Approx(mean_i).epsilon(1e-12));
        for (int64_t j = 0; j < d; ++j) {
            double mean_j = 0, cov = 0;
            for (int64_t r = 0; r < n; ++r) mean_j += f.data()[r * d + j] / double(n);
            for (int64_t r = 0; r < n; ++r) cov += (f.data()[r * d + i] - mean_i) * (f.data()[r * d + j] - mean_j);
            CHECK(s.sigma[std::size_t(i * d + j)] == doctest::Approx(cov / double(n - 1)).epsilon(1e-10));
        }
    }
    metrics::StatsAccumulator one(d);
    one.add(std::span<const double>(f.data(), d), 1);
    CHECK_THROWS_WITH_AS((void)one.finish(), doctest::Contains("at least 2 images"), Error);
}

TEST_CASE("statistics files: the authors' .pkl read without running it, mpnet's safetensors written atomically") {
    const auto stats = metrics::load_stats(test::test_data_dir() + "/metrics_stats.pkl");
    REQUIRE(stats.size() == 2);
    const auto& f = fd_golden();
    CHECK(stats.at("fid").count == 50);
    CHECK(stats.at("fid").mu == f.read<double>("pkl.fid.mu"));
    CHECK(stats.at("fid").sigma == f.read<double>("pkl.fid.sigma"));
    CHECK(stats.at("fd_dinov2").sigma == f.read<double>("pkl.fd_dinov2.sigma"));

    const fs::path dir = fs::temp_directory_path() / ("mpnet_stats_" + std::to_string(getpid()));
    fs::create_directories(dir);
    metrics::save_stats(stats, dir / "ref.safetensors");
    const auto back = metrics::load_stats(dir / "ref.safetensors");
    CHECK(back.at("fid").mu == stats.at("fid").mu);
    CHECK(back.at("fd_dinov2").sigma == stats.at("fd_dinov2").sigma);
    CHECK(back.at("fid").count == 50);

    // A pickle naming os.system is refused before anything runs.
    CHECK_THROWS_WITH_AS(metrics::load_stats(test::test_data_dir() + "/edm2_pickle/evil.pkl"),
                         doctest::Contains("os"), Error);
    {
        std::ofstream(dir / "junk.pkl") << "not a pickle";
    }
    CHECK_THROWS_WITH_AS(metrics::load_stats(dir / "junk.pkl"), doctest::Contains("junk.pkl"), Error);
    CHECK_THROWS_WITH_AS(metrics::load_stats(dir / "none.safetensors"), doctest::Contains("no such file"), Error);
    fs::remove_all(dir);
}
