// The CUDA backend: device memory from the stream-ordered pool, all work on the calling
// thread's current stream, kernels as free functions in mpnet::cuda found by ADL on the tag.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <string_view>

#include "mpnet/backend/cuda/check.cuh"
#include "mpnet/backend/cuda/memory.cuh"
#include "mpnet/core/host_reads.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::cuda {

// Compute type of the float matrix products (convolutions, linear layers, attention).
// fp32 is the reference path. tf32, fp16 and bf16 let cuBLAS round the float operands to
// that format and run them on tensor cores, accumulating in fp32; tensors, weights,
// reductions and the optimizer stay fp32. Double products always run in fp64.
enum class Math { fp32, tf32, fp16, bf16 };

inline std::string_view to_string(Math m) {
    switch (m) {
        case Math::fp32: return "fp32";
        case Math::tf32: return "tf32";
        case Math::fp16: return "fp16";
        case Math::bf16: return "bf16";
    }
    return "?";
}
inline Math parse_math(std::string_view s) {
    for (Math m : {Math::fp32, Math::tf32, Math::fp16, Math::bf16})
        if (s == to_string(m)) return m;
    fail("unknown math mode '", s, "' (expected fp32, tf32, fp16 or bf16)");
}

namespace detail {
inline std::atomic<Math>& math_setting() {
    static std::atomic<Math> m{Math::fp32};
    return m;
}
inline std::atomic<std::size_t>& scratch_limit_setting() {
    static std::atomic<std::size_t> bytes{std::size_t{256} << 20};
    return bytes;
}
}  // namespace detail

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
    static void synchronize() { cuda_check(cudaStreamSynchronize(current_stream()), "stream synchronize"); }

    static cudaStream_t stream() { return current_stream(); }
    static void set_stream(cudaStream_t s) { set_current_stream(s); }
    static Math math() { return detail::math_setting().load(std::memory_order_relaxed); }
    static void set_math(Math m) { detail::math_setting().store(m, std::memory_order_relaxed); }
    // Upper bound on the im2col scratch of one convolution call: larger batches are unfolded
    // a chunk of images at a time (at least one image per chunk, whatever the bound).
    static std::size_t scratch_limit() { return detail::scratch_limit_setting().load(std::memory_order_relaxed); }
    static void set_scratch_limit(std::size_t bytes) {
        detail::scratch_limit_setting().store(bytes, std::memory_order_relaxed);
    }
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

// Sets the math mode for a scope and restores the previous one at its end.
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
