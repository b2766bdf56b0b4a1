// Conversion between float and the 16-bit storage formats on the GPU, one pass each way:
// the hardware's round-to-nearest-even conversions, as the CPU's (backend/cpu/convert.hpp).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "mpnet/backend/cuda/launch.cuh"

namespace mpnet::cuda {

namespace detail {

__device__ inline float widen_word(float16 v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ inline float widen_word(bfloat16 v) { return __bfloat162float(__ushort_as_bfloat16(v.bits)); }
__device__ inline void round_into(float f, float16& out) { out.bits = __half_as_ushort(__float2half_rn(f)); }
__device__ inline void round_into(float f, bfloat16& out) { out.bits = __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// What a kernel computes in, and its loads and stores: an element of 16-bit storage is
// widened to float on load and rounded on store; float and double are read and written as
// they are, so a kernel written with ld and st computes in T what it always did.
template <class T>
struct ComputeOf {
    using type = T;
};
template <HalfStorage T>
struct ComputeOf<T> {
    using type = float;
};
template <class T>
using Compute = typename ComputeOf<T>::type;

template <class T>
__device__ inline Compute<T> ld(T v) {
    if constexpr (HalfStorage<T>) return widen_word(v);
    else return v;
}
template <class T>
__device__ inline void st(T& out, Compute<T> v) {
    if constexpr (HalfStorage<T>) round_into(v, out);
    else out = v;
}

template <class A>
struct Widen {
    const A* x;
    float* y;
    __device__ void operator()(int64_t i) const { y[i] = widen_word(x[i]); }
};
template <class A>
struct Narrow {
    const float* x;
    A* y;
    __device__ void operator()(int64_t i) const { round_into(x[i], y[i]); }
};

}  // namespace detail

template <HalfStorage A>
void convert(CudaBackend, const CudaTensor<A>& x, CudaTensor<float>& y) {
    check_same_shape(x, y, "convert");
    detail::for_each(x.numel(), detail::Widen<A>{x.data(), y.data()}, "convert from ", A::name, " on ", x.shape());
}

template <HalfStorage A>
void convert(CudaBackend, const CudaTensor<float>& x, CudaTensor<A>& y) {
    check_same_shape(x, y, "convert");
    detail::for_each(x.numel(), detail::Narrow<A>{x.data(), y.data()}, "convert to ", A::name, " on ", x.shape());
}

}  // namespace mpnet::cuda
