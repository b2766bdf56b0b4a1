// The extents of the attention core, read off its arguments and checked once for every
// backend: qkv [N, 3C, H, W] in `heads` heads of c = C / heads channels, y [N, C, H, W].
#pragma once
#include <cstdint>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"
#include "mpnet/ops/attention_context.hpp"

namespace mpnet::ops {

struct AttentionGeometry {
    int64_t n, channels, head_channels, hw, heads;
    [[nodiscard]] int64_t jobs() const { return n * heads; }  // one per (image, head)
};

// Forward from qkv; y is the attended output, qkv with a third of the channels.
inline AttentionGeometry attention_geometry(const Shape& qkv, int64_t heads, const Shape& y, const char* what) {
    check(qkv.rank() >= 2 && heads > 0 && qkv[1] % (3 * heads) == 0 && y.numel() * 3 == qkv.numel(), what, ": qkv ",
          qkv, " with ", heads, " heads -> ", y);
    const int64_t channels = qkv[1] / 3;
    return {qkv[0], channels, channels / heads, qkv.numel_from(2), heads};
}

// Backward: dy into dqkv, with what forward saved for exactly these extents.
template <Element T, Backend B>
AttentionGeometry attention_backward_geometry(const AttentionContext<T, B>& saved, int64_t heads, const Shape& dy,
                                              const Shape& dqkv) {
    const AttentionGeometry g = attention_geometry(dqkv, heads, dy, "attention_backward");
    check(saved.weights.numel() == g.jobs() * g.hw * g.hw && saved.q.numel() == g.jobs() * g.head_channels * g.hw,
          "attention_backward: forward was run without saving its context");
    return g;
}

}  // namespace mpnet::ops
