// Conversion between float and the 16-bit storage formats on the CPU: widening is exact,
// narrowing rounds to nearest even (core/float16.hpp), NaN stays NaN; the SIMD conversions
// are half_chunks.hpp's.
#pragma once
#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"
#include "mpnet/backend/cpu/half_chunks.hpp"

namespace mpnet::cpu {

template <HalfStorage A>
void convert(CpuBackend, const CpuTensor<A>& x, CpuTensor<float>& y) {
    check_same_shape(x, y, "convert");
    const A* px = x.data();
    float* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) { detail::widen(px + b, py + b, n); });
}

template <HalfStorage A>
void convert(CpuBackend, const CpuTensor<float>& x, CpuTensor<A>& y) {
    check_same_shape(x, y, "convert");
    const float* px = x.data();
    A* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) { detail::narrow(px + b, py + b, n); });
}

}  // namespace mpnet::cpu
