// The network templates of include/mpnet/nn instantiated on the CUDA backend: the golden
// Block and Precond cases, a whole training step (forced weight normalisation, dropout,
// loss, every parameter gradient, the Adam update) and a guided sampling run with churn,
// each against the same computation on the CPU.
#include <unistd.h>

#include <filesystem>
#include <map>

#include "bars_data.hpp"
#include "cuda_test.cuh"
#include "host_reads_cases.hpp"
#include "mpnet/sample/cuda_graph_denoiser.cuh"
#include "mpnet/nn/weights.hpp"
#include "mpnet/sample/edm_sampler.hpp"
#include "mpnet/sample/seeds.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/cuda_graph_steps.cuh"
#include "mpnet/train/trainer.hpp"

// The trainer type-checks on the GPU backend: every member is instantiated here.
template class mpnet::train::Trainer<float, mpnet::CudaBackend>;

using namespace mpnet;
using test::golden;
using test::to_gpu;

namespace {

// The per-element tolerance of gradients through long chains, as in the CPU golden tests.
template <class T>
constexpr double net_grad_tol = std::is_same_v<T, float> ? 1e-4 : 1e-6;

struct BlockCase {
    const char* name;
    bool encoder;
    int64_t in, out;
    ops::Resample resample;
    bool attention;
};

template <class T>
CudaTensor<T> gload(const io::SafetensorsFile& f, const std::string& name) {
    return to_gpu(test::load<T>(f, name));
}

}  // namespace

TEST_CASE_TEMPLATE("cuda golden: Block forward and backward, all four cases", T, float, double) {
    const auto& f = golden("blocks.safetensors");
    for (const BlockCase& bc : {BlockCase{"enc_down", true, 16, 16, ops::Resample::down, false},
                                BlockCase{"enc_skip_attn", true, 8, 16, ops::Resample::keep, true},
                                BlockCase{"dec_up", false, 16, 16, ops::Resample::up, false},
                                BlockCase{"dec_skip_attn", false, 24, 16, ops::Resample::keep, true}}) {
        const std::string p = bc.name;
        CAPTURE(p);
        nn::NetworkConfig cfg;
        cfg.model_channels = 20;
        cfg.channel_mult = {1};
        cfg.channels_per_head = 8;
        nn::BlockSpec spec{p, bc.encoder, false, bc.in, bc.out, 8, bc.resample, bc.attention};
        nn::Block<T, CudaBackend> block(spec, cfg);
        block.visit("", [&](const std::string& name, nn::Param<T, CudaBackend>& param) {
            param.value = gload<T>(f, p + "." + name).view(param.value.shape());
        });
        typename nn::Block<T, CudaBackend>::Context ctx;
        auto emb = gload<T>(f, p + ".emb");
        auto y = block.forward(gload<T>(f, p + ".x"), emb, {}, &ctx);
        MPNET_CHECK_GPU(y, test::load<T>(f, p + ".y"), test::fwd_tol<T>);
        auto demb = CudaTensor<T>::zeros(emb.shape());
        auto dx = block.backward(gload<T>(f, p + ".dy"), ctx, demb);
        MPNET_CHECK_GPU(dx, test::load<T>(f, p + ".dx"), net_grad_tol<T>);
        MPNET_CHECK_GPU(demb, test::load<T>(f, p + ".demb"), net_grad_tol<T>);
        block.visit("", [&](const std::string& name, nn::Param<T, CudaBackend>& param) {
            CAPTURE(name);
            MPNET_CHECK_GPU(param.grad, test::load<T>(f, p + ".grad." + name), net_grad_tol<T>);
        });
    }
}

