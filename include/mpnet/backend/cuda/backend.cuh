// The CUDA backend: device memory from the stream-ordered pool, all work in the calling
// thread's context (context.cuh: device, stream, cuBLAS, math), kernels as free functions
// in mpnet::cuda found by ADL on the tag.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <string_view>

#include "mpnet/backend/cuda/check.cuh"
#include "mpnet/backend/cuda/context.cuh"
#include "mpnet/backend/cuda/memory.cuh"
#include "mpnet/backend/cuda/pinned_slot.cuh"
#include "mpnet/core/host_reads.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::cuda {

struct CudaBackend {
    static constexpr std::string_view name = "cuda";

    static void* allocate(std::size_t bytes) { return DevicePool::instance().allocate(bytes); }
    static void deallocate(void* p, std::size_t bytes) { DevicePool::instance().deallocate(p, bytes); }
    static void copy(void* dst, const void* src, std::size_t bytes) {
        cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()), "copy of ", bytes,
                   " bytes on the device");
    }
    // Returns when the host buffer holds the data.
    static void copy_to_host(void* dst, const void* src, std::size_t bytes) {
        mpnet::detail::note_host_read();
        cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, current_stream()), "copy_to_host of ",
                   bytes, " bytes");
        synchronize();
    }
    // Returns when the host buffer may be reused.
    static void copy_from_host(void* dst, const void* src, std::size_t bytes) {
        cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, current_stream()), "copy_from_host of ",
                   bytes, " bytes");
        synchronize();
    }
    static void zero(void* dst, std::size_t bytes) {
        cuda_check(cudaMemsetAsync(dst, 0, bytes, current_stream()), "zero of ", bytes, " bytes");
    }
    static void synchronize() { Context::current().synchronize(); }
    // Uploads that return at once (pinned_slot.cuh), for train/host_staging.hpp.
    using PinnedSlot = cuda::PinnedSlot;

    // The calling thread's context's settings (context.cuh).
    static cudaStream_t stream() { return current_stream(); }
    static Math math() { return Context::current().math(); }
    static void set_math(Math m) { Context::current().set_math(m); }
    static std::size_t scratch_limit() { return Context::current().scratch_limit(); }
    static void set_scratch_limit(std::size_t bytes) { Context::current().set_scratch_limit(bytes); }
    static std::size_t peak_bytes() { return DevicePool::instance().peak_bytes(); }
    static void reset_peak() { DevicePool::instance().reset_peak(); }
};

template <class T>
using CudaTensor = Tensor<T, CudaBackend>;

// Number of usable devices; 0 when there is no device or no driver (never throws).
inline int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the error so later checks do not report it
        return 0;
    }
    return n;
}

// Sets the math mode of the calling thread's context for a scope and restores it at its end.
class MathScope {
public:
    explicit MathScope(Math m) : saved_(CudaBackend::math()) { CudaBackend::set_math(m); }
    ~MathScope() { CudaBackend::set_math(saved_); }
    MathScope(const MathScope&) = delete;
    MathScope& operator=(const MathScope&) = delete;

private:
    Math saved_;
};

}  // namespace mpnet::cuda

namespace mpnet {
using cuda::CudaBackend;
using cuda::CudaTensor;
static_assert(Backend<CudaBackend>);
}  // namespace mpnet
