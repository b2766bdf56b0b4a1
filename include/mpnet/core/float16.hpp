// 16-bit floating-point element types: activations stored in half precision.
//
// float16 (IEEE binary16) and bfloat16 are storage formats only: a tensor of them holds
// activations, and every kernel widens to float, computes there and rounds once on store
// (round to nearest even), which is what the reference's half-precision PyTorch ops do.
// Parameters, the optimizer, the loss and every reduction stay in float. Each type is a
// 16-bit word, trivially copyable, so a tensor of them can live on any backend; the CUDA
// kernels reinterpret the word as __half or __nv_bfloat16.
#pragma once
#include <cstdint>

#include "mpnet/io/half.hpp"

namespace mpnet {

struct float16 {
    std::uint16_t bits;

    static constexpr float16 from_float(float f) { return {io::float_to_half(f)}; }
    [[nodiscard]] constexpr float to_float() const { return io::half_to_float(bits); }
    static constexpr const char* name = "fp16";
};

struct bfloat16 {
    std::uint16_t bits;

    static constexpr bfloat16 from_float(float f) { return {io::float_to_bf16(f)}; }
    [[nodiscard]] constexpr float to_float() const { return io::bf16_to_float(bits); }
    static constexpr const char* name = "bf16";
};

static_assert(sizeof(float16) == 2 && sizeof(bfloat16) == 2);

}  // namespace mpnet