TEST_CASE_TEMPLATE("cuda golden: Precond D, logvar, EDM2 loss and every parameter gradient", T, float, double) {
    const auto& f = golden("unet.safetensors");
    nn::Precond<T, CudaBackend> net(test::golden_unet_config());
    nn::load_state(net, f, "", true);
    auto out = net.forward(gload<T>(f, "x"), gload<T>(f, "sigma"), gload<T>(f, "labels"), {}, true);
    MPNET_CHECK_GPU(out.D, test::load<T>(f, "D"), test::fwd_tol<T>);
    MPNET_CHECK_GPU(out.logvar, test::load<T>(f, "logvar"), test::fwd_tol<T>);

    auto x = test::load<T>(f, "x"), sigma = test::load<T>(f, "sigma"), noise = test::load<T>(f, "noise");
    CpuTensor<T> noisy(x.shape());
    const int64_t inner = x.shape().numel_from(1);
    for (int64_t i = 0; i < x.numel(); ++i) noisy.data()[i] = x.data()[i] + noise.data()[i] * sigma.data()[i / inner];
    typename nn::Precond<T, CudaBackend>::Context ctx;
    const auto gx = to_gpu(x), gsigma = to_gpu(sigma);
    out = net.forward(to_gpu(noisy), gsigma, gload<T>(f, "labels"), {}, true, &ctx);
    MPNET_CHECK_GPU(out.D, test::load<T>(f, "loss_D"), test::fwd_tol<T>);
    CudaTensor<T> dD(x.shape()), dlogvar(sigma.shape());
    const double count = double(x.numel());
    const double loss = edm2_loss(CudaBackend{}, out.D, gx, gsigma, out.logvar, 0.5, 1 / count, dD, dlogvar) / count;
    CHECK(loss == doctest::Approx(test::load<double>(f, "loss").data()[0])
                      .epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-7));
    net.zero_grad();
    net.backward(dD, dlogvar, ctx);
    net.visit([&](const std::string& name, nn::Param<T, CudaBackend>& p) {
        CAPTURE(name);
        MPNET_CHECK_GPU(p.grad, test::load<T>(f, "grad." + name).view(p.grad.shape()), net_grad_tol<T>);
    });
}

TEST_CASE_TEMPLATE("cuda network: a training step matches the CPU's", T, float, double) {
    auto cfg = test::golden_unet_config();
    cfg.dropout = 0.1;
    // One set of weights for both: the CPU network's initial state.
    nn::Precond<T, CpuBackend> reference(cfg, 7);
    std::map<std::string, std::vector<T>> state;
    nn::for_each_state_tensor(reference, [&](const std::string& name, CpuTensor<T>& t) { state[name] = t.to_host(); });

    const Shape s{3, cfg.img_channels, cfg.img_resolution, cfg.img_resolution};
    auto sigma = test::random_cpu<T>({3}, 2);
    for (int64_t i = 0; i < 3; ++i) sigma.data()[i] = T(std::exp(1.2 * sigma.data()[i] - 0.4));
    auto labels = CpuTensor<T>::zeros(Shape{3, cfg.label_dim});
    for (int64_t i = 0; i < 3; ++i) labels.data()[i * cfg.label_dim + (i * 3) % cfg.label_dim] = 1;
    const auto y = test::random_cpu<T>(s, 3, 0.5), noisy = test::random_cpu<T>(s, 4, 1.5);

    double loss_cpu = 0, loss_gpu = 0;
    test::compare_backends<T>(
        [&](auto tag, const auto& in) {
            using B = decltype(tag);
            using TT = Tensor<T, B>;
            nn::Precond<T, B> net(cfg, 99);
            nn::for_each_state_tensor(net, [&](const std::string& name, TT& t) {
                const auto& v = state.at(name);
                B::copy_from_host(t.data(), v.data(), t.bytes());
            });
            typename nn::Precond<T, B>::Context ctx;
            auto out = net.forward(in[0], in[2], in[3], nn::ForwardMode{true, 1234}, true, &ctx);
            TT dD(in[0].shape()), dlogvar(in[2].shape());
            const double l = edm2_loss(tag, out.D, in[1], in[2], out.logvar, cfg.sigma_data, 1.0 / 3, dD, dlogvar);
            (std::is_same_v<B, CpuBackend> ? loss_cpu : loss_gpu) = l;
            net.zero_grad();
            net.backward(dD, dlogvar, ctx);
            std::vector<TT> result{out.D, out.logvar, dD};
            net.visit([&](const std::string&, nn::Param<T, B>& p) {
                result.push_back(p.value.clone());  // after forced weight normalisation
                result.push_back(p.grad);
            });
            // In float, gradients that are zero up to rounding take Adam steps of either sign,
            // so the update is compared in double only.
            if constexpr (std::is_same_v<T, double>) {
                train::Adam<T, B> adam(net);
                adam.step(0.01);
                net.visit([&](const std::string&, nn::Param<T, B>& p) { result.push_back(p.value); });
            }
            return result;
        },
        std::is_same_v<T, float> ? 1e-4 : 1e-10, {noisy, y, sigma, labels});
    CHECK(loss_gpu == doctest::Approx(loss_cpu).epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-12));
}

