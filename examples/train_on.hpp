// The part of mpnet-train that depends on where the network runs: the trainer on backend B.
// mpnet-train.cpp runs it on the CPU; train_cuda.cu instantiates it for the GPU.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "device.hpp"
#include "mpnet/train/trainer.hpp"

namespace mpnet::cli {

// Trains (or resumes) the run; `holding_dir` is called once the trainer holds the run
// directory; `runner` runs the parts of each step (nullptr: directly). Returns the images seen.
template <Backend B, Element A = float>
double train_on(const train::ResolvedRun& run, const data::Dataset& ds,
                const std::function<void(const std::string&)>& log, dist::Communicator& comm,
                const std::function<void()>& holding_dir, std::unique_ptr<train::StepRunner> runner = nullptr) {
    train::Trainer<float, B, A> trainer(run, ds, log, comm);
    trainer.set_step_runner(std::move(runner));
    holding_dir();
    if (!trainer.resume()) log("starting a new run in " + run.opt.outdir);
    trainer.run();
    return trainer.images_seen();
}

// The CPU's instances with activations stored in 16 bits, `precision` fp16 or bf16
// (train_half.cpp, a unit of their own for the compile time).
double train_on_cpu_half(const train::ResolvedRun& run, const data::Dataset& ds,
                         const std::function<void(const std::string&)>& log, dist::Communicator& comm,
                         const std::function<void()>& holding_dir, const std::string& precision);

// The GPU's instances (train_cuda.cu), on the device select_cuda_device made current; with
// `cuda_graphs`, each part of a step is a replayed CUDA graph (train/cuda_graph_steps.cuh).
double train_on_cuda(const train::ResolvedRun& run, const data::Dataset& ds,
                     const std::function<void(const std::string&)>& log, dist::Communicator& comm,
                     const std::function<void()>& holding_dir, bool cuda_graphs, const std::string& precision);

}  // namespace mpnet::cli
