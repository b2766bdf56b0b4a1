// --device, --math and --precision of mpnet-train and mpnet-generate: where the network
// runs, the math mode of its matrix products and the format its activations are stored in. Host-only: the CUDA side is in device_cuda.cuh,
// compiled into the programs' .cu parts when the build has CUDA.
#pragma once
#include <cstdio>
#include <string>
#include <type_traits>

#include "cli.hpp"
#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/bf16_rate.hpp"

namespace mpnet::cli {

struct DeviceOption {
    bool cuda = false;
    int index = -1;            // cuda:N; -1: the process's rank modulo the number of devices
    std::string math = "fp32";  // fp32, tf32, fp16 or bf16 on the GPU; fp32 or bf16 on the CPU
    std::string precision = "fp32";  // activations stored as fp32, fp16 or bf16

    [[nodiscard]] std::string str() const {
        return cuda ? "cuda" + (index >= 0 ? ":" + std::to_string(index) : std::string()) : "cpu";
    }
};

inline constexpr const char* device_help =
    "where the network runs: cpu, or cuda[:N] (GPU N; without N, the\nprocess's rank modulo the GPUs present) (default: cpu)";
inline constexpr const char* math_help =
    "operands of the matrix products: fp32; on the GPU also tf32, fp16\nor bf16 (tensor cores), on the CPU bf16 (AVX512-BF16); sums,\ntensors, weights and optimizer stay float32 (default: fp32)";

inline constexpr const char* precision_help =
    "activations stored as fp32, fp16 or bf16 (each op computes in\nfloat32 and rounds its result); weights, optimizer, loss and\nEMA stay float32 (default: fp32)";

inline void parse_precision(const std::string& text, DeviceOption& d) {
    if (text != "fp32" && text != "fp16" && text != "bf16")
        usage_error("--precision: '", text, "' is not one of fp32, fp16, bf16");
    d.precision = text;
}

// f(std::type_identity<A>{}) with A the activation storage --precision names.
template <class F>
decltype(auto) with_precision(const std::string& precision, F&& f) {
    if (precision == "fp16") return f(std::type_identity<float16>{});
    if (precision == "bf16") return f(std::type_identity<bfloat16>{});
    return f(std::type_identity<float>{});
}

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

// Options that only the GPU reads are refused on the CPU rather than ignored, and bf16 where
// this CPU (or build) cannot run it.
inline void check_device_options(const DeviceOption& d) {
    if (!d.cuda && d.math != "fp32" && d.math != "bf16")
        usage_error("--math ", d.math, " applies to --device cuda only (the CPU runs fp32 or bf16)");
    if (!d.cuda && d.math == "bf16" && !cpu::bf16_unavailable().empty())
        usage_error("--math bf16: ", cpu::bf16_unavailable());
#ifndef MPNET_WITH_CUDA
    if (d.cuda) usage_error("--device ", d.str(), ": this program was built without CUDA (rebuild where nvcc is found)");
#endif
}

// Sets the CPU's math mode (on --device cpu). bf16 on a CPU whose bf16 products are slower
// than float32 ones still runs (it was asked for, and it changes the numbers), with a
// warning from `program` when `speak` is set (one process of a run speaks for it).
inline void select_cpu_math(const DeviceOption& d, const char* program, bool speak) {
    if (d.cuda) return;
    CpuBackend::set_math(d.math == "bf16" ? cpu::Math::bf16 : cpu::Math::fp32);
    if (d.math != "bf16" || !speak) return;
    if (const std::string why = cpu::bf16::slower_than_fp32(cpu::bf16::product_rate()); !why.empty())
        std::fprintf(stderr, "%s: warning: %s\n", program, why.c_str());
}

#ifdef MPNET_WITH_CUDA
// Makes the GPU that --device names current for this thread (the programs run the network on
// one thread) and sets the math mode; `rank` picks the GPU when --device names none. In the
// program's .cu file (device_cuda.cuh).
void select_cuda_device(const DeviceOption& d, int rank);
#endif

}  // namespace mpnet::cli
