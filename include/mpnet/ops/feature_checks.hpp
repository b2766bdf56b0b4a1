// The shapes of the feature networks' kernels (backend/*/feature_ops), checked once for every
// backend: a general convolution with bias, pooling, window copies, layer normalisation
// over channels and GELU. These are the layers of Inception-v3 and of a vision transformer
// that the EDM2 networks do not have; they run forward only.
#pragma once
#include <cstdint>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

namespace mpnet::ops {

// Stride and zero padding of a convolution whose kernel size comes from its weight.
struct Conv2dStep {
    int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
};

// An output extent: (in + 2 pad - k) / stride + 1, or 0 when the kernel does not fit.
inline int64_t output_extent(int64_t in, int64_t k, int64_t stride, int64_t pad) {
    return in + 2 * pad < k ? 0 : (in + 2 * pad - k) / stride + 1;
}

struct Conv2dExtents {
    int64_t n, cin, cout, h, w, kh, kw, ho, wo;
};

// x [N, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout], y [N, Cout, Ho, Wo].
inline Conv2dExtents conv2d_bias_extents(const Shape& x, const Shape& weight, const Shape& bias, const Conv2dStep& s,
                                         const Shape& y) {
    check(x.rank() == 4 && weight.rank() == 4 && y.rank() == 4 && weight[1] == x[1] && bias.numel() == weight[0] &&
              s.stride_h > 0 && s.stride_w > 0 && s.pad_h >= 0 && s.pad_w >= 0,
          "conv2d_bias_forward: input ", x, ", weight ", weight, ", bias ", bias, ", stride ", s.stride_h, "x",
          s.stride_w, ", padding ", s.pad_h, "x", s.pad_w);
    const Conv2dExtents e{x[0], x[1], weight[0], x[2], x[3], weight[2], weight[3],
                          output_extent(x[2], weight[2], s.stride_h, s.pad_h),
                          output_extent(x[3], weight[3], s.stride_w, s.pad_w)};
    check(y == Shape{e.n, e.cout, e.ho, e.wo}, "conv2d_bias_forward: output ", y, " for input ", x, " and weight ",
          weight, ", expected [", e.n, ", ", e.cout, ", ", e.ho, ", ", e.wo, "]");
    return e;
}

// Pooling over size x size windows. `average_valid` divides by the number of window pixels
// inside the image (torch's count_include_pad=False, TensorFlow's SAME average pooling).
enum class Pooling { max, average_valid };
struct PoolStep {
    int64_t size = 3, stride = 1, pad = 0;
    Pooling mode = Pooling::max;
};

inline void check_pool(const Shape& x, const PoolStep& p, const Shape& y) {
    check(x.rank() == 4 && p.size > 0 && p.stride > 0 && p.pad >= 0 && 2 * p.pad <= p.size, "pool2d_forward: input ",
          x, ", window ", p.size, ", stride ", p.stride, ", padding ", p.pad);
    const Shape expected{x[0], x[1], output_extent(x[2], p.size, p.stride, p.pad),
                         output_extent(x[3], p.size, p.stride, p.pad)};
    check(y == expected, "pool2d_forward: output ", y, " for input ", x, ", expected ", expected);
}

// copy_window: a block of channels and positions (the spatial extents flattened) copied
// between x [N, Cx, ...] and y [N, Cy, ...]: a branch into a concatenation, patch tokens
// behind the class token, the class token out of a sequence.
struct CopyWindow {
    int64_t x_channel = 0, x_position = 0, y_channel = 0, y_position = 0, channels = 0, positions = 0;
};

inline void check_copy_window(const Shape& x, const CopyWindow& c, const Shape& y) {
    const int64_t tx = x.rank() >= 2 && x[0] * x[1] != 0 ? x.numel() / (x[0] * x[1]) : 0;
    const int64_t ty = y.rank() >= 2 && y[0] * y[1] != 0 ? y.numel() / (y[0] * y[1]) : 0;
    check(x.rank() >= 2 && y.rank() >= 2 && x[0] == y[0] && c.channels >= 0 && c.positions >= 0 && c.x_channel >= 0 &&
              c.y_channel >= 0 && c.x_position >= 0 && c.y_position >= 0 && c.x_channel + c.channels <= x[1] &&
              c.y_channel + c.channels <= y[1] && c.x_position + c.positions <= tx && c.y_position + c.positions <= ty,
          "copy_window: ", c.channels, " channels x ", c.positions, " positions from channel ", c.x_channel,
          ", position ", c.x_position, " of ", x, " to channel ", c.y_channel, ", position ", c.y_position, " of ", y);
}

// The positions per channel of a tensor [N, C, ...].
inline int64_t positions_of(const Shape& s) { return s[0] * s[1] != 0 ? s.numel() / (s[0] * s[1]) : 0; }

// layer_norm_channels_forward: x and y [N, C, T...] alike, gamma and beta [C].
inline void check_layer_norm_channels(const Shape& x, const Shape& gamma, const Shape& beta, const Shape& y) {
    check(x.rank() >= 2 && y == x && gamma.numel() == x[1] && beta.numel() == x[1],
          "layer_norm_channels_forward: x ", x, ", gamma ", gamma, ", beta ", beta, ", y ", y);
}

}  // namespace mpnet::ops
