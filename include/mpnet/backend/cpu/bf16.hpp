// bfloat16 on the CPU: rounding float32 to bf16, the pair layout the bf16 products read,
// and the run-time test for the instruction they run on.
//
// AVX512-BF16's vdpbf16ps multiplies pairs of bf16 and adds both products to a float32
// lane: acc[l] += a[2l] b[2l] + a[2l+1] b[2l+1], 32 multiply-adds per instruction where a
// float32 FMA does 16, at the same rate. The products therefore hold their operands as
// pairs along the sum: one 32-bit word per pair, the first element in the low half.
//
// Rounding is to nearest even, done with AVX-512F integer arithmetic so that packing runs
// (and gives the same bits) on any AVX-512 CPU; NaN stays NaN. vdpbf16ps itself treats
// subnormal bf16 operands as zero and rounds after each of its two additions.
#pragma once
#include <bit>
#include <cstdint>

#include "mpnet/backend/cpu/simd.hpp"

namespace mpnet::cpu::bf16 {

// float32 -> bf16, round to nearest even; NaN becomes a quiet NaN of the same sign.
inline uint16_t from_float(float x) {
    const uint32_t u = std::bit_cast<uint32_t>(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float to_float(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

// x rounded to bf16 and widened back: what a bf16 operand holding x contributes.
inline float round(float x) { return to_float(from_float(x)); }

// One pair word: lo in the low half.
inline uint32_t pair(float lo, float hi) { return uint32_t(from_float(lo)) | uint32_t(from_float(hi)) << 16; }

// Whether this CPU executes vdpbf16ps. The products are built wherever the compiler
// targets AVX-512 (the instruction is written as inline assembly, so no compiler flag is
// needed for it) and only called where this holds.
inline bool cpu_supported() {
#if MPNET_CPU_SIMD && defined(__AVX512F__)
    static const bool supported = __builtin_cpu_supports("avx512bf16");
    return supported;
#else
    return false;
#endif
}

#if MPNET_CPU_SIMD && defined(__AVX512F__)

inline constexpr bool built = true;

// x rounded to bf16, in the high half of each 32-bit lane (the low half zero).
inline __m512i round_high(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __m512i quiet = _mm512_or_si512(u, _mm512_set1_epi32(0x00400000));
    return _mm512_and_si512(_mm512_mask_blend_epi32(nan, rounded, quiet), _mm512_set1_epi32(int(0xffff0000u)));
}

// Lane l: the pair word (lo[l], hi[l]).
inline __m512 pairs(__m512 lo, __m512 hi) {
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_srli_epi32(round_high(lo), 16), round_high(hi)));
}

// 16 floats as 16 bf16.
inline __m256i narrow16(__m512 x) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_high(x), 16)); }

// acc += the pairwise products of a and b (bf16 pair words). Inline assembly: the
// instruction needs no compiler flag, so one binary carries it and calls it only where
// cpu_supported() says the CPU has it.
inline __m512 dot_pairs(__m512 acc, __m512 a, __m512 b) {
    asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

#else

inline constexpr bool built = false;

#endif

// dst[i] = bf16 of src[i], i < n.
inline void narrow(const float* src, int64_t n, uint16_t* dst) {
    int64_t i = 0;
#if MPNET_CPU_SIMD && defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), narrow16(_mm512_loadu_ps(src + i)));
#endif
    for (; i < n; ++i) dst[i] = from_float(src[i]);
}

// Planes [n, channels, hw] as pair words over channels: out[n, c/2, pix] holds channels
// c and c + 1 (zero for the one past an odd count). The words are stored in a float
// buffer, which the products read by the bit pattern.
inline void channel_pairs(const float* x, int64_t n, int64_t channels, int64_t hw, float* out) {
    const int64_t half = (channels + 1) / 2;
#pragma omp parallel for collapse(2) schedule(static) if (n * half * hw >= (int64_t(1) << 15))
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < half; ++c) {
            const float* lo = x + (i * channels + 2 * c) * hw;
            const float* hi = 2 * c + 1 < channels ? lo + hw : nullptr;
            float* dst = out + (i * half + c) * hw;
            int64_t p = 0;
#if MPNET_CPU_SIMD && defined(__AVX512F__)
            for (; p + 16 <= hw; p += 16)
                _mm512_storeu_ps(dst + p, pairs(_mm512_loadu_ps(lo + p), hi ? _mm512_loadu_ps(hi + p) : _mm512_setzero_ps()));
#endif
            for (; p < hw; ++p) dst[p] = std::bit_cast<float>(pair(lo[p], hi ? hi[p] : 0.0f));
        }
}

// Rows [m, channels, taps] (a convolution weight) as bf16 pairs over channels:
// out[((o half + c/2) taps + t) 2 + c % 2] = row o, channel c, tap t, zero for the
// channel past an odd count. Row o is then the sum indices (c/2, t) of a product over
// images paired by channel_pairs.
inline void weight_pairs(const float* w, int64_t m, int64_t channels, int64_t taps, uint16_t* out) {
    const int64_t half = (channels + 1) / 2;
    for (int64_t o = 0; o < m; ++o)
        for (int64_t c = 0; c < 2 * half; ++c)
            for (int64_t t = 0; t < taps; ++t)
                out[((o * half + c / 2) * taps + t) * 2 + c % 2] =
                    c < channels ? from_float(w[(o * channels + c) * taps + t]) : uint16_t(0);
}

}  // namespace mpnet::cpu::bf16
