// Matrix products on cuBLAS for the CUDA kernels, stated in row-major terms.
//
// The cuBLAS handle is the calling thread's context's (context.cuh): bound to its stream,
// with a workspace of its own, so that cuBLAS never allocates during a step. cuBLAS is
// column-major: a
// row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T, which is how every
// call below is issued.
#pragma once
#include <cublas_v2.h>

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "mpnet/backend/cuda/backend.cuh"

namespace mpnet::cuda::detail {

inline cublasComputeType_t compute_type(Math m) {
    switch (m) {
        case Math::tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
        case Math::fp16: return CUBLAS_COMPUTE_32F_FAST_16F;
        case Math::bf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
        case Math::fp32: break;
    }
    return CUBLAS_COMPUTE_32F;
}

// A row-major matrix operand of a (strided batched) product: element (r, c) of batch b is
// ptr[b * stride + r * ld + c], read transposed when trans is set.
template <class T>
struct Operand {
    const T* ptr;
    int64_t ld;
    int64_t stride = 0;
    bool trans = false;
};

// The cuBLAS type of an element, and the compute type of its products: float16 and bfloat16
// operands (16-bit activations) multiply on tensor cores and accumulate in float32.
template <Element T>
constexpr cudaDataType_t data_type() {
    if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
    else if constexpr (std::is_same_v<T, float16>) return CUDA_R_16F;
    else if constexpr (std::is_same_v<T, bfloat16>) return CUDA_R_16BF;
    else return CUDA_R_32F;
}
template <Element T>
cublasComputeType_t compute_type_of() {
    if constexpr (std::is_same_v<T, double>) return CUBLAS_COMPUTE_64F;
    else if constexpr (HalfStorage<T>) return CUBLAS_COMPUTE_32F;
    else return compute_type(CudaBackend::math());
}

// How an error message names the product's operands: their 16-bit format, or the math mode.
template <Element T>
std::string operands_label() {
    if constexpr (HalfStorage<T>) return std::string(T::name) + " operands";
    else return std::string(to_string(CudaBackend::math()));
}

// C[b] = alpha op(A[b]) op(B[b]) + beta C[b] for b < batch, all row-major; C[b] is m x n,
// op(A) m x k, op(B) k x n. `what` names the caller for error messages.
template <Element T>
void gemm(int64_t m, int64_t n, int64_t k, double alpha, Operand<T> a, Operand<T> b, double beta, T* c, int64_t ldc,
          int64_t stride_c, int64_t batch, const char* what) {
    constexpr auto int_max = int64_t{std::numeric_limits<int>::max()};
    check(m <= int_max && n <= int_max && k <= int_max && batch <= int_max && a.ld <= int_max && b.ld <= int_max &&
              ldc <= int_max,
          what, ": matrix product ", m, "x", n, "x", k, " (batch ", batch, ") exceeds cuBLAS's 32-bit extents");
    if (m == 0 || n == 0 || batch == 0) return;
    // alpha and beta have the compute type's precision: double for fp64, else float.
    using Scale = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const cudaDataType_t type = data_type<T>();
    const cublasComputeType_t compute = compute_type_of<T>();
    const Scale alpha_t = Scale(alpha), beta_t = Scale(beta);
    cublas_check(cublasGemmStridedBatchedEx(Context::current().blas(), b.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            a.trans ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &alpha_t,
                                            b.ptr, type, int(b.ld), b.stride, a.ptr, type, int(a.ld), a.stride,
                                            &beta_t, c, type, int(ldc), stride_c, int(batch), compute,
                                            CUBLAS_GEMM_DEFAULT),
                 what, ": matrix product ", m, "x", n, "x", k, " (batch ", batch, ", ",
                 operands_label<T>(), ")");
}

}  // namespace mpnet::cuda::detail
