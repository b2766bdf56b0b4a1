// Everything of the CPU backend: memory and every primitive kernel.
#pragma once
#include "mpnet/backend/cpu/adam.hpp"
#include "mpnet/backend/cpu/attention.hpp"
#include "mpnet/backend/cpu/autoencoder_ops.hpp"
#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/conv.hpp"
#include "mpnet/backend/cpu/convert.hpp"
#include "mpnet/backend/cpu/elementwise.hpp"
#include "mpnet/backend/cpu/feature_ops.hpp"
#include "mpnet/backend/cpu/fourier.hpp"
#include "mpnet/backend/cpu/loss.hpp"
#include "mpnet/backend/cpu/normalize.hpp"
#include "mpnet/backend/cpu/resample.hpp"
#include "mpnet/backend/feature_kernels.hpp"
#include "mpnet/backend/half_storage.hpp"
#include "mpnet/backend/kernels.hpp"

static_assert(mpnet::Kernels<mpnet::CpuBackend>, "a CPU kernel of backend/kernels.hpp is missing or has another signature");
static_assert(mpnet::FeatureKernels<mpnet::CpuBackend>, "a CPU kernel of backend/feature_kernels.hpp is missing or has another signature");
static_assert(mpnet::HalfKernels<mpnet::CpuBackend>, "a CPU kernel on 16-bit activations (backend/half_storage.hpp) is missing");
