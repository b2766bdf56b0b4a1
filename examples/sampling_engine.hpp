// The part of mpnet-generate that depends on where the networks run: loading the network,
// its guide and the autoencoder, the EDM sampler and the decoding, on backend B, with host
// tensors in and out. mpnet-generate.cpp makes the CPU's; generate_cuda.cu the GPU's.
#pragma once
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "device.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/weights.hpp"
#include "mpnet/sample/denoiser.hpp"
#include "mpnet/sample/edm_sampler.hpp"
#include "mpnet/vae/stability_vae.hpp"

namespace mpnet::cli {

// NaN or infinite inputs (weights, noise) give black images, never an error of their own:
// they are refused here, naming the element.
inline void check_finite(std::span<const float> v, const std::string& what) {
    for (std::size_t i = 0; i < v.size(); ++i)
        check(std::isfinite(v[i]), what, ", element ", i, " is not finite (", v[i], ")");
}

class SamplingEngine {
public:
    virtual ~SamplingEngine() = default;
    // Loads a network (`option` names it in messages: --net, --gnet); refuses non-finite weights.
    virtual nn::NetworkConfig load_net(const std::filesystem::path& path, const char* option) = 0;
    virtual nn::NetworkConfig load_guide(const std::filesystem::path& path, const char* option) = 0;
    virtual vae::AutoencoderConfig load_vae(const std::filesystem::path& path) = 0;
    // The sampler's outputs for one batch (labels empty for an unconditional network).
    virtual sample::SampleResult<float, CpuBackend> sample(const CpuTensor<float>& noise, const CpuTensor<float>& labels,
                                                           const sample::SamplerOptions& options,
                                                           const sample::SampleHooks& hooks) = 0;
    // uint8 pixels [N, 3, H f, W f] of final latents.
    virtual std::vector<uint8_t> decode(const CpuTensor<float>& latents, const vae::LatentScaling& scaling) = 0;
};

// `Den` evaluates a network for the sampler: NetworkDenoiser, or on the GPU the CUDA-graph one
// (sample/cuda_graph_denoiser.cuh), kept across batches so that a graph is captured once. The
// networks store their activations as A (--precision); the autoencoder runs in float.
template <Backend B, Element A = float, class Den = sample::NetworkDenoiser<float, B, A>>
class SamplingEngineOn final : public SamplingEngine {
public:
    using Net = nn::Precond<float, B, A>;
    using TensorF = Tensor<float, B>;

    nn::NetworkConfig load_net(const std::filesystem::path& path, const char* option) override {
        net_.emplace(load(path, option));
        d_net_.emplace(*net_);
        return net_->config();
    }
    nn::NetworkConfig load_guide(const std::filesystem::path& path, const char* option) override {
        guide_.emplace(load(path, option));
        d_guide_.emplace(*guide_);
        return guide_->config();
    }
    vae::AutoencoderConfig load_vae(const std::filesystem::path& path) override {
        vae_.emplace(vae::AutoencoderKL<float, B>::load(path));
        return vae_->config();
    }

    sample::SampleResult<float, CpuBackend> sample(const CpuTensor<float>& noise, const CpuTensor<float>& labels,
                                                   const sample::SamplerOptions& options,
                                                   const sample::SampleHooks& hooks) override {
        auto result =
            sample::edm_sample(*d_net_, d_guide_ ? &*d_guide_ : nullptr, here(noise), here(labels), options, hooks);
        return {to_cpu(result.images), result.nfe};
    }

    std::vector<uint8_t> decode(const CpuTensor<float>& latents, const vae::LatentScaling& scaling) override {
        return vae::decode_to_pixels(*vae_, here(latents), scaling);
    }

private:
    static Net load(const std::filesystem::path& path, const char* option) {
        try {
            Net net = nn::load_network<float, B, A>(path);
            net.visit([&](const std::string& name, nn::Param<float, B>& p) {
                const std::string what = path.string() + ": tensor '" + name + "'";
                if constexpr (std::is_same_v<B, CpuBackend>) {
                    check_finite(std::span<const float>(p.value.data(), size_t(p.value.numel())), what);
                } else {
                    const std::vector<float> v = p.value.to_host();
                    check_finite(v, what);
                }
            });
            return net;
        } catch (const Error& e) {
            const std::string msg = e.what();
            // Messages from the reader name the file already; others get it here.
            if (msg.find(path.string()) != std::string::npos) fail(option, " ", msg);
            fail(option, " ", path.string(), ": ", msg);
        }
    }
    static TensorF here(const CpuTensor<float>& t) {
        if constexpr (std::is_same_v<B, CpuBackend>) return t;
        else return t.empty() ? TensorF() : TensorF::from_host(t.shape(), std::span<const float>(t.data(), size_t(t.numel())));
    }
    static CpuTensor<float> to_cpu(const TensorF& t) {
        if constexpr (std::is_same_v<B, CpuBackend>) return t;
        else return CpuTensor<float>::from_host(t.shape(), t.to_host());
    }

    std::optional<Net> net_, guide_;
    std::optional<Den> d_net_, d_guide_;  // after the networks they point to: destroyed first
    std::optional<vae::AutoencoderKL<float, B>> vae_;
};

// The CPU's engine for --precision.
inline std::unique_ptr<SamplingEngine> make_cpu_sampling_engine(const std::string& precision) {
    return with_precision(precision, []<class A>(std::type_identity<A>) -> std::unique_ptr<SamplingEngine> {
        return std::make_unique<SamplingEngineOn<CpuBackend, A>>();
    });
}

// The GPU's engine (generate_cuda.cu), on the device select_cuda_device made current; with
// `graphs`, each network evaluation is a replayed CUDA graph.
std::unique_ptr<SamplingEngine> make_cuda_sampling_engine(bool graphs, const std::string& precision);

}  // namespace mpnet::cli
