// The widest float vector the compiler targets (AVX-512 or AVX2 with FMA), as a handful of
// inline operations the hand-written CPU kernels are built from.
//
// MPNET_CPU_SIMD is 1 where one of them is enabled; kernels keep a portable path for
// other targets. The width is decided at compile time by the -m flags (-march=native
// picks the machine's own).
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define MPNET_CPU_SIMD 1
#include <immintrin.h>
#else
#define MPNET_CPU_SIMD 0
#endif

#if MPNET_CPU_SIMD

namespace mpnet::cpu::simd {

#if defined(__AVX512F__)

inline constexpr int lanes = 16;
using vec = __m512;

inline vec zero() { return _mm512_setzero_ps(); }
inline vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec broadcast_value(float v) { return _mm512_set1_ps(v); }
inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
// The first n (< lanes) elements, zeros after them; nothing past them is touched.
inline vec load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p); }
inline void store_first(float* p, vec v, int n) { _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), v); }

// One step of a block transpose: with rows lo = r[i] and hi = r[i + b], element j of the
// new lo is (j & b) ? hi[j - b] : lo[j] and of the new hi (j & b) ? hi[j] : lo[j + b].
template <int b>
inline void swap_blocks(vec& lo, vec& hi) {
    auto index = [](bool upper) {
        alignas(64) int32_t t[16];
        for (int j = 0; j < 16; ++j) t[j] = upper ? ((j & b) ? 16 + j : j + b) : ((j & b) ? 16 + j - b : j);
        return _mm512_load_si512(t);
    };
    const vec new_lo = _mm512_permutex2var_ps(lo, index(false), hi);
    hi = _mm512_permutex2var_ps(lo, index(true), hi);
    lo = new_lo;
}

// The 2 lanes floats lo, hi (in that order) split into their even and odd elements.
inline void deinterleave(vec lo, vec hi, vec& even, vec& odd) {
    const __m512i e = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    even = _mm512_permutex2var_ps(lo, e, hi);
    odd = _mm512_permutex2var_ps(lo, _mm512_add_epi32(e, _mm512_set1_epi32(1)), hi);
}

// The inverse: a0 b0 a1 b1 ... as the 2 lanes floats first, second.
inline void interleave(vec a, vec b, vec& first, vec& second) {
    const __m512i i = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    first = _mm512_permutex2var_ps(a, i, b);
    second = _mm512_permutex2var_ps(a, _mm512_add_epi32(i, _mm512_set1_epi32(8)), b);
}

#elif defined(__AVX2__) && defined(__FMA__)

inline constexpr int lanes = 8;
using vec = __m256;

inline vec zero() { return _mm256_setzero_ps(); }
inline vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec broadcast_value(float v) { return _mm256_set1_ps(v); }
inline vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }

namespace detail {
// Lane i is all ones where i < n: the mask AVX2's masked moves take.
inline __m256i first_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
}  // namespace detail

inline vec load_first(const float* p, int n) { return _mm256_maskload_ps(p, detail::first_mask(n)); }
inline void store_first(float* p, vec v, int n) { _mm256_maskstore_ps(p, detail::first_mask(n), v); }

// One step of a block transpose: with rows lo = r[i] and hi = r[i + b], element j of the
// new lo is (j & b) ? hi[j - b] : lo[j] and of the new hi (j & b) ? hi[j] : lo[j + b].
template <int b>
inline void swap_blocks(vec& lo, vec& hi) {
    vec new_lo, new_hi;
    if constexpr (b == 4) {
        new_lo = _mm256_permute2f128_ps(lo, hi, 0x20);
        new_hi = _mm256_permute2f128_ps(lo, hi, 0x31);
    } else if constexpr (b == 2) {
        new_lo = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(1, 0, 1, 0));
        new_hi = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 2, 3, 2));
    } else {
        new_lo = _mm256_blend_ps(lo, _mm256_moveldup_ps(hi), 0xaa);
        new_hi = _mm256_blend_ps(_mm256_movehdup_ps(lo), hi, 0xaa);
    }
    lo = new_lo, hi = new_hi;
}

// The 2 lanes floats lo, hi (in that order) split into their even and odd elements.
inline void deinterleave(vec lo, vec hi, vec& even, vec& odd) {
    // Within 128-bit halves first (0 2 8 10 | 4 6 12 14), then the middle quarters swapped.
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0))), 0xd8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))), 0xd8));
}

// The inverse: a0 b0 a1 b1 ... as the 2 lanes floats first, second.
inline void interleave(vec a, vec b, vec& first, vec& second) {
    const vec lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);  // a0 b0 a1 b1 | a4 b4 a5 b5, ...
    first = _mm256_permute2f128_ps(lo, hi, 0x20);
    second = _mm256_permute2f128_ps(lo, hi, 0x31);
}

#endif

// Asks for the cache line holding p ahead of its use.
inline void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

// Transposes the lanes x lanes block held in r (row i in r[i]).
inline void transpose(vec* r) {
    auto step = [r]<int b>() {
        for (int i = 0; i < lanes; ++i)
            if (!(i & b)) swap_blocks<b>(r[i], r[i + b]);
    };
    if constexpr (lanes == 16) step.template operator()<8>();
    step.template operator()<4>();
    step.template operator()<2>();
    step.template operator()<1>();
}

// dst[0, n) = src[0, n) with full vectors and one masked tail.
inline void copy(float* dst, const float* src, int64_t n) {
    int64_t i = 0;
    for (; i + lanes <= n; i += lanes) store(dst + i, load(src + i));
    if (i < n) store_first(dst + i, load_first(src + i, int(n - i)), int(n - i));
}

}  // namespace mpnet::cpu::simd

#endif
