// Conversion between float and the 16-bit storage formats on the CPU: widening is exact,
// narrowing rounds to nearest even (core/float16.hpp), NaN stays NaN.
#pragma once
#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"

namespace mpnet::cpu {

template <HalfStorage A>
void convert(CpuBackend, const CpuTensor<A>& x, CpuTensor<float>& y) {
    check_same_shape(x, y, "convert");
    const A* px = x.data();
    float* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        for (int64_t i = b; i < b + n; ++i) py[i] = px[i].to_float();
    });
}

template <HalfStorage A>
void convert(CpuBackend, const CpuTensor<float>& x, CpuTensor<A>& y) {
    check_same_shape(x, y, "convert");
    const float* px = x.data();
    A* py = y.data();
    detail::for_each_block(x.numel(), [&](int64_t b, int64_t n) {
        for (int64_t i = b; i < b + n; ++i) py[i] = A::from_float(px[i]);
    });
}

}  // namespace mpnet::cpu
