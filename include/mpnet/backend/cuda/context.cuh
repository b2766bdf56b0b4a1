// A CUDA backend context: what one stream of GPU work runs under, owned in one object - the
// device, the stream, a cuBLAS handle bound to that stream with a workspace of its own (so
// two streams never share one), the math mode of the matrix products and the bound on a
// convolution's im2col scratch. Memory comes from the device's stream-ordered pool
// (memory.cuh), each block ordered on the stream of the context that allocated it.
//
// Several contexts live in one process: one per GPU, or two streams of one GPU. A context
// is used by one thread at a time, and is destroyed only once no ContextScope holds it. A thread's work goes to the context a ContextScope made
// current (which also makes its device current), or else to the thread's default context:
// the legacy default stream on whichever device is current, a cuBLAS handle per device,
// and the process-wide math mode and scratch bound, which CudaBackend::set_math and
// set_scratch_limit set for every thread that runs in its default context.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "mpnet/backend/cuda/check.cuh"
#include "mpnet/backend/cuda/math_mode.cuh"
#include "mpnet/backend/cuda/memory.cuh"

namespace mpnet::cuda {

namespace detail {
// A cuBLAS handle on one device, bound to one stream, with a workspace of its own so that
// cuBLAS never allocates while a step runs (or is captured into a graph).
class Blas {
public:
    // cuBLAS's recommended workspace for Hopper.
    static constexpr std::size_t workspace_bytes = std::size_t{32} << 20;

    // Creates the handle on the current device.
    explicit Blas(cudaStream_t stream) {
        cublas_check(cublasCreate(&handle_), "cublasCreate");
        cuda_check(cudaMalloc(&workspace_, workspace_bytes), "allocating the cuBLAS workspace of ", workspace_bytes,
                   " bytes");
        cublas_check(cublasSetStream(handle_, stream), "cublasSetStream");
        // cublasSetStream resets the workspace to cuBLAS's own pool: ours is set after it.
        cublas_check(cublasSetWorkspace(handle_, workspace_, workspace_bytes), "cublasSetWorkspace");
    }
    ~Blas() {
        // At process exit the runtime may already be gone: nothing useful can be done then.
        (void)cudaFree(workspace_);
        (void)cublasDestroy(handle_);
    }
    Blas(const Blas&) = delete;
    Blas& operator=(const Blas&) = delete;

    [[nodiscard]] cublasHandle_t handle() const { return handle_; }

private:
    cublasHandle_t handle_ = nullptr;
    void* workspace_ = nullptr;
};

inline int current_device() {
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    return device;
}

// The process-wide settings of the threads' default contexts.
inline std::atomic<Math>& default_math() {
    static std::atomic<Math> m{Math::fp32};
    return m;
}
inline std::atomic<std::size_t>& default_scratch_limit() {
    static std::atomic<std::size_t> bytes{std::size_t{256} << 20};
    return bytes;
}
}  // namespace detail

class Context {
public:
    // A context on `device` with a non-blocking stream of its own.
    explicit Context(int device, Math math = Math::fp32)
        : device_(device), math_(math), scratch_limit_(detail::default_scratch_limit().load()) {
        const int previous = detail::current_device();
        cuda_check(cudaSetDevice(device), "cudaSetDevice(", device, ") for a new context");
        const cudaError_t created = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
        (void)cudaSetDevice(previous);
        cuda_check(created, "cudaStreamCreate on device ", device, " for a new context");
    }
    ~Context() {
        if (is_default()) return;  // the legacy stream is not ours
        // Blocks still alive on the stream are freed on the legacy stream later; the handle
        // goes before its stream.
        (void)cudaStreamSynchronize(stream_);
        DevicePool::instance().retire_stream(stream_);
        blas_.clear();
        (void)cudaStreamDestroy(stream_);
    }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    // The device of the context; for a thread's default context, the thread's current device.
    [[nodiscard]] int device() const { return is_default() ? detail::current_device() : device_; }
    [[nodiscard]] cudaStream_t stream() const { return stream_; }
    [[nodiscard]] Math math() const { return is_default() ? detail::default_math().load() : math_.load(); }
    void set_math(Math m) { (is_default() ? detail::default_math() : math_).store(m); }
    // Upper bound on the im2col scratch of one convolution call: larger batches are unfolded
    // a chunk of images at a time (at least one image per chunk, whatever the bound).
    [[nodiscard]] std::size_t scratch_limit() const {
        return is_default() ? detail::default_scratch_limit().load() : scratch_limit_.load();
    }
    void set_scratch_limit(std::size_t bytes) {
        (is_default() ? detail::default_scratch_limit() : scratch_limit_).store(bytes);
    }

    // The context's cuBLAS handle, made on first use on the context's device (on the
    // default context, one per device).
    cublasHandle_t blas() {
        const int device = this->device();
        if (blas_.size() <= std::size_t(device)) blas_.resize(std::size_t(device) + 1);
        if (!blas_[std::size_t(device)]) {
            const int previous = detail::current_device();
            if (previous != device) cuda_check(cudaSetDevice(device), "cudaSetDevice(", device, ") for cuBLAS");
            try {
                blas_[std::size_t(device)] = std::make_unique<detail::Blas>(stream_);
            } catch (...) {
                (void)cudaSetDevice(previous);
                throw;
            }
            if (previous != device) (void)cudaSetDevice(previous);
        }
        return blas_[std::size_t(device)]->handle();
    }

    void synchronize() const { cuda_check(cudaStreamSynchronize(stream_), "stream synchronize"); }

    // The calling thread's context.
    static Context& current() {
        if (Context* c = current_slot()) return *c;
        thread_local Context thread_default{DefaultTag{}};
        return thread_default;
    }

private:
    friend class ContextScope;
    struct DefaultTag {};
    explicit Context(DefaultTag) : device_(-1), stream_(cudaStreamLegacy) {}
    [[nodiscard]] bool is_default() const { return device_ < 0; }
    static Context*& current_slot() {
        thread_local Context* slot = nullptr;
        return slot;
    }

    int device_;
    cudaStream_t stream_ = nullptr;  // made by the context, or the legacy stream of a default one
    std::atomic<Math> math_{Math::fp32};
    std::atomic<std::size_t> scratch_limit_{0};
    std::vector<std::unique_ptr<detail::Blas>> blas_;  // indexed by device
};

// Makes a context current on this thread (and its device the thread's current device) for
// a scope, then restores the previous context and device.
class ContextScope {
public:
    explicit ContextScope(Context& c) : saved_(Context::current_slot()), saved_device_(detail::current_device()) {
        cuda_check(cudaSetDevice(c.device()), "cudaSetDevice(", c.device(), ") entering a context");
        Context::current_slot() = &c;
    }
    ~ContextScope() {
        Context::current_slot() = saved_;
        (void)cudaSetDevice(saved_device_);
    }
    ContextScope(const ContextScope&) = delete;
    ContextScope& operator=(const ContextScope&) = delete;

private:
    Context* saved_;
    int saved_device_;
};

// The stream this thread's work goes to, and that stream's device: its context's.
inline cudaStream_t current_stream() { return Context::current().stream(); }
inline int current_context_device() { return Context::current().device(); }

}  // namespace mpnet::cuda
