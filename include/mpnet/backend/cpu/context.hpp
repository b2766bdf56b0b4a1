// A CPU backend context: the settings one thread's computations run under (today the math
// of the convolution products). Several contexts may live in one process, e.g. a thread
// sampling in bf16 beside one training in float32; each is used by one thread at a time.
// A thread runs in the context a ContextScope made current, or else in the process's
// default context, which CpuBackend::set_math sets for every thread that has none of its own.
//
// The kernels read the context on the thread that called them, before any parallel region,
// so their OpenMP workers need none.
#pragma once
#include <atomic>
#include <string>
#include <string_view>

#include "mpnet/backend/cpu/bf16.hpp"
#include "mpnet/core/error.hpp"

namespace mpnet::cpu {

// The operands of the convolution products: float32, or bf16 with float32 sums (bf16.hpp;
// AVX512-BF16 CPUs only). Tensors, weights, optimizer state and loss stay float32 either way.
enum class Math { fp32, bf16 };

inline std::string_view to_string(Math m) { return m == Math::bf16 ? "bf16" : "fp32"; }

// Why this machine (CPU and build) cannot run bf16 products; empty where it can.
inline std::string bf16_unavailable() {
    if (!bf16::built) return "this build does not target AVX-512 (rebuild with -march=native on an AVX-512 CPU)";
    if (!bf16::cpu_supported()) return "this CPU lacks AVX512-BF16 (vdpbf16ps)";
    return {};
}

class Context {
public:
    explicit Context(Math math = Math::fp32) { set_math(math); }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    [[nodiscard]] Math math() const { return math_.load(std::memory_order_relaxed); }
    // bf16 is refused, naming the reason, where this CPU or build cannot run it.
    void set_math(Math m) {
        if (m == Math::bf16) {
            const std::string why = bf16_unavailable();
            check(why.empty(), "bf16 math on the CPU: ", why);
        }
        math_.store(m, std::memory_order_relaxed);
    }

    // The context of the calling thread.
    static Context& current() { return current_slot() ? *current_slot() : process_default(); }
    static Context& process_default() {
        static Context shared;
        return shared;
    }

private:
    friend class ContextScope;
    static Context*& current_slot() {
        thread_local Context* slot = nullptr;
        return slot;
    }

    std::atomic<Math> math_{Math::fp32};
};

// Makes a context current on this thread for a scope, then restores the previous one.
class ContextScope {
public:
    explicit ContextScope(Context& c) : saved_(Context::current_slot()) { Context::current_slot() = &c; }
    ~ContextScope() { Context::current_slot() = saved_; }
    ContextScope(const ContextScope&) = delete;
    ContextScope& operator=(const ContextScope&) = delete;

private:
    Context* saved_;
};

}  // namespace mpnet::cpu
