// Conversion between float and the 16-bit storage formats on the CPU: widening is exact,
// narrowing rounds to nearest even (core/float16.hpp), NaN stays NaN. Eight elements at a
// time where the compiler targets AVX2 (fp16 through F16C's conversions, bf16 by integer
// rounding), giving the scalar conversion's bits.
#pragma once
#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mpnet::cpu {

namespace detail {

// Elements [0, n) of x widened into y, the vector part first; returns how many it did.
inline int64_t widen8(const float16* x, float* y, int64_t n) {
#if defined(__AVX2__) && defined(__F16C__)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    return i;
#else
    (void)x, (void)y, (void)n;
    return 0;
#endif
}
inline int64_t widen8(const bfloat16* x, float* y, int64_t n) {
#if defined(__AVX2__)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
        _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    return i;
#else
    (void)x, (void)y, (void)n;
    return 0;
#endif
}
inline int64_t narrow8(const float* x, float16* y, int64_t n) {
#if defined(__AVX2__) && defined(__F16C__)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return i;
#else
    (void)x, (void)y, (void)n;
    return 0;
#endif
}
inline int64_t narrow8(const float* x, bfloat16* y, int64_t n) {
#if defined(__AVX2__)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256i u = _mm256_castps_si256(v);
        // Round to nearest even on the low 16 bits; NaN keeps its high half with the quiet bit.
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
        const __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
        const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        const __m256i words = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, nan), 16);
        // Pack the eight 16-bit results (exact: each fits) into the low 128 bits.
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(words, words), 0b1000);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_castsi256_si128(packed));
    }
    return i;
#else
    (void)x, (void)y, (void)n;
    return 0;
#endif
}

}  // namespace detail

template <HalfStorage A>
void convert(CpuBackend, const CpuTensor<A>& x, CpuTensor<float>& y) {
    check_same_shape(x, y, "convert");
    const A* px = x.data();
    float* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        for (int64_t i = b + detail::widen8(px + b, py + b, n); i < b + n; ++i) py[i] = px[i].to_float();
    });
}

template <HalfStorage A>
void convert(CpuBackend, const CpuTensor<float>& x, CpuTensor<A>& y) {
    check_same_shape(x, y, "convert");
    const float* px = x.data();
    A* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        for (int64_t i = b + detail::narrow8(px + b, py + b, n); i < b + n; ++i) py[i] = A::from_float(px[i]);
    });
}

}  // namespace mpnet::cpu