// With 16-bit activations both backends compute each op in float on the same rounded
// inputs and round its result; the products' summation order differs, so a result may round
// to the neighbouring 16-bit value, and the difference compounds through the network to
// some tens of the format's unit roundoff u at most.
TEST_CASE_TEMPLATE("cuda network: a training step with 16-bit activations matches the CPU's", A, float16, bfloat16) {
    auto cfg = test::golden_unet_config();
    cfg.dropout = 0.1;
    nn::Precond<float, CpuBackend> reference(cfg, 7);
    std::map<std::string, std::vector<float>> state;
    nn::for_each_state_tensor(reference, [&](const std::string& name, CpuTensor<float>& t) { state[name] = t.to_host(); });
    const Shape s{3, cfg.img_channels, cfg.img_resolution, cfg.img_resolution};
    auto sigma = CpuTensor<float>::from_host(Shape{3}, std::vector<float>{0.3f, 1.0f, 4.0f});
    auto labels = CpuTensor<float>::zeros(Shape{3, cfg.label_dim});
    for (int64_t i = 0; i < 3; ++i) labels.data()[i * cfg.label_dim + i] = 1;
    const auto y = test::random_cpu<float>(s, 3, 0.5), noisy = test::random_cpu<float>(s, 4, 1.5);
    const double u = std::is_same_v<A, float16> ? 1.0 / 2048 : 1.0 / 256;
    test::compare_backends<float>(
        [&](auto tag, const auto& in) {
            using B = decltype(tag);
            using TT = Tensor<float, B>;
            nn::Precond<float, B, A> net(cfg, 99);
            nn::for_each_state_tensor(net, [&](const std::string& name, TT& t) {
                const auto& v = state.at(name);
                B::copy_from_host(t.data(), v.data(), t.bytes());
            });
            typename nn::Precond<float, B, A>::Context ctx;
            auto out = net.forward(in[0], in[2], in[3], nn::ForwardMode{true, 1234}, true, &ctx);
            TT dD(in[0].shape()), dlogvar(in[2].shape());
            edm2_loss(tag, out.D, in[1], in[2], out.logvar, cfg.sigma_data, 1.0 / 3, dD, dlogvar);
            net.zero_grad();
            net.backward(dD, dlogvar, ctx);
            std::vector<TT> result{out.D, out.logvar, dD};
            net.visit([&](const std::string&, nn::Param<float, B>& p) { result.push_back(p.grad); });
            return result;
        },
        64 * u, {noisy, y, sigma, labels});
}

TEST_CASE("cuda network: weights saved from the GPU load on the CPU") {
    const auto cfg = test::golden_unet_config();
    nn::Precond<float, CudaBackend> net(cfg, 5);
    const auto path = std::filesystem::temp_directory_path() / "mpnet_cuda_weights_roundtrip.safetensors";
    nn::save_weights(net, path);
    auto cpu_net = nn::load_network<float, CpuBackend>(path);
    std::filesystem::remove(path);
    std::map<std::string, CpuTensor<float>> cpu_state;
    nn::for_each_state_tensor(cpu_net, [&](const std::string& name, CpuTensor<float>& t) { cpu_state[name] = t; });
    nn::for_each_state_tensor(net, [&](const std::string& name, CudaTensor<float>& t) {
        CAPTURE(name);
        MPNET_CHECK_GPU(t, cpu_state.at(name), 0.0);
    });
}

