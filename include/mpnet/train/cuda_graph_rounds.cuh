// A trainer's rounds on the GPU as one CUDA graph, captured from the first round and replayed.
//
// A round (forward, loss and backward of one chunk) is a few hundred to a few thousand kernel
// launches; for the small networks and batches the launches, not the arithmetic, bound the
// step. A round reads nothing back to the host (core/host_reads.hpp), allocates from the
// stream-ordered pool (captured as graph memory nodes) and, as the trainer stages it
// (round_runner.hpp), reads only buffers at fixed addresses: the batch, sigma and noise, and
// the network's weights and dropout seed, all written before the launch by copies and kernels
// outside the graph. So the first call records it by stream capture (which runs nothing) and
// every call, the first included, launches the graph.
//
// The capture runs in a context of the runner's own (a stream of its own, its cuBLAS handle
// and workspace; the caller's device, math mode and scratch bound), ordered with the caller's
// stream by events, as sample::CudaGraphDenoiser does for the sampler. Every allocation made
// in a round is freed in it, so the graph's memory nodes pair up; it is instantiated with
// AutoFreeOnLaunch all the same, so that a round that kept one could not leak it per launch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

#include "mpnet/backend/cuda/cuda.cuh"
#include "mpnet/train/round_runner.hpp"

namespace mpnet::train {

class CudaGraphRounds final : public RoundRunner {
public:
    CudaGraphRounds() : context_(cuda::Context::current().device(), CudaBackend::math()) {
        cuda::cuda_check(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming), "cudaEventCreate");
        cuda::cuda_check(cudaEventCreateWithFlags(&round_done_, cudaEventDisableTiming), "cudaEventCreate");
    }
    CudaGraphRounds(const CudaGraphRounds&) = delete;
    CudaGraphRounds& operator=(const CudaGraphRounds&) = delete;
    ~CudaGraphRounds() override {
        (void)cudaStreamSynchronize(context_.stream());
        if (exec_) (void)cudaGraphExecDestroy(exec_);
        if (graph_) (void)cudaGraphDestroy(graph_);
        (void)cudaEventDestroy(inputs_ready_);
        (void)cudaEventDestroy(round_done_);
    }

    void run(const std::function<void()>& compute) override {
        const cudaStream_t caller = cuda::current_stream();
        cuda::cuda_check(cudaEventRecord(inputs_ready_, caller), "cudaEventRecord");
        cuda::cuda_check(cudaStreamWaitEvent(context_.stream(), inputs_ready_, 0), "cudaStreamWaitEvent");
        if (!exec_) capture(compute);
        cuda::cuda_check(cudaGraphLaunch(exec_, context_.stream()), "cudaGraphLaunch of a training round");
        cuda::cuda_check(cudaEventRecord(round_done_, context_.stream()), "cudaEventRecord");
        cuda::cuda_check(cudaStreamWaitEvent(caller, round_done_, 0), "cudaStreamWaitEvent");
        ++launches_;
    }

    // How often the round was captured (once) and launched (once per round).
    [[nodiscard]] int captures() const { return captures_; }
    [[nodiscard]] int64_t launches() const { return launches_; }

private:
    void capture(const std::function<void()>& compute) {
        context_.set_math(CudaBackend::math());  // the caller's settings, as when it runs uncaptured
        context_.set_scratch_limit(CudaBackend::scratch_limit());
        cuda::ContextScope on_graph_stream(context_);
        (void)context_.blas();  // cuBLAS's handle and workspace exist before the capture
        cuda::cuda_check(cudaStreamSynchronize(context_.stream()), "cudaStreamSynchronize before capture");
        cuda::cuda_check(cudaStreamBeginCapture(context_.stream(), cudaStreamCaptureModeThreadLocal),
                         "cudaStreamBeginCapture of a training round");
        try {
            compute();
        } catch (...) {
            cudaGraph_t broken = nullptr;
            (void)cudaStreamEndCapture(context_.stream(), &broken);
            if (broken) (void)cudaGraphDestroy(broken);
            throw;
        }
        cuda::cuda_check(cudaStreamEndCapture(context_.stream(), &graph_), "cudaStreamEndCapture of a training round");
        cuda::cuda_check(cudaGraphInstantiateWithFlags(&exec_, graph_, cudaGraphInstantiateFlagAutoFreeOnLaunch),
                         "cudaGraphInstantiate of a training round");
        ++captures_;
    }

    cuda::Context context_;
    cudaEvent_t inputs_ready_ = nullptr, round_done_ = nullptr;
    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t exec_ = nullptr;
    int captures_ = 0;
    int64_t launches_ = 0;
};

}  // namespace mpnet::train
