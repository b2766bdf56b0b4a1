// A count of the times a backend handed data back to the host: copy_to_host (Tensor::to_host)
// and every kernel that returns a value (sum, dot, the double-returning
// edm2_loss). On a GPU each one waits for the stream to drain, so a training step and a sampler
// step are written to make none: their scalars (gains and gain gradients, preconditioning
// coefficients, the loss, the non-finite gradient check) stay on the backend, read by kernels.
// The tests count these reads on the CPU, where the same code runs.
#pragma once
#include <atomic>
#include <cstdint>

namespace mpnet {

namespace detail {
inline std::atomic<uint64_t>& host_read_counter() {
    static std::atomic<uint64_t> n{0};
    return n;
}
inline void note_host_read() { host_read_counter().fetch_add(1, std::memory_order_relaxed); }
}  // namespace detail

// Reads from any backend to the host since the program started.
inline uint64_t host_reads() { return detail::host_read_counter().load(std::memory_order_relaxed); }

}  // namespace mpnet
