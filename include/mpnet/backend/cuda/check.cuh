// Checked CUDA and cuBLAS calls: every failure throws mpnet::Error naming the operation,
// the shapes it was given and the library's own error name.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <utility>

#include "mpnet/core/error.hpp"

namespace mpnet::cuda {

// cuda_check(cudaMemcpyAsync(...), "copy_to_host of ", bytes, " bytes"). A failed runtime
// call also records its error as the thread's "last error"; it is read off here so that
// the next launch check does not report it a second time.
template <class... Parts>
void cuda_check(cudaError_t status, Parts&&... what) {
    if (status == cudaSuccess) return;
    (void)cudaGetLastError();
    fail("CUDA error in ", std::forward<Parts>(what)..., ": ", cudaGetErrorName(status), " (",
         cudaGetErrorString(status), ")");
}

template <class... Parts>
void cublas_check(cublasStatus_t status, Parts&&... what) {
    if (status != CUBLAS_STATUS_SUCCESS)
        fail("cuBLAS error in ", std::forward<Parts>(what)..., ": ", cublasGetStatusName(status), " (",
             cublasGetStatusString(status), ")");
}

// After a kernel launch: catches bad launch configurations at the call that made them
// (errors raised while the kernel runs surface at the next synchronising call).
template <class... Parts>
void launch_check(Parts&&... what) {
    cuda_check(cudaGetLastError(), "launch of ", std::forward<Parts>(what)...);
}

// Refuses `what` while `stream` is being captured into a CUDA graph: for the uploads from
// host memory, which a graph would read again at every replay, long after the host moved on.
template <class... Parts>
void check_not_capturing(cudaStream_t stream, Parts&&... what) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    cuda_check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
    check(capture == cudaStreamCaptureStatusNone, std::forward<Parts>(what)...,
          " while the stream is captured into a CUDA graph");
}

}  // namespace mpnet::cuda
