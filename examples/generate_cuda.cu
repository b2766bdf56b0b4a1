// mpnet-generate's networks, sampler and autoencoder on the GPU (--device cuda).
#include "device_cuda.cuh"
#include "mpnet/sample/cuda_graph_denoiser.cuh"
#include "sampling_engine.hpp"

namespace mpnet::cli {

std::unique_ptr<SamplingEngine> make_cuda_sampling_engine(bool graphs) {
    if (graphs) return std::make_unique<SamplingEngineOn<CudaBackend, sample::CudaGraphDenoiser<float>>>();
    return std::make_unique<SamplingEngineOn<CudaBackend>>();
}

}  // namespace mpnet::cli
