// The math mode of the CUDA backend's matrix products.
#pragma once
#include <string_view>

#include "mpnet/core/error.hpp"

namespace mpnet::cuda {

// Compute type of the float matrix products (convolutions, linear layers, attention).
// fp32 is the reference path. tf32, fp16 and bf16 let cuBLAS round the float operands to
// that format and run them on tensor cores, accumulating in fp32; tensors, weights,
// reductions and the optimizer stay fp32. Double products always run in fp64.
enum class Math { fp32, tf32, fp16, bf16 };

inline std::string_view to_string(Math m) {
    switch (m) {
        case Math::fp32: return "fp32";
        case Math::tf32: return "tf32";
        case Math::fp16: return "fp16";
        case Math::bf16: return "bf16";
    }
    return "?";
}
inline Math parse_math(std::string_view s) {
    for (Math m : {Math::fp32, Math::tf32, Math::fp16, Math::bf16})
        if (s == to_string(m)) return m;
    fail("unknown math mode '", s, "' (expected fp32, tf32, fp16 or bf16)");
}

}  // namespace mpnet::cuda
