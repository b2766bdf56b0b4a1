// The CPU backend: host memory from a caching pool, kernels on Eigen and OpenMP.
#pragma once
#include <cstring>
#include <string_view>
#include <vector>

#include <omp.h>

#include "mpnet/backend/cpu/memory.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::cpu {

struct CpuBackend {
    static constexpr std::string_view name = "cpu";

    static void* allocate(std::size_t bytes) { return MemoryPool::instance().allocate(bytes); }
    static void deallocate(void* p, std::size_t bytes) { MemoryPool::instance().deallocate(p, bytes); }
    static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
    static void copy_to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
    static void copy_from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
    static void zero(void* dst, std::size_t bytes) { std::memset(dst, 0, bytes); }
    static void synchronize() {}
    static std::size_t peak_bytes() { return MemoryPool::instance().peak_bytes(); }
    static void reset_peak() { MemoryPool::instance().reset_peak(); }
};

template <class T>
using CpuTensor = Tensor<T, CpuBackend>;

namespace detail {
// A per-thread buffer that grows to the largest size asked for and is then reused, so
// kernels that need scratch space do not allocate on every call.
template <class T>
T* thread_scratch(std::size_t n) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}
}  // namespace detail

// Below this many elements a loop is not worth waking the second thread for.
inline constexpr int64_t parallel_grain = 1 << 14;

}  // namespace mpnet::cpu

namespace mpnet {
using cpu::CpuBackend;
using cpu::CpuTensor;
static_assert(Backend<CpuBackend>);
}  // namespace mpnet
