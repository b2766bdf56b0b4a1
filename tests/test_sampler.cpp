// The EDM sampler: the golden trajectories of the reference implementation (every network
// call, unguided and guided), the step schedule, NFE counts, churn, and independence of
// batch size and thread count.
#include <omp.h>

#include <cstring>

#include "golden.hpp"
#include "mpnet/sample/edm_sampler.hpp"
#include "mpnet/sample/seeds.hpp"
#include "test_sampler_helpers.hpp"

using namespace mpnet;
using test::golden;
using test::load;

namespace {

// The golden README measured a plain float32 run of the sampler at 3.1e-6 of each tensor's
// max-abs (values up to 308); 1e-4 leaves room for our summation orders. In double the only
// difference from the stored float64 trajectory is its rounding to float32 (6e-8 relative).
template <class T>
constexpr double sampler_tol = std::is_same_v<T, float> ? 1e-4 : 1e-6;

template <class T>
using NetDenoiser = sample::NetworkDenoiser<T, CpuBackend>;

// Call k of a stored [calls, N, C, H, W] record.
template <class T>
CpuTensor<T> call(const CpuTensor<T>& all, int64_t k) {
    const auto& s = all.shape();
    return all.slice(k, k + 1).view(Shape{s[1], s[2], s[3], s[4]});
}

template <class T>
CpuTensor<T> load_calls(const std::string& name) {
    const auto& f = golden("sampler.safetensors");
    const auto& info = f.info(name);
    return CpuTensor<T>::from_host(Shape(std::span<const int64_t>(info.shape)), f.read<T>(name));
}

template <class T, class R>
void check_calls(const R& rec, const std::string& prefix, const std::string& out_name) {
    const auto& f = golden("sampler.safetensors");
    const auto xs = load_calls<T>(prefix + ".calls.x"), ds = load_calls<T>(prefix + ".calls." + out_name);
    const auto ts = f.read<double>(prefix + ".calls.t");
    REQUIRE(rec.x.size() == ts.size());
    for (std::size_t k = 0; k < ts.size(); ++k) {
        CAPTURE(k);
        CHECK(rec.t[k] == doctest::Approx(ts[k]).epsilon(1e-6));  // stored as float32
        MPNET_CHECK_CLOSE(rec.x[k], call(xs, int64_t(k)), sampler_tol<T>);
        MPNET_CHECK_CLOSE(rec.out[k], call(ds, int64_t(k)), sampler_tol<T>);
    }
}

sample::SamplerOptions golden_options() {
    sample::SamplerOptions o;
    o.steps = 6;
    return o;
}

}  // namespace

TEST_CASE("sampler: the step schedule matches the reference's t_steps") {
    const auto ref = golden("sampler.safetensors").read<double>("t_steps");
    const auto t = sample::edm_time_steps(golden_options());
    REQUIRE(t.size() == ref.size());
    for (std::size_t i = 0; i < t.size(); ++i) CHECK(t[i] == doctest::Approx(ref[i]).epsilon(1e-12));
    CHECK(t.back() == 0);
    sample::SamplerOptions one;
    one.steps = 1;
    CHECK(sample::edm_time_steps(one) == std::vector<double>{80, 0});
}

TEST_CASE_TEMPLATE("golden: Heun sampler, every network call and the output", T, float, double) {
    const auto& f = golden("sampler.safetensors");
    nn::Precond<T, CpuBackend> net(test::golden_unet_config());
    nn::load_state(net, golden("unet.safetensors"), "", true);
    test::Recorder<NetDenoiser<T>, T> rec{NetDenoiser<T>(net)};
    const auto result = sample::edm_sample(rec, nullptr, load<T>(f, "noise"), load<T>(f, "labels"), golden_options());
    MPNET_CHECK_CLOSE(result.images, load<T>(f, "plain.out"), sampler_tol<T>);
    CHECK(result.nfe == 11);
    check_calls<T>(rec, "plain", "D");
}

TEST_CASE_TEMPLATE("golden: guided sampler (w = 1.7), both networks' calls and the output", T, float, double) {
    const auto& f = golden("sampler.safetensors");
    nn::Precond<T, CpuBackend> net(test::golden_unet_config()), gnet(test::golden_unet_config());
    nn::load_state(net, golden("unet.safetensors"), "", true);
    nn::load_state(gnet, f, "gnet.", true);
    test::Recorder<NetDenoiser<T>, T> rec_net{NetDenoiser<T>(net)}, rec_gnet{NetDenoiser<T>(gnet)};
    auto o = golden_options();
    o.guidance = 1.7;
    const auto result = sample::edm_sample(rec_net, &rec_gnet, load<T>(f, "noise"), load<T>(f, "labels"), o);
    MPNET_CHECK_CLOSE(result.images, load<T>(f, "guided.out"), sampler_tol<T>);
    CHECK(result.nfe == 22);
    check_calls<T>(rec_net, "guided", "D_net");
    check_calls<T>(rec_gnet, "guided", "D_gnet");
}

