// The latent autoencoder's decoder (docs/pretrained.md): one 64x64x4 latent to a 512x512
// image, as mpnet-generate --vae decodes each image. Needs the weights, given as
// MPNET_BENCH_VAE=PATH/diffusion_pytorch_model.safetensors (sd-vae-ft-mse, or
// scripts/bench_pretrained_torch.py's random weights of its shapes); skipped without.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <optional>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/vae/autoencoder_kl.hpp"

using namespace mpnet;

namespace {

void BM_decode_512(benchmark::State& state) {
    const char* path = std::getenv("MPNET_BENCH_VAE");
    if (!path) {
        state.SkipWithError("set MPNET_BENCH_VAE to the autoencoder's safetensors file");
        return;
    }
    static const auto vae = vae::AutoencoderKL<float, CpuBackend>::load(path);
    CpuTensor<float> z(Shape{1, 4, 64, 64});
    fill_normal(CpuBackend{}, z, 0, 0);
    CpuBackend::reset_peak();
    const double weights = double(CpuBackend::peak_bytes());
    for (auto _ : state) benchmark::DoNotOptimize(vae.decode(z).data());
    state.SetItemsProcessed(state.iterations());
    // Tensors in use at the peak, beside the weights (the pool's count, not the process's RSS).
    state.counters["weights_MiB"] = weights / (1 << 20);
    state.counters["activations_peak_MiB"] = (double(CpuBackend::peak_bytes()) - weights) / (1 << 20);
}
BENCHMARK(BM_decode_512)->Unit(benchmark::kSecond)->Iterations(3)->UseRealTime();

}  // namespace
