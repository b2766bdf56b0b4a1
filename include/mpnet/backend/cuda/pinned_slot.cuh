// Page-locked host memory through which uploads run without waiting for the device.
//
// copy_from_host returns only once its host buffer may be reused, which on the GPU means
// waiting for the stream: for every kernel queued before the copy. An upload from
// page-locked memory is queued on the stream and returns at once; the memory may be refilled
// once the device has run the copies out of it, which an event recorded after them tells.
// train/host_staging.hpp keeps two slots and fills one while the device still reads the other.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>

#include "mpnet/backend/cuda/check.cuh"
#include "mpnet/backend/cuda/context.cuh"

namespace mpnet::cuda {

class PinnedSlot {
public:
    // Room for `bytes` of uploads between two acquire() calls (each upload rounded up to
    // `alignment`, see space_for).
    explicit PinnedSlot(std::size_t bytes) : capacity_(bytes) {
        cuda_check(cudaMallocHost(&host_, capacity_ ? capacity_ : 1), "allocating ", capacity_,
                   " bytes of page-locked host memory for uploads");
        const cudaError_t made = cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming);
        if (made != cudaSuccess) (void)cudaFreeHost(host_);
        cuda_check(made, "cudaEventCreate");
    }
    PinnedSlot(const PinnedSlot&) = delete;
    PinnedSlot& operator=(const PinnedSlot&) = delete;
    ~PinnedSlot() {
        if (recorded_) (void)cudaEventSynchronize(copied_);  // the device may still read host_
        (void)cudaEventDestroy(copied_);
        (void)cudaFreeHost(host_);
    }

    static constexpr std::size_t alignment = 256;
    static constexpr std::size_t space_for(std::size_t bytes) { return (bytes + alignment - 1) / alignment * alignment; }

    // Waits until the device has run every copy out of this slot, then starts filling it anew.
    void acquire() {
        cuda_check(unreported_, "cudaEventRecord after the uploads of a staging slot");
        if (recorded_) cuda_check(cudaEventSynchronize(copied_), "waiting for the uploads of a staging slot");
        used_ = 0;
    }
    // Copies `bytes` at host address src into the slot and queues their copy to dst on the
    // calling thread's stream.
    void upload(void* dst, const void* src, std::size_t bytes) {
        check(used_ + bytes <= capacity_, "staging slot: ", used_ + bytes, " bytes of uploads, room for ", capacity_);
        char* at = static_cast<char*>(host_) + used_;
        std::memcpy(at, src, bytes);
        cuda_check(cudaMemcpyAsync(dst, at, bytes, cudaMemcpyHostToDevice, current_stream()), "upload of ", bytes,
                   " bytes");
        used_ += space_for(bytes);
    }
    // Marks the copies queued so far: the next acquire() waits for them. Called from
    // destructors, so it does not throw: a failure is reported by the next acquire().
    void release() noexcept {
        cudaError_t status = cudaErrorUnknown;
        try {
            status = cudaEventRecord(copied_, current_stream());
        } catch (...) {  // no context for this thread: nothing was queued either
        }
        if (status == cudaSuccess) recorded_ = true;
        else unreported_ = status;
    }

private:
    void* host_ = nullptr;
    std::size_t capacity_ = 0, used_ = 0;
    cudaEvent_t copied_ = nullptr;
    bool recorded_ = false;
    cudaError_t unreported_ = cudaSuccess;  // a failed release(), for the next acquire()
};

}  // namespace mpnet::cuda
