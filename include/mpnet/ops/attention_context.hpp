// What the attention core's forward keeps for its backward, on any backend.
#pragma once
#include "mpnet/core/tensor.hpp"

namespace mpnet::ops {

template <Element T, Backend B>
struct AttentionContext {
    Tensor<T, B> q, k, v;           // pixel-normalised, [N, heads, c, HW]
    Tensor<T, B> q_scale, k_scale, v_scale;  // eps + rms per pixel, [N, heads, HW]
    Tensor<T, B> weights;           // softmax, [N, heads, HW, HW]
};

}  // namespace mpnet::ops
