// Everything of the CUDA backend: memory, streams and every primitive kernel. Include it
// from .cu translation units only.
#pragma once
#include "mpnet/backend/cuda/adam.cuh"
#include "mpnet/backend/cuda/attention.cuh"
#include "mpnet/backend/cuda/autoencoder_ops.cuh"
#include "mpnet/backend/cuda/backend.cuh"
#include "mpnet/backend/cuda/conv.cuh"
#include "mpnet/backend/cuda/convert.cuh"
#include "mpnet/backend/cuda/elementwise.cuh"
#include "mpnet/backend/cuda/feature_ops.cuh"
#include "mpnet/backend/cuda/fourier.cuh"
#include "mpnet/backend/cuda/loss.cuh"
#include "mpnet/backend/cuda/normalize.cuh"
#include "mpnet/backend/cuda/resample.cuh"
#include "mpnet/backend/feature_kernels.hpp"
#include "mpnet/backend/half_storage.hpp"
#include "mpnet/backend/kernels.hpp"

static_assert(mpnet::Kernels<mpnet::CudaBackend>, "a CUDA kernel of backend/kernels.hpp is missing or has another signature");
static_assert(mpnet::FeatureKernels<mpnet::CudaBackend>, "a CUDA kernel of backend/feature_kernels.hpp is missing or has another signature");
static_assert(mpnet::HalfKernels<mpnet::CudaBackend>, "a CUDA kernel on 16-bit activations (backend/half_storage.hpp) is missing");
