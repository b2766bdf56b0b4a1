// mpnet-generate's networks, sampler and autoencoder on the GPU (--device cuda).
#include "device_cuda.cuh"
#include "mpnet/sample/cuda_graph_denoiser.cuh"
#include "sampling_engine.hpp"

namespace mpnet::cli {

std::unique_ptr<SamplingEngine> make_cuda_sampling_engine(bool graphs, const std::string& precision) {
    return with_precision(precision, [&]<class A>(std::type_identity<A>) -> std::unique_ptr<SamplingEngine> {
        if (graphs) return std::make_unique<SamplingEngineOn<CudaBackend, A, sample::CudaGraphDenoiser<float, A>>>();
        return std::make_unique<SamplingEngineOn<CudaBackend, A>>();
    });
}

}  // namespace mpnet::cli
