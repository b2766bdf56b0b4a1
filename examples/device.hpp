// --device and --math of mpnet-train and mpnet-generate: where the network runs, and the
// math mode of the GPU's matrix products. Host-only: the CUDA side is in device_cuda.cuh,
// compiled into the programs' .cu parts when the build has CUDA.
#pragma once
#include <string>

#include "cli.hpp"

namespace mpnet::cli {

struct DeviceOption {
    bool cuda = false;
    int index = -1;            // cuda:N; -1: the process's rank modulo the number of devices
    std::string math = "fp32";  // fp32, tf32, fp16 or bf16 (matrix products on the GPU)

    [[nodiscard]] std::string str() const {
        return cuda ? "cuda" + (index >= 0 ? ":" + std::to_string(index) : std::string()) : "cpu";
    }
};

inline constexpr const char* device_help =
    "where the network runs: cpu, or cuda[:N] (GPU N; without N, the\nprocess's rank modulo the GPUs present) (default: cpu)";
inline constexpr const char* math_help =
    "math of the GPU's matrix products: fp32, tf32, fp16 or bf16 (tensor\ncores, fp32 accumulation; tensors, weights and optimizer stay\nfloat32) (default: fp32)";

inline void parse_device(const std::string& text, DeviceOption& d) {
    if (text == "cpu") {
        d.cuda = false;
        return;
    }
    if (text == "cuda") {
        d.cuda = true, d.index = -1;
        return;
    }
    if (text.starts_with("cuda:")) {
        d.cuda = true;
        d.index = parse_integer<int>("--device", text.substr(5), 0, 1023);
        return;
    }
    usage_error("--device: '", text, "' is not cpu, cuda or cuda:N");
}

inline void parse_math(const std::string& text, DeviceOption& d) {
    if (text != "fp32" && text != "tf32" && text != "fp16" && text != "bf16")
        usage_error("--math: '", text, "' is not one of fp32, tf32, fp16, bf16");
    d.math = text;
}

// Options that only the GPU reads are refused on the CPU rather than ignored.
inline void check_device_options(const DeviceOption& d) {
    if (!d.cuda && d.math != "fp32") usage_error("--math ", d.math, " applies to --device cuda only");
#ifndef MPNET_WITH_CUDA
    if (d.cuda) usage_error("--device ", d.str(), ": this program was built without CUDA (rebuild where nvcc is found)");
#endif
}

#ifdef MPNET_WITH_CUDA
// Makes the GPU that --device names current for this thread (the programs run the network on
// one thread) and sets the math mode; `rank` picks the GPU when --device names none. In the
// program's .cu file (device_cuda.cuh).
void select_cuda_device(const DeviceOption& d, int rank);
#endif

}  // namespace mpnet::cli
