// FeatureKernels<B>: the forward-only kernels of the feature networks (metrics/), beside the
// training kernels of backend/kernels.hpp. Each backend's umbrella header asserts it, and
// the networks require it, so a missing kernel is named where it is missing.
#pragma once
#include <concepts>
#include <cstdint>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/ops/feature_checks.hpp"

namespace mpnet {

template <class B>
concept FeatureKernels = Backend<B> && requires(B b, const Tensor<float, B>& x, const Tensor<float, B>& w,
                                               const Tensor<float, B>& bias, Tensor<float, B>& y, ops::Conv2dStep step,
                                               ops::PoolStep pool, ops::CopyWindow window, double eps, float alpha) {
    { conv2d_bias_forward(b, x, w, bias, step, true, y) } -> std::same_as<void>;   // conv + bias (+ ReLU)
    { pool2d_forward(b, x, pool, y) } -> std::same_as<void>;
    { copy_window(b, x, window, y) } -> std::same_as<void>;
    { layer_norm_channels_forward(b, x, eps, w, bias, y) } -> std::same_as<void>;
    { gelu_forward(b, x, y) } -> std::same_as<void>;
    { softmax_attention_forward(b, x, x, x, y) } -> std::same_as<void>;  // the autoencoder's
    { fill(b, y, alpha) } -> std::same_as<void>;
    { axpby(b, alpha, x, alpha, y) } -> std::same_as<void>;
};

}  // namespace mpnet