namespace {

// The samples of `seeds` (labels and churn from each seed), drawn `batch` images at a time.
template <class T>
CpuTensor<T> sample_seeds(nn::Precond<T, CpuBackend>& net, std::span<const uint64_t> seeds, std::size_t batch,
                          const sample::SamplerOptions& o) {
    const auto& cfg = net.config();
    const auto n = int64_t(seeds.size());
    CpuTensor<T> out(Shape{n, cfg.img_channels, cfg.img_resolution, cfg.img_resolution});
    NetDenoiser<T> d(net);
    for (std::size_t b = 0; b < seeds.size(); b += batch) {
        const auto part = seeds.subspan(b, std::min(batch, seeds.size() - b));
        CpuTensor<T> noise(out.shape().with(0, int64_t(part.size())));
        sample::fill_seed_noise(noise, part);
        std::vector<int64_t> classes;
        for (uint64_t s : part) classes.push_back(sample::seed_class(s, cfg.label_dim));
        const auto labels = sample::one_hot<T, CpuBackend>(classes, cfg.label_dim);
        sample::SampleHooks hooks;
        hooks.churn_seeds = part;
        const auto r = sample::edm_sample(d, nullptr, noise, labels, o, hooks);
        out.slice(int64_t(b), int64_t(b + part.size())).copy_from(r.images);
    }
    return out;
}

template <class T>
bool bit_identical(const CpuTensor<T>& a, const CpuTensor<T>& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

sample::SamplerOptions churn_options() {
    sample::SamplerOptions o;
    o.steps = 4;
    o.S_churn = 10;
    o.S_noise = 1.007;
    return o;
}

// Counts its calls and returns a fixed fraction of x (the optimal denoiser of zero data).
struct CountingDenoiser {
    int calls = 0;
    CpuTensor<float> operator()(const CpuTensor<float>& x, double, const CpuTensor<float>&) {
        ++calls;
        CpuTensor<float> y(x.shape());
        affine(CpuBackend{}, x, 0.5f, 0.0f, y);
        return y;
    }
};

}  // namespace

TEST_CASE("sampler: an image depends only on its seed, not on the batch or thread count") {
    auto net = test::tiny_network<float>(11);
    const std::vector<uint64_t> seeds{0, 1, 2, 3, 4, 5};
    for (const auto& o : {sample::SamplerOptions{.steps = 4}, churn_options()}) {
        CAPTURE(o.S_churn);
        const auto whole = sample_seeds(net, seeds, 6, o);
        CHECK(bit_identical(whole, sample_seeds(net, seeds, 2, o)));
        CHECK(bit_identical(whole, sample_seeds(net, seeds, 4, o)));
        const std::vector<uint64_t> reversed(seeds.rbegin(), seeds.rend());
        const auto back = sample_seeds(net, reversed, 3, o);
        for (int64_t i = 0; i < 6; ++i) CHECK(bit_identical(whole.slice(i, i + 1), back.slice(5 - i, 6 - i)));
        const int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        const auto single = sample_seeds(net, seeds, 6, o);
        omp_set_num_threads(threads);
        CHECK(bit_identical(whole, single));
    }
}

TEST_CASE("sampler: churn is reproducible, seeded per image and confined to [S_min, S_max]") {
    auto net = test::tiny_network<double>(12);
    const std::vector<uint64_t> seeds{7, 8}, other{7, 9};
    const auto o = churn_options();
    const auto a = sample_seeds(net, seeds, 2, o);
    CHECK(bit_identical(a, sample_seeds(net, seeds, 2, o)));
    const auto b = sample_seeds(net, other, 2, o);
    CHECK(bit_identical(a.slice(0, 1), b.slice(0, 1)));
    CHECK_FALSE(bit_identical(a.slice(1, 2), b.slice(1, 2)));  // seed 9's noise and churn differ
    auto deterministic = o;
    deterministic.S_churn = 0;
    const auto plain = sample_seeds(net, seeds, 2, deterministic);
    CHECK_FALSE(bit_identical(a, plain));
    auto outside = o;
    outside.S_max = 1e-3;  // below every noise level: churn never applies
    CHECK(bit_identical(sample_seeds(net, seeds, 2, outside), plain));

    NetDenoiser<double> d(net);
    CpuTensor<double> noise(Shape{2, 1, 8, 8});
    sample::fill_seed_noise(noise, std::span<const uint64_t>(seeds));
    CHECK_THROWS_WITH_AS(sample::edm_sample(d, nullptr, noise, CpuTensor<double>(), o),
                         "edm_sample: churn needs 2 per-image seeds, got 0", Error);
}

TEST_CASE("sampler: 2N-1 network evaluations per image, N with euler, twice with guidance") {
    CpuTensor<float> noise(Shape{3, 1, 4, 4});
    fill_normal(CpuBackend{}, noise, 1, 0);
    for (const bool euler : {false, true}) {
        for (const double w : {1.0, 2.5}) {
            CAPTURE(euler);
            CAPTURE(w);
            sample::SamplerOptions o;
            o.steps = 5;
            o.euler = euler;
            o.guidance = w;
            CountingDenoiser net, guide;
            const auto r = sample::edm_sample(net, &guide, noise, CpuTensor<float>(), o);
            const int per_model = euler ? 5 : 9;
            CHECK(net.calls == per_model);
            CHECK(guide.calls == (w == 1 ? 0 : per_model));
            CHECK(r.nfe == net.calls + guide.calls);
            CHECK(r.nfe == sample::edm_nfe(o, true));
        }
    }
    CountingDenoiser alone;
    CHECK(sample::edm_sample(alone, nullptr, noise, CpuTensor<float>(), sample::SamplerOptions{}).nfe == 63);
}

TEST_CASE("sampler: a guidance interval evaluates the guide only at noise levels inside it") {
    CpuTensor<float> noise(Shape{2, 1, 4, 4});
    fill_normal(CpuBackend{}, noise, 3, 0);
    sample::SamplerOptions o;
    o.steps = 6;
    o.guidance = 2;
    const auto t = sample::edm_time_steps(o);
    struct Scaled {  // D(x) = k x: the network and the guide disagree, so guidance shows
        float k;
        CpuTensor<float> operator()(const CpuTensor<float>& x, double, const CpuTensor<float>&) const {
            CpuTensor<float> y(x.shape());
            affine(CpuBackend{}, x, k, 0.0f, y);
            return y;
        }
    };
    auto run = [&](const sample::SamplerOptions& opt) {
        test::Recorder<Scaled, float> net{Scaled{0.5f}}, guide{Scaled{0.25f}};
        const auto r = sample::edm_sample(net, &guide, noise, CpuTensor<float>(), opt);
        return std::make_tuple(r.images.to_host(), net.t, guide.t, r.nfe);
    };
    const auto [everywhere, net_t, guide_t, nfe] = run(o);
    CHECK(guide_t == net_t);

    auto inside = o;
    inside.guidance_sigma_min = t[4];
    inside.guidance_sigma_max = t[1];
    const auto [images, levels, guided, n] = run(inside);
    CHECK(levels == net_t);
    std::vector<double> expected;
    for (const double s : levels)
        if (s >= t[4] && s <= t[1]) expected.push_back(s);
    CHECK(guided == expected);
    CHECK((!expected.empty() && expected.size() < levels.size()));
    CHECK(n == int64_t(levels.size() + guided.size()));
    CHECK(n == sample::edm_nfe(inside, true));
    CHECK(images != everywhere);

    auto nowhere = o;
    nowhere.guidance_sigma_min = nowhere.guidance_sigma_max = 1e-6;  // below every level
    const auto [plain, l2, none, n2] = run(nowhere);
    CHECK(none.empty());
    CHECK(n2 == sample::edm_nfe(nowhere, true));
    auto unguided = o;
    unguided.guidance = 1;
    CHECK(plain == std::get<0>(run(unguided)));

    auto bad = o;
    bad.guidance_sigma_min = 2, bad.guidance_sigma_max = 1;
    CHECK_THROWS_WITH_AS(bad.validate(), "sampler: need 0 <= guidance interval low <= high (got 2, 1)", Error);
}

TEST_CASE("sampler: a user denoiser; Gaussian data follows the Heun recursion and converges to the ODE solution") {
    // Data ~ N(0, s^2) has D(x; t) = x s^2 / (s^2 + t^2). The sampler is then linear per
    // element, x_N = noise * f, with f from the scalar recursion below; the exact ODE solution
    // is f = T s / sqrt(s^2 + T^2), approached at second order in the step count.
    const double s = 0.5;
    auto gaussian = [s](const CpuTensor<double>& x, double t, const CpuTensor<double>&) {
        CpuTensor<double> y(x.shape());
        affine(CpuBackend{}, x, s * s / (s * s + t * t), 0.0, y);
        return y;
    };
    static_assert(sample::Denoiser<decltype(gaussian), double, CpuBackend>);
    const auto factor = [s](const sample::SamplerOptions& o) {
        const auto t = sample::edm_time_steps(o);
        const auto slope = [s](double x, double ti) { return (x - x * s * s / (s * s + ti * ti)) / ti; };
        double x = t[0];
        for (std::size_t i = 0; i + 1 < t.size(); ++i) {
            const double d = slope(x, t[i]), x_euler = x + (t[i + 1] - t[i]) * d;
            x = (o.euler || i + 2 == t.size()) ? x_euler : x + (t[i + 1] - t[i]) * (d + slope(x_euler, t[i + 1])) / 2;
        }
        return x;
    };
    CpuTensor<double> noise(Shape{2, 1, 4, 4});
    fill_normal(CpuBackend{}, noise, 3, 0);
    const auto scaled = [&](double f) {
        CpuTensor<double> y(noise.shape());
        affine(CpuBackend{}, noise, f, 0.0, y);
        return y;
    };
    sample::SamplerOptions o;
    const double exact = o.sigma_max * s / std::sqrt(s * s + o.sigma_max * o.sigma_max);
    std::vector<double> errors;
    for (const int steps : {16, 32, 64}) {
        CAPTURE(steps);
        o.steps = steps;
        const auto r = sample::edm_sample(gaussian, nullptr, noise, CpuTensor<double>(), o);
        MPNET_CHECK_CLOSE(r.images, scaled(factor(o)), 1e-13);
        errors.push_back(std::abs(factor(o) - exact) / exact);
    }
    CHECK(errors[1] < errors[0] / 3);  // second order: about 4x per doubling
    CHECK(errors[2] < errors[1] / 3);
    CHECK(errors[2] < 5e-3);
    o.euler = true;
    const auto euler = sample::edm_sample(gaussian, nullptr, noise, CpuTensor<double>(), o);
    MPNET_CHECK_CLOSE(euler.images, scaled(factor(o)), 1e-13);
    CHECK(std::abs(factor(o) - exact) / exact > errors[2]);
}

TEST_CASE("sampler: progress callback and option validation") {
    CountingDenoiser d;
    CpuTensor<float> noise = CpuTensor<float>::zeros(Shape{1, 1, 2, 2});
    std::vector<int> steps;
    sample::SampleHooks hooks;
    hooks.on_step = [&](const sample::SampleProgress& p) {
        steps.push_back(p.step);
        CHECK(p.steps == 3);
        CHECK(p.nfe == 2 * p.step - (p.step == 3 ? 1 : 0));
    };
    sample::SamplerOptions o;
    o.steps = 3;
    sample::edm_sample(d, nullptr, noise, CpuTensor<float>(), o, hooks);
    CHECK(steps == std::vector<int>{1, 2, 3});
    o.steps = 0;
    CHECK_THROWS_AS(sample::edm_time_steps(o), Error);
    o.steps = 3;
    o.sigma_min = 100;
    CHECK_THROWS_AS(sample::edm_time_steps(o), Error);
}

TEST_CASE("seeds: list syntax, per-seed classes and one-hot labels") {
    CHECK(sample::parse_seeds("0-3,10") == std::vector<uint64_t>{0, 1, 2, 3, 10});
    CHECK(sample::parse_seeds("5") == std::vector<uint64_t>{5});
    CHECK(sample::parse_seeds("9,2-3") == std::vector<uint64_t>{9, 2, 3});
    for (const char* bad : {"", "a", "1,,2", "3-1", "1,1", "0-2,2", "-4", "1-", "1.5", "18446744073709551616"}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(sample::parse_seeds(bad), Error);
    }
    CHECK_THROWS_AS(sample::parse_seeds("0-100", 10), Error);
    std::vector<int> histogram(10, 0);
    for (uint64_t s = 0; s < 1000; ++s) {
        const int64_t k = sample::seed_class(s, 10);
        REQUIRE((0 <= k && k < 10));
        ++histogram[std::size_t(k)];
        CHECK(k == sample::seed_class(s, 10));
    }
    for (int count : histogram) CHECK((count > 60 && count < 140));
    const std::vector<int64_t> classes{2, 0};
    CHECK(sample::one_hot<float, CpuBackend>(classes, 3).to_host() == std::vector<float>{0, 0, 1, 1, 0, 0});
    CHECK_THROWS_AS((sample::one_hot<float, CpuBackend>(std::vector<int64_t>{3}, 3)), Error);
}
