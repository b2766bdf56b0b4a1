// Float code over tensors stored in 16 bits (float16, bfloat16) on the CPU, a chunk at a
// time: each chunk of the inputs is widened into float buffers that stay in L1, the float
// code runs on them, and each result is rounded to nearest even once as it is stored. A
// kernel written this way reads and writes 16-bit memory once, where widening whole
// tensors first (the generic kernels of backend/half_storage.hpp) makes two more passes
// over memory per op, and it computes the same float values: every element goes through
// the same float code, lane for lane, as it would on a float copy of the tensors.
//
// Widening is exact; narrowing gives core/float16.hpp's bits, eight elements at a time
// where the compiler targets AVX2 (fp16 through F16C's conversions, bf16 by integer
// rounding).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/core/concepts.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mpnet::cpu {

// What a kernel computes an element of T in: float for the 16-bit formats.
template <Element T>
using Compute = std::conditional_t<HalfStorage<T>, float, T>;

// An element as the kernel computes with it, and a computed value as T stores it.
template <Element T>
inline Compute<T> widened(T v) {
    if constexpr (HalfStorage<T>) return v.to_float();
    else return v;
}
template <Element T>
inline T stored(Compute<T> v) {
    if constexpr (HalfStorage<T>) return T::from_float(v);
    else return v;
}

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

// x[0, n) widened into y, and x[0, n) rounded into y.
template <HalfStorage A>
inline void widen(const A* x, float* y, int64_t n) {
    for (int64_t i = widen8(x, y, n); i < n; ++i) y[i] = x[i].to_float();
}
template <HalfStorage A>
inline void narrow(const float* x, A* y, int64_t n) {
    for (int64_t i = narrow8(x, y, n); i < n; ++i) y[i] = A::from_float(x[i]);
}

// Per-thread room for widened slabs or planes (a kernel that works on a whole image or
// channel at a time), apart from thread_scratch, which the float code itself may use.
inline float* widened_buffer(std::size_t n) {
    thread_local std::vector<float> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

// Floats per chunk: a multiple of every packet width, so the chunks split no packet, and
// small enough that the buffers of a four-input kernel (10 KiB) stay in L1.
inline constexpr int64_t float_chunk = 512;

template <HalfStorage A, class Body, std::size_t... K, class... In>
void through_float(int64_t n, A* out, Body& body, std::index_sequence<K...>, const In*... in) {
    alignas(64) float args[sizeof...(In) + 1][float_chunk];  // + 1: never an array of size 0
    alignas(64) float result[float_chunk];
    for (int64_t b = 0; b < n; b += float_chunk) {
        const int64_t m = std::min(float_chunk, n - b);
        (widen(in + b, args[K], m), ...);
        body(m, result, static_cast<const float*>(args[K])...);
        narrow(result, out + b, m);
    }
}

// body(m, result, inputs...) on float copies of consecutive chunks of the inputs, each
// chunk's float results rounded into `out`. out may be one of the inputs: a chunk is read
// whole before it is written.
template <HalfStorage A, class Body, class... In>
void through_float(int64_t n, A* out, Body&& body, const In*... in) {
    static_assert((std::same_as<In, A> && ...), "through_float: every input is stored as the output is");
    through_float(n, out, body, std::index_sequence_for<In...>{}, in...);
}

// out[i] = f(in[i]...) for i < n, with f on scalars of Compute<T>: a plain loop, which the
// compiler vectorises, on the elements or on their widened chunks.
template <Element T, class F, class... In>
void map(int64_t n, T* out, F&& f, const In*... in) {
    if constexpr (HalfStorage<T>) {
        through_float(
            n, out,
            [&](int64_t m, float* r, const auto*... x) {
                for (int64_t i = 0; i < m; ++i) r[i] = f(x[i]...);
            },
            in...);
    } else {
        for (int64_t i = 0; i < n; ++i) out[i] = f(in[i]...);
    }
}

}  // namespace detail

namespace packet {

// transform on 16-bit storage: f maps float packets of each widened chunk, and each result
// is rounded once. The same packets, lane for lane and in the same order (padded tail
// included), as transform on a float copy, so a stateful f (a running sum) sees the same.
template <HalfStorage A, class F, class... In>
void transform(int64_t n, A* out, F&& f, const In*... in) {
    detail::through_float(
        n, out, [&](int64_t m, float* r, const auto*... x) { transform(m, r, f, x...); }, in...);
}

}  // namespace packet

}  // namespace mpnet::cpu
