// The feature networks of mpnet-metrics and mpnet-generate on the GPU (--device cuda).
#include "mpnet/backend/cuda/cuda.cuh"
#include "metrics_engine.hpp"

namespace mpnet::cli {

std::unique_ptr<FeatureEngine> make_cuda_feature_engine() { return std::make_unique<FeatureEngineOn<CudaBackend>>(); }

}  // namespace mpnet::cli
