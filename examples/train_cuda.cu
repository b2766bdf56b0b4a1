// mpnet-train's trainer on the GPU (--device cuda).
#include "device_cuda.cuh"
#include "mpnet/train/cuda_graph_steps.cuh"
#include "train_on.hpp"

namespace mpnet::cli {

double train_on_cuda(const train::ResolvedRun& run, const data::Dataset& ds,
                     const std::function<void(const std::string&)>& log, dist::Communicator& comm,
                     const std::function<void()>& holding_dir, bool cuda_graphs, const std::string& precision) {
    std::unique_ptr<train::StepRunner> runner;
    if (cuda_graphs) runner = std::make_unique<train::CudaGraphSteps>();
    return with_precision(precision, [&]<class A>(std::type_identity<A>) {
        return train_on<CudaBackend, A>(run, ds, log, comm, holding_dir, std::move(runner));
    });
}

}  // namespace mpnet::cli
