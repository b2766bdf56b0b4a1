// The argument checks of the autoencoder's kernels (backend/*/autoencoder_ops), one function
// per kernel, called by every backend before its loops.
#pragma once
#include <cstdint>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

namespace mpnet::ops {

// group_norm_forward: x and y [N, C, H, W] alike, C a multiple of groups, gamma and beta [C].
inline void check_group_norm(const Shape& x, int64_t groups, const Shape& gamma, const Shape& beta, const Shape& y) {
    check(x.rank() == 4 && y == x && groups > 0 && x[1] % groups == 0 && gamma.numel() == x[1] &&
              beta.numel() == x[1],
          "group_norm_forward: x ", x, ", y ", y, ", ", groups, " groups, gamma ", gamma, ", beta ", beta);
}

// add_channel_bias: y [N, C, H, W], bias [C].
inline void check_channel_bias(const Shape& bias, const Shape& y) {
    check(y.rank() == 4 && bias.numel() == y[1], "add_channel_bias: y ", y, ", bias ", bias);
}

// upsample_nearest2x (small -> large) and take_odd_pixels (large -> small): [N, C, H, W] and
// [N, C, 2H, 2W].
inline void check_doubled(const Shape& small, const Shape& large, const char* what) {
    check(small.rank() == 4 && large.rank() == 4 && large[0] == small[0] && large[1] == small[1] &&
              large[2] == 2 * small[2] && large[3] == 2 * small[3],
          what, ": ", small, " and ", large, " are not [N, C, H, W] and [N, C, 2H, 2W]");
}

// softmax_attention_forward: q, k, v and y [N, C, H, W] alike.
inline void check_softmax_attention(const Shape& q, const Shape& k, const Shape& v, const Shape& y) {
    check(q.rank() == 4 && k == q && v == q && y == q, "softmax_attention_forward: q ", q, ", k ", k, ", v ", v,
          ", y ", y);
}

}  // namespace mpnet::ops
