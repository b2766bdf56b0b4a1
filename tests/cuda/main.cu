// The CUDA test program: runs the doctest cases when a device is present, and otherwise
// says so and succeeds without running any (ctest matches the message and reports a skip).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "mpnet/backend/cuda/backend.cuh"

int main(int argc, char** argv) {
    if (mpnet::cuda::device_count() == 0) {
        std::puts("CUDA tests skipped: no CUDA device present");
        return 0;
    }
    cudaDeviceProp prop{};
    mpnet::cuda::cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("CUDA tests on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    doctest::Context context(argc, argv);
    return context.run();
}