TEST_CASE_TEMPLATE("cuda network: guided sampling with churn matches the CPU's", T, float, double) {
    const auto cfg = test::golden_unet_config();
    nn::Precond<T, CpuBackend> net_ref(cfg, 11), guide_ref(cfg, 12);
    std::map<std::string, std::vector<T>> net_state, guide_state;
    nn::for_each_state_tensor(net_ref, [&](const std::string& n, CpuTensor<T>& t) { net_state[n] = t.to_host(); });
    nn::for_each_state_tensor(guide_ref, [&](const std::string& n, CpuTensor<T>& t) { guide_state[n] = t.to_host(); });
    const std::vector<uint64_t> seeds{3, 14, 15};
    const std::vector<int64_t> classes{0, 2, 3};
    sample::SamplerOptions o;
    o.steps = 4;
    o.S_churn = 10;
    o.guidance = 1.5;
    test::compare_backends<T>(
        [&](auto tag, const auto&) {
            using B = decltype(tag);
            auto load = [](nn::Precond<T, B>& net, const std::map<std::string, std::vector<T>>& state) {
                nn::for_each_state_tensor(net, [&](const std::string& name, Tensor<T, B>& t) {
                    B::copy_from_host(t.data(), state.at(name).data(), t.bytes());
                });
            };
            nn::Precond<T, B> net(cfg), guide(cfg);
            load(net, net_state);
            load(guide, guide_state);
            sample::NetworkDenoiser<T, B> d_net(net), d_guide(guide);
            Tensor<T, B> noise(Shape{3, cfg.img_channels, cfg.img_resolution, cfg.img_resolution});
            sample::fill_seed_noise(noise, std::span<const uint64_t>(seeds));
            const auto labels = sample::one_hot<T, B>(classes, cfg.label_dim);
            sample::SampleHooks hooks;
            hooks.churn_seeds = seeds;
            auto result = sample::edm_sample(d_net, &d_guide, noise, labels, o, hooks);
            return std::vector<Tensor<T, B>>{noise, result.images};
        },
        std::is_same_v<T, float> ? 1e-4 : 1e-10, {});
}

// On the GPU every read back waits for the stream: a training step and a sampler run make none.
TEST_CASE("cuda network: a training step and guided sampling read nothing back to the host") {
    test::check_training_step_reads_nothing<CudaBackend>();
    test::check_sampling_reads_nothing<CudaBackend>();
}

// The sampler through CUDA graphs: one capture per batch shape, one launch per evaluation,
// the images of the plain denoiser, and nothing read back.
TEST_CASE("cuda network: sampling through captured CUDA graphs gives the plain denoiser's images") {
    auto net = test::tiny_network_on<CudaBackend>(4), guide = test::tiny_network_on<CudaBackend>(5);
    sample::SamplerOptions o;
    o.steps = 5, o.S_churn = 10, o.guidance = 2;
    for (const int64_t n : {int64_t{3}, int64_t{2}}) {
        CAPTURE(n);
        std::vector<uint64_t> seeds;
        std::vector<int64_t> classes;
        for (int64_t i = 0; i < n; ++i) seeds.push_back(uint64_t(7 + i)), classes.push_back(i % 3);
        CudaTensor<float> noise(Shape{n, 1, 8, 8});
        sample::fill_seed_noise(noise, std::span<const uint64_t>(seeds));
        const auto labels = sample::one_hot<float, CudaBackend>(classes, 3);
        sample::SampleHooks hooks;
        hooks.churn_seeds = seeds;
        sample::NetworkDenoiser<float, CudaBackend> plain_net(net), plain_guide(guide);
        const auto want = sample::edm_sample(plain_net, &plain_guide, noise, labels, o, hooks);
        sample::CudaGraphDenoiser<float> graph_net(net), graph_guide(guide);
        const uint64_t before = host_reads();
        const auto got = sample::edm_sample(graph_net, &graph_guide, noise, labels, o, hooks);
        CHECK(host_reads() == before);
        CHECK(graph_net.captures() == 1);
        CHECK(graph_guide.captures() == 1);
        CHECK(graph_net.launches() + graph_guide.launches() == want.nfe);
        MPNET_CHECK_GPU(got.images, test::to_cpu(want.images), 1e-6);
        // Another batch size is captured anew; the same size replays.
        CudaTensor<float> other(Shape{n + 1, 1, 8, 8});
        fill_normal(CudaBackend{}, other, 3, 0);
        const auto other_labels = sample::one_hot<float, CudaBackend>(std::vector<int64_t>(size_t(n + 1), 1), 3);
        MPNET_CHECK_GPU(graph_net(other, 2.5, other_labels), test::to_cpu(plain_net(other, 2.5, other_labels)), 1e-6);
        CHECK(graph_net.captures() == 2);
        MPNET_CHECK_GPU(graph_net(other, 0.5, other_labels), test::to_cpu(plain_net(other, 0.5, other_labels)), 1e-6);
        CHECK(graph_net.captures() == 2);
    }
}

