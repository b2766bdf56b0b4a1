// Selecting the GPU and math mode a program's --device and --math ask for: the definition
// of device.hpp's select_cuda_device, included by exactly one .cu file of each program.
#pragma once
#include "device.hpp"
#include "mpnet/backend/cuda/cuda.cuh"

namespace mpnet::cli {

// Makes the device current for this thread (the programs run the network on one thread)
// and sets the math mode; `rank` picks the device when --device names none.
void select_cuda_device(const DeviceOption& d, int rank) {
    const int count = cuda::device_count();
    check(count > 0, "--device ", d.str(), ": no CUDA device is present (or no driver)");
    const int index = d.index >= 0 ? d.index : rank % count;
    check(index < count, "--device ", d.str(), ": there are ", count, " CUDA device(s), 0 to ", count - 1);
    cuda::cuda_check(cudaSetDevice(index), "cudaSetDevice(", index, ")");
    CudaBackend::set_math(cuda::parse_math(d.math));
}

}  // namespace mpnet::cli
