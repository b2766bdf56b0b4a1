// The CPU backend: host memory from a caching pool and planned arenas, kernels on Eigen and OpenMP.
#pragma once
#include <atomic>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <omp.h>

#include "mpnet/backend/cpu/context.hpp"
#include "mpnet/backend/cpu/memory.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/host_reads.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::cpu {

struct CpuBackend {
    static constexpr std::string_view name = "cpu";

    static void* allocate(std::size_t bytes) { return MemoryPool::instance().allocate(bytes); }
    static void deallocate(void* p, std::size_t bytes) { MemoryPool::instance().deallocate(p, bytes); }
    static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
    static void copy_to_host(void* dst, const void* src, std::size_t bytes) {
        mpnet::detail::note_host_read();
        std::memcpy(dst, src, bytes);
    }
    static void copy_from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
    static void zero(void* dst, std::size_t bytes) { std::memset(dst, 0, bytes); }
    static void synchronize() {}
    static std::size_t peak_bytes() { return MemoryPool::instance().peak_bytes(); }
    static void reset_peak() { MemoryPool::instance().reset_peak(); }
    // Returns the pool's freed blocks to the system: after a phase whose shapes will not recur.
    static void release_cached() { MemoryPool::instance().release_cached(); }
    // The arena a recurring phase's blocks are planned into (memory.hpp).
    using MemoryPlan = cpu::MemoryPlan;

    // The math of the convolution products in the calling thread's context (context.hpp).
    static Math math() { return Context::current().math(); }
    static void set_math(Math m) { Context::current().set_math(m); }
};

// Sets the math of the calling thread's context for a scope and restores it at its end.
class MathScope {
public:
    explicit MathScope(Math m) : saved_(CpuBackend::math()) { CpuBackend::set_math(m); }
    ~MathScope() { CpuBackend::set_math(saved_); }
    MathScope(const MathScope&) = delete;
    MathScope& operator=(const MathScope&) = delete;

private:
    Math saved_;
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

// The sum of term(i) over [0, n) in double, bit-identical from run to run: each thread sums
// a fixed chunk and the chunk sums are added in order. OpenMP's reduction clause combines
// per-thread sums in whichever order the threads finish, which would make training runs
// (and so exact resume) differ in the last bits.
template <class F>
double deterministic_sum(int64_t n, F&& term) {
    const int chunks = n > parallel_grain ? omp_get_max_threads() : 1;
    std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(chunks)
    for (int c = 0; c < chunks; ++c) {
        double s = 0;
        for (int64_t i = n * c / chunks; i < n * (c + 1) / chunks; ++i) s += term(i);
        partial[static_cast<std::size_t>(c)] = s;
    }
    double total = 0;
    for (double p : partial) total += p;
    return total;
}

}  // namespace mpnet::cpu

namespace mpnet {
using cpu::CpuBackend;
using cpu::CpuTensor;
static_assert(Backend<CpuBackend>);
}  // namespace mpnet
