// mpnet-generate's networks, sampler and autoencoder on the GPU (--device cuda).
#include "device_cuda.cuh"
#include "sampling_engine.hpp"

namespace mpnet::cli {

std::unique_ptr<SamplingEngine> make_cuda_sampling_engine() {
    return std::make_unique<SamplingEngineOn<CudaBackend>>();
}

}  // namespace mpnet::cli
