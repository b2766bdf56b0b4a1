// Device memory for the CUDA backend.
//
// Memory comes from each device's stream-ordered pool (cudaMallocAsync) whose release
// threshold is raised to "never", so blocks freed during a training step stay reserved and
// the next step's allocations are served from the pool without reaching the driver. A
// block is allocated on the stream of the calling thread's context (context.cuh) and freed
// on that same stream, so the free is ordered after every kernel that stream ran on it.
// Work on other streams that touches a block must be synchronised by the caller before the
// block's last owner goes away. A context that is destroyed first hands its blocks to the
// legacy stream (retire_stream), so they may outlive it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <mutex>
#include <set>
#include <span>
#include <unordered_map>
#include <utility>

#include "mpnet/backend/cuda/check.cuh"

namespace mpnet::cuda {

// The stream and the device of the calling thread's context (defined in context.cuh,
// included below).
inline cudaStream_t current_stream();
inline int current_context_device();

class DevicePool {
public:
    static DevicePool& instance() {
        static DevicePool pool;
        return pool;
    }

    void* allocate(std::size_t bytes) {
        const int device = current_context_device();
        keep_reserved(device);
        const cudaStream_t stream = current_stream();
        void* p = nullptr;
        const cudaError_t status = cudaMallocAsync(&p, bytes, stream);
        if (status != cudaSuccess)
            cuda_check(status, "allocate of ", bytes, " bytes from the stream-ordered pool of device ", device, " (",
                       bytes_in_use(), " bytes in use)");
        std::lock_guard lock(mutex_);
        blocks_[p] = Block{bytes, stream, device};
        in_use_ += bytes;
        if (in_use_ > peak_) peak_ = in_use_;
        return p;
    }

    // Called from tensor destructors, so it must not throw. A failure here means the
    // context is already broken (or torn down at exit); it is reported, not hidden. The
    // free is issued under the lock, so that a context being destroyed on another thread
    // cannot retire (and destroy) the block's stream in between.
    void deallocate(void* p, std::size_t bytes) noexcept {
        std::lock_guard lock(mutex_);
        cudaStream_t stream = cudaStreamLegacy;
        int device = -1;
        if (auto it = blocks_.find(p); it != blocks_.end()) {
            stream = it->second.stream;
            device = it->second.device;
            blocks_.erase(it);
        }
        in_use_ -= bytes;
        // A retired block is freed on the legacy stream of its own device.
        int current = device;
        if (device >= 0 && stream == cudaStreamLegacy && cudaGetDevice(&current) == cudaSuccess && current != device)
            (void)cudaSetDevice(device);
        const cudaError_t status = cudaFreeAsync(p, stream);
        if (current != device) (void)cudaSetDevice(current);
        if (status == cudaSuccess) return;
        (void)cudaGetLastError();
        if (status != cudaErrorCudartUnloading)
            std::fprintf(stderr, "mpnet: CUDA error in deallocate of %zu bytes: %s\n", bytes, cudaGetErrorName(status));
    }

    // Blocks ordered on `stream` are freed on the legacy stream from now on: `stream` is
    // about to be destroyed, after its work has finished.
    void retire_stream(cudaStream_t stream) {
        std::lock_guard lock(mutex_);
        for (auto& [p, block] : blocks_)
            if (block.stream == stream) block.stream = cudaStreamLegacy;
    }

    // Returns the unused reserve of the current context's device's pool to the driver (after
    // the current stream's frees).
    void release_cached() {
        cuda_check(cudaStreamSynchronize(current_stream()), "release_cached: stream synchronize");
        cuda_check(cudaMemPoolTrimTo(pool(current_context_device()), 0), "release_cached: cudaMemPoolTrimTo");
    }

    [[nodiscard]] std::size_t bytes_in_use() {
        std::lock_guard lock(mutex_);
        return in_use_;
    }
    [[nodiscard]] std::size_t peak_bytes() {
        std::lock_guard lock(mutex_);
        return peak_;
    }
    void reset_peak() {
        std::lock_guard lock(mutex_);
        peak_ = in_use_;
    }

private:
    struct Block {
        std::size_t bytes;
        cudaStream_t stream;  // of the context that allocated it (the legacy stream once retired)
        int device;
    };

    static cudaMemPool_t pool(int device) {
        cudaMemPool_t pool = nullptr;
        cuda_check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool of device ", device);
        return pool;
    }

    // Once per device: keep freed memory in the pool instead of giving it back at every
    // synchronisation, which is what makes steady-state training allocation-free.
    void keep_reserved(int device) {
        {
            std::lock_guard lock(mutex_);
            if (configured_.contains(device)) return;
        }
        uint64_t threshold = std::numeric_limits<uint64_t>::max();
        cuda_check(cudaMemPoolSetAttribute(pool(device), cudaMemPoolAttrReleaseThreshold, &threshold),
                   "cudaMemPoolSetAttribute(release threshold) of device ", device);
        std::lock_guard lock(mutex_);
        configured_.insert(device);
    }

    std::set<int> configured_;  // devices whose pool keep_reserved has set
    std::mutex mutex_;
    std::unordered_map<void*, Block> blocks_;
    std::size_t in_use_ = 0, peak_ = 0;
};

// Pool-backed scratch of any trivially copyable type (indices, double accumulators) for
// kernels that need more than a Tensor of float or double.
template <class U>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t n)
        : n_(n), p_(n ? static_cast<U*>(DevicePool::instance().allocate(n * sizeof(U))) : nullptr) {}
    static DeviceBuffer from_host(std::span<const U> values) {
        DeviceBuffer b(values.size());
        if (!values.empty()) {
            check_not_capturing(current_stream(), "DeviceBuffer upload of ", values.size_bytes(), " bytes");
            cuda_check(cudaMemcpyAsync(b.p_, values.data(), values.size_bytes(), cudaMemcpyHostToDevice,
                                       current_stream()),
                       "DeviceBuffer upload of ", values.size_bytes(), " bytes");
            // The source may be released as soon as we return.
            cuda_check(cudaStreamSynchronize(current_stream()), "DeviceBuffer upload: stream synchronize");
        }
        return b;
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : n_(std::exchange(o.n_, 0)), p_(std::exchange(o.p_, nullptr)) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(n_, o.n_);
        std::swap(p_, o.p_);
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (p_) DevicePool::instance().deallocate(p_, n_ * sizeof(U));
    }

    [[nodiscard]] U* data() { return p_; }
    [[nodiscard]] const U* data() const { return p_; }
    [[nodiscard]] std::size_t size() const { return n_; }

private:
    std::size_t n_ = 0;
    U* p_ = nullptr;
};

}  // namespace mpnet::cuda

#include "mpnet/backend/cuda/context.cuh"  // current_stream()
