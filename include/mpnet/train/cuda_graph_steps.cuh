// A trainer's steps on the GPU as CUDA graphs, one per part (train/step_runner.hpp): a step
// of one round on one process is one graph, a larger one three (normalize, round, update),
// each captured from its first run and replayed from then on.
//
// A round (forward, loss and backward of one chunk) is a few hundred to a few thousand kernel
// launches, forced weight normalisation one or two per weight; for the small networks and
// batches the launches, not the arithmetic, bound the step. No part reads anything back to
// the host (core/host_reads.hpp); each allocates from the stream-ordered pool (captured as
// graph memory nodes) and, as the trainer stages it, reads only buffers at fixed addresses:
// the batch, sigma and noise, the dropout seed, Adam's and the EMA's step coefficients, and
// the training state, all written before the launch by copies and kernels outside the graph.
// So the first call for a part records it by stream capture (which runs nothing) and every
// call, the first included, launches that part's graph.
//
// The captures run in a context of the runner's own (a stream of its own, its cuBLAS handle
// and workspace; the caller's device, math mode and scratch bound), ordered with the caller's
// stream by events, as sample::CudaGraphDenoiser does for the sampler. Every allocation made
// in a part is freed in it, so the graph's memory nodes pair up; each graph is instantiated
// with AutoFreeOnLaunch all the same, so that a part that kept one could not leak it per launch.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <functional>

#include "mpnet/backend/cuda/cuda.cuh"
#include "mpnet/train/step_runner.hpp"

namespace mpnet::train {

class CudaGraphSteps final : public StepRunner {
public:
    CudaGraphSteps() : context_(cuda::Context::current().device(), CudaBackend::math()) {
        cuda::cuda_check(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming), "cudaEventCreate");
        const cudaError_t made = cudaEventCreateWithFlags(&part_done_, cudaEventDisableTiming);
        if (made != cudaSuccess) (void)cudaEventDestroy(inputs_ready_);
        cuda::cuda_check(made, "cudaEventCreate");
    }
    CudaGraphSteps(const CudaGraphSteps&) = delete;
    CudaGraphSteps& operator=(const CudaGraphSteps&) = delete;
    ~CudaGraphSteps() override {
        (void)cudaStreamSynchronize(context_.stream());
        for (Part& p : parts_) {
            if (p.exec) (void)cudaGraphExecDestroy(p.exec);
            if (p.graph) (void)cudaGraphDestroy(p.graph);
        }
        (void)cudaEventDestroy(inputs_ready_);
        (void)cudaEventDestroy(part_done_);
    }

    void run(StepPart part, const std::function<void()>& work) override {
        Part& p = parts_[index(part)];
        const cudaStream_t caller = cuda::current_stream();
        cuda::cuda_check(cudaEventRecord(inputs_ready_, caller), "cudaEventRecord");
        cuda::cuda_check(cudaStreamWaitEvent(context_.stream(), inputs_ready_, 0), "cudaStreamWaitEvent");
        if (!p.exec) capture(p, work, name(part));
        cuda::cuda_check(cudaGraphLaunch(p.exec, context_.stream()), "cudaGraphLaunch of a training step's ",
                         name(part));
        cuda::cuda_check(cudaEventRecord(part_done_, context_.stream()), "cudaEventRecord");
        cuda::cuda_check(cudaStreamWaitEvent(caller, part_done_, 0), "cudaStreamWaitEvent");
        ++p.launches;
    }

    // How often a part was captured (once, when it ran at all) and launched (once per run).
    [[nodiscard]] int captures(StepPart part) const { return parts_[index(part)].captures; }
    [[nodiscard]] int64_t launches(StepPart part) const { return parts_[index(part)].launches; }

private:
    struct Part {
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        int captures = 0;
        int64_t launches = 0;
    };

    static int index(StepPart part) { return static_cast<int>(part); }
    static const char* name(StepPart part) {
        switch (part) {
            case StepPart::step: return "whole step";
            case StepPart::normalize: return "weight normalisation";
            case StepPart::round: return "round";
            case StepPart::update: return "update";
        }
        return "?";
    }

    void capture(Part& p, const std::function<void()>& work, const char* what) {
        context_.set_math(CudaBackend::math());  // the caller's settings, as when it runs uncaptured
        context_.set_scratch_limit(CudaBackend::scratch_limit());
        cuda::ContextScope on_graph_stream(context_);
        (void)context_.blas();  // cuBLAS's handle and workspace exist before the capture
        cuda::cuda_check(cudaStreamSynchronize(context_.stream()), "cudaStreamSynchronize before capture");
        cuda::cuda_check(cudaStreamBeginCapture(context_.stream(), cudaStreamCaptureModeThreadLocal),
                         "cudaStreamBeginCapture of a training step's ", what);
        try {
            work();
        } catch (...) {
            cudaGraph_t broken = nullptr;
            (void)cudaStreamEndCapture(context_.stream(), &broken);
            if (broken) (void)cudaGraphDestroy(broken);
            throw;
        }
        cudaGraph_t graph = nullptr;
        cuda::cuda_check(cudaStreamEndCapture(context_.stream(), &graph), "cudaStreamEndCapture of a training step's ",
                         what);
        const cudaError_t made = cudaGraphInstantiateWithFlags(&p.exec, graph, cudaGraphInstantiateFlagAutoFreeOnLaunch);
        if (made != cudaSuccess) (void)cudaGraphDestroy(graph);
        cuda::cuda_check(made, "cudaGraphInstantiate of a training step's ", what);
        p.graph = graph;
        ++p.captures;
    }

    cuda::Context context_;
    cudaEvent_t inputs_ready_ = nullptr, part_done_ = nullptr;
    std::array<Part, step_parts> parts_{};
};

}  // namespace mpnet::train
