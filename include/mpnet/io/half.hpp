// IEEE binary16 (fp16) and bfloat16 <-> float conversion, bit-exact and constexpr.
//
// Narrowing rounds to nearest, ties to even, as hardware conversions do; overflow gives
// infinity, NaN stays NaN (quiet, sign and leading payload bits kept). Widening is exact.
#pragma once
#include <bit>
#include <cstdint>

namespace mpnet::io {

constexpr float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f)  // inf or NaN: all-ones exponent, payload moves up unchanged
        return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0)  // normal: rebias 15 -> 127
        return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
    if (mantissa == 0) return std::bit_cast<float>(sign);
    // Subnormal half (mantissa * 2^-24) is a normal float: shift the leading one into the
    // implicit-bit position, lowering the exponent once per shift from that of 2^-14.
    std::uint32_t biased = 113;
    while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --biased;
    }
    return std::bit_cast<float>(sign | (biased << 23) | ((mantissa & 0x3ffu) << 13));
}

constexpr std::uint16_t float_to_half(float f) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
    const std::uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)  // NaN: force the quiet bit so the payload cannot become 0 (inf)
        return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    if (magnitude >= 0x477ff000u)  // >= 65520, the tie between 65504 and 2^16, rounds to inf
        return static_cast<std::uint16_t>(sign | 0x7c00u);
    if (magnitude >= 0x38800000u) {  // >= 2^-14: normal half
        // Adding 0xfff plus the lowest kept bit rounds to nearest even; a carry out of the
        // mantissa correctly bumps the exponent.
        const std::uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
        return static_cast<std::uint16_t>(sign | ((rounded - (112u << 23)) >> 13));
    }
    if (magnitude < 0x33000000u) return sign;  // below 2^-25: rounds to (signed) zero
    // Subnormal half: the result is magnitude * 2^24 rounded, i.e. the full 24-bit float
    // mantissa shifted right by 14..24 places with round-half-to-even on the dropped bits.
    const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - (magnitude >> 23);
    std::uint32_t result = mantissa >> shift;
    const std::uint32_t dropped = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (dropped > halfway || (dropped == halfway && (result & 1u) != 0)) ++result;
    return static_cast<std::uint16_t>(sign | result);
}

constexpr float bf16_to_float(std::uint16_t b) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

constexpr std::uint16_t float_to_bf16(float f) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u)  // NaN: truncate, forcing the quiet bit
        return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
    // Round to nearest even on the low 16 bits; overflow carries into the exponent and
    // ends at infinity, which is the correctly rounded result.
    return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace mpnet::io
