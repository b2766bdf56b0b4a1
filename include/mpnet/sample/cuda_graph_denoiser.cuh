// A network denoiser for the GPU whose evaluation is a CUDA graph, captured once and replayed.
//
// A forward pass of the U-Net is a few hundred kernel launches; for the small batches of
// sampling the launches, not the arithmetic, can be most of its time. Since a forward pass
// reads nothing back to the host (core/host_reads.hpp) and allocates from the stream-ordered
// pool (which graphs capture as memory nodes), it can be captured: the first call for a batch
// shape runs the network in a context of the denoiser's own (its stream, cuBLAS handle and
// workspace; the caller's device and math mode) while capturing it, reading from persistent
// input buffers; every call then copies x and the labels into those buffers, fills sigma by a
// kernel and launches the graph. The caller's stream and the graph's are ordered by events,
// so the denoiser behaves like NetworkDenoiser in whatever context is current. A graph's
// memory keeps its addresses for the graph's lifetime, so the captured output stays valid
// between launches (instantiated to free and re-make its allocations on each launch).
#pragma once
#include <cuda_runtime.h>

#include "mpnet/backend/cuda/cuda.cuh"
#include "mpnet/nn/precond.hpp"

namespace mpnet::sample {

template <Scalar T, Element A = T>
class CudaGraphDenoiser {
public:
    using TensorT = CudaTensor<T>;

    explicit CudaGraphDenoiser(nn::Precond<T, CudaBackend, A>& net)
        : net_(&net), graph_context_(cuda::Context::current().device(), CudaBackend::math()) {
        cuda::cuda_check(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming), "cudaEventCreate");
        cuda::cuda_check(cudaEventCreateWithFlags(&output_ready_, cudaEventDisableTiming), "cudaEventCreate");
    }
    CudaGraphDenoiser(const CudaGraphDenoiser&) = delete;
    CudaGraphDenoiser& operator=(const CudaGraphDenoiser&) = delete;
    // Blocks are freed on the stream that allocated them (DevicePool), so the tensors made
    // in the graph's context need no scope here; a destructor must not throw.
    ~CudaGraphDenoiser() {
        release_graph();
        x_ = TensorT(), labels_ = TensorT(), sigma_ = TensorT();
        (void)cudaStreamSynchronize(graph_stream());
        (void)cudaEventDestroy(inputs_ready_);
        (void)cudaEventDestroy(output_ready_);
    }

    TensorT operator()(const TensorT& x, double sigma, const TensorT& labels) {
        if (!exec_ || x.shape() != x_.shape() || labels.shape() != labels_.shape()) capture(x.shape(), labels.shape());
        const cudaStream_t caller = cuda::current_stream();
        x_.copy_from(x);
        if (!labels.empty()) labels_.copy_from(labels);
        fill(CudaBackend{}, sigma_, T(sigma));
        cuda::cuda_check(cudaEventRecord(inputs_ready_, caller), "cudaEventRecord");
        cuda::cuda_check(cudaStreamWaitEvent(graph_stream(), inputs_ready_, 0), "cudaStreamWaitEvent");
        cuda::cuda_check(cudaGraphLaunch(exec_, graph_stream()), "cudaGraphLaunch of the denoiser's graph");
        cuda::cuda_check(cudaEventRecord(output_ready_, graph_stream()), "cudaEventRecord");
        cuda::cuda_check(cudaStreamWaitEvent(caller, output_ready_, 0), "cudaStreamWaitEvent");
        ++launches_;
        return out_.clone();  // on the caller's stream, after the graph
    }

    // How often a graph was captured (once per batch shape) and launched.
    [[nodiscard]] int captures() const { return captures_; }
    [[nodiscard]] int64_t launches() const { return launches_; }

private:
    void capture(const Shape& x_shape, const Shape& labels_shape) {
        release_graph();
        graph_context_.set_math(CudaBackend::math());  // the caller's settings, as when it runs uncaptured
        graph_context_.set_scratch_limit(CudaBackend::scratch_limit());
        cuda::ContextScope on_graph_stream(graph_context_);
        x_ = TensorT(x_shape);
        labels_ = labels_shape.rank() ? TensorT(labels_shape) : TensorT();
        sigma_ = TensorT(Shape{x_shape[0]});
        (void)graph_context_.blas();  // cuBLAS's handle and workspace exist before the capture
        // The capture allocates the inputs' neighbours from the pool: let those allocations land first.
        cuda::cuda_check(cudaStreamSynchronize(graph_stream()), "cudaStreamSynchronize before capture");
        cuda::cuda_check(cudaStreamBeginCapture(graph_stream(), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        try {
            out_ = net_->forward(x_, sigma_, labels_, nn::ForwardMode{}, false).D;
        } catch (...) {
            cudaGraph_t broken = nullptr;
            (void)cudaStreamEndCapture(graph_stream(), &broken);
            if (broken) (void)cudaGraphDestroy(broken);
            throw;
        }
        cuda::cuda_check(cudaStreamEndCapture(graph_stream(), &graph_), "cudaStreamEndCapture of the denoiser's graph");
        cuda::cuda_check(cudaGraphInstantiateWithFlags(&exec_, graph_, cudaGraphInstantiateFlagAutoFreeOnLaunch),
                         "cudaGraphInstantiate of the denoiser's graph");
        ++captures_;
    }

    void release_graph() {
        if (!exec_) return;
        // The captured output is a graph allocation, freed on the graph's stream (where it was
        // allocated) after the caller's stream has finished its last copy of it.
        (void)cudaEventRecord(output_ready_, cuda::current_stream());
        (void)cudaStreamWaitEvent(graph_stream(), output_ready_, 0);
        out_ = TensorT();
        (void)cudaStreamSynchronize(graph_stream());
        (void)cudaGraphExecDestroy(exec_);
        (void)cudaGraphDestroy(graph_);
        exec_ = nullptr, graph_ = nullptr;
    }

    [[nodiscard]] cudaStream_t graph_stream() const { return graph_context_.stream(); }

    nn::Precond<T, CudaBackend, A>* net_;
    cuda::Context graph_context_;
    cudaEvent_t inputs_ready_ = nullptr, output_ready_ = nullptr;
    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t exec_ = nullptr;
    TensorT x_, labels_, sigma_, out_;
    int captures_ = 0;
    int64_t launches_ = 0;
};

}  // namespace mpnet::sample