// The trainer's steps as replayed CUDA graphs: one capture per part, one launch per part
// run, and the weights and EMA of the plain run. A step of one round is one graph; a step of
// two rounds is three (weight normalisation and update once a step, a round per chunk). A
// replay runs the kernels the capture recorded, with the inputs, the noise, the dropout seed
// and Adam's and the EMA's coefficients staged anew, so the two runs should agree to the last
// bit; cuBLAS may pick other kernels for a captured stream, hence 1e-6 of the largest value.
// Coefficients frozen at their first values by a replay would fail this: the first step's
// learning rate is 0 (rampup), and Adam's bias corrections change every step.
TEST_CASE("cuda trainer: steps replayed as CUDA graphs train to the plain steps' weights") {
    using train::StepPart;
    const auto ds = testing::bars_dataset();
    const auto dir = std::filesystem::temp_directory_path() / ("mpnet-cuda-graph-steps-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    struct Result {
        std::vector<float> weights, ema;
        std::map<StepPart, int64_t> captures, launches;
    };
    auto train = [&](const std::string& name, int64_t batch_gpu, bool graphs) {
        train::TrainOptions o = testing::tiny_train_options(dir / name, 64);
        o.batch_gpu = batch_gpu;
        train::Trainer<float, CudaBackend> t(train::resolve(o, ds), ds, [](const std::string&) {});
        auto runner = std::make_unique<train::CudaGraphSteps>();
        const train::CudaGraphSteps* steps = runner.get();
        if (graphs) t.set_step_runner(std::move(runner));
        t.resume();
        t.run();
        Result r;
        r.weights = t.network().flat_values().to_host();
        for (const auto& [name_, tensor] : t.ema().profile(0)) {
            const auto v = tensor.to_host();
            r.ema.insert(r.ema.end(), v.begin(), v.end());
        }
        if (graphs)
            for (StepPart p : {StepPart::step, StepPart::normalize, StepPart::round, StepPart::update})
                r.captures[p] = steps->captures(p), r.launches[p] = steps->launches(p);
        return r;
    };
    auto close = [](const std::vector<float>& a, const std::vector<float>& b) {
        REQUIRE(a.size() == b.size());
        double largest = 0, diff = 0;
        for (size_t i = 0; i < a.size(); ++i)
            largest = std::max(largest, double(std::abs(a[i]))), diff = std::max(diff, double(std::abs(a[i] - b[i])));
        CAPTURE(diff);
        CAPTURE(largest);
        CHECK(diff <= 1e-6 * largest);
    };
    const int64_t steps = 64 / 8;
    for (int64_t batch_gpu : {8, 4}) {
        CAPTURE(batch_gpu);
        const std::string tag = std::to_string(batch_gpu);
        const Result plain = train("plain-" + tag, batch_gpu, false), replayed = train("graph-" + tag, batch_gpu, true);
        const bool one_round = batch_gpu == 8;
        CHECK(replayed.captures.at(StepPart::step) == (one_round ? 1 : 0));
        CHECK(replayed.launches.at(StepPart::step) == (one_round ? steps : 0));
        for (StepPart p : {StepPart::normalize, StepPart::update}) {
            CHECK(replayed.captures.at(p) == (one_round ? 0 : 1));
            CHECK(replayed.launches.at(p) == (one_round ? 0 : steps));
        }
        CHECK(replayed.captures.at(StepPart::round) == (one_round ? 0 : 1));
        CHECK(replayed.launches.at(StepPart::round) == (one_round ? 0 : 2 * steps));
        close(plain.weights, replayed.weights);
        close(plain.ema, replayed.ema);
    }
    std::filesystem::remove_all(dir);
}
