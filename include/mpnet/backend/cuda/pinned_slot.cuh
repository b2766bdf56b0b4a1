// Page-locked host memory through which uploads run without waiting for the device.
//
// copy_from_host returns only once its host buffer may be reused, which on the GPU means
// waiting for the stream: for every kernel queued before the copy. An upload from
// page-locked memory is queued on the stream and returns at once; the memory may be refilled
// once the device has run the copies out of it, which an event recorded after them tells.
// train/host_staging.hpp keeps two slots and fills one while the device still reads the other.
//
// A slot is filled between acquire() and release(), on one stream (the calling thread's at
// acquire()), and never while that stream is being captured into a CUDA graph: a graph would
// keep reading the slot's fixed addresses long after the host refilled them.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <utility>

#include "mpnet/backend/cuda/check.cuh"
#include "mpnet/backend/cuda/context.cuh"

namespace mpnet::cuda {

class PinnedSlot {
public:
    // Room for `bytes` of uploads between acquire() and release() (each upload rounded up
    // to `alignment`, see space_for).
    explicit PinnedSlot(std::size_t bytes) : capacity_(bytes) {
        cuda_check(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming), "cudaEventCreate");
        const cudaError_t made = cudaMallocHost(&host_, capacity_ ? capacity_ : 1);
        if (made != cudaSuccess) (void)cudaEventDestroy(copied_);
        cuda_check(made, "allocating ", capacity_, " bytes of page-locked host memory for uploads");
    }
    PinnedSlot(const PinnedSlot&) = delete;
    PinnedSlot& operator=(const PinnedSlot&) = delete;
    ~PinnedSlot() {
        // The device may still copy out of host_: wait for it (for the whole stream when the
        // event of the last copies could not be recorded).
        if (unreported_ != cudaSuccess && stream_ready_) (void)cudaStreamSynchronize(stream_);
        else if (recorded_) (void)cudaEventSynchronize(copied_);
        (void)cudaEventDestroy(copied_);
        (void)cudaFreeHost(host_);
    }

    static constexpr std::size_t alignment = 256;
    static constexpr std::size_t space_for(std::size_t bytes) { return (bytes + alignment - 1) / alignment * alignment; }

    // Waits until the device has run every copy out of this slot, then starts filling it
    // anew for the calling thread's stream.
    void acquire() {
        check(!open_, "staging slot: acquired again before its uploads were released");
        if (unreported_ != cudaSuccess) {
            // The last release could not mark its copies: wait for all of them, then report.
            const cudaError_t error = std::exchange(unreported_, cudaSuccess);
            (void)cudaStreamSynchronize(stream_);
            recorded_ = false;
            cuda_check(error, "cudaEventRecord after the uploads of a staging slot");
        }
        if (recorded_) cuda_check(cudaEventSynchronize(copied_), "waiting for the uploads of a staging slot");
        stream_ = current_stream();
        stream_ready_ = true;
        used_ = 0;
        open_ = true;
    }
    // Copies `bytes` at host address src into the slot and queues their copy to dst on the
    // slot's stream.
    void upload(void* dst, const void* src, std::size_t bytes) {
        check(open_, "staging slot: upload outside acquire() and release()");
        check(current_stream() == stream_, "staging slot: upload on another stream than the slot was acquired on");
        check_not_capturing(stream_, "staging slot: an upload of ", bytes, " bytes");
        check(used_ + bytes <= capacity_, "staging slot: ", used_ + bytes, " bytes of uploads, room for ", capacity_);
        char* at = static_cast<char*>(host_) + used_;
        std::memcpy(at, src, bytes);
        cuda_check(cudaMemcpyAsync(dst, at, bytes, cudaMemcpyHostToDevice, stream_), "upload of ", bytes, " bytes");
        used_ += space_for(bytes);
    }
    // Marks the copies queued since acquire(): the next acquire() waits for them. Called
    // from destructors, so it does not throw: a failure is reported by the next acquire().
    void release() noexcept {
        if (!open_) return;
        open_ = false;
        const cudaError_t status = cudaEventRecord(copied_, stream_);
        if (status == cudaSuccess) recorded_ = true;
        else unreported_ = status;
    }

private:
    void* host_ = nullptr;
    std::size_t capacity_ = 0, used_ = 0;
    cudaEvent_t copied_ = nullptr;
    cudaStream_t stream_ = nullptr;  // the stream of the copies since the last acquire()
    bool stream_ready_ = false, open_ = false, recorded_ = false;
    cudaError_t unreported_ = cudaSuccess;  // a failed release(), for the next acquire()
};

}  // namespace mpnet::cuda
