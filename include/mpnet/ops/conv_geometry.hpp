// The shapes of the matrix-product layers, read off their arguments and checked once for
// every backend: a convolution (odd k x k, stride 1, zero "same" padding) and a linear layer.
#pragma once
#include <cstdint>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

namespace mpnet::ops {

struct ConvGeometry {
    int64_t n, cin, cout, h, w, k;
    [[nodiscard]] int64_t hw() const { return h * w; }
    [[nodiscard]] int64_t patch() const { return cin * k * k; }
};

// x [N, Cin, H, W] convolved with weight [Cout, Cin, k, k] gives y [N, Cout, H, W].
inline ConvGeometry conv_geometry(const Shape& x, const Shape& weight, const Shape& y, const char* what) {
    check(x.rank() == 4 && weight.rank() == 4 && y.rank() == 4, what, ": expects NCHW tensors and a 4-D weight, got ",
          x, ", ", weight, ", ", y);
    const ConvGeometry g{x[0], x[1], weight[0], x[2], x[3], weight[2]};
    check(weight[1] == g.cin && weight[3] == g.k && g.k % 2 == 1, what, ": weight ", weight, " for input ", x);
    check(y == Shape{g.n, g.cout, g.h, g.w}, what, ": output ", y, " for input ", x, " and weight ", weight);
    return g;
}

// The gradients of conv2d_backward have the shapes of what they differentiate; dx may be
// an empty tensor (rank 0) when the input gradient is not wanted.
inline ConvGeometry conv_backward_geometry(const Shape& x, const Shape& weight, const Shape& dy, const Shape& dx,
                                           const Shape& dweight) {
    const ConvGeometry g = conv_geometry(x, weight, dy, "conv2d_backward");
    check(dweight == weight && (dx.rank() == 0 || dx == x), "conv2d_backward: gradients ", dx, ", ", dweight,
          " for input ", x, " and weight ", weight);
    return g;
}

// y [N, out] = x [N, in] weight [out, in]^T; x and y may carry more dimensions of the same size.
struct LinearExtents {
    int64_t n, in, out;
};

inline LinearExtents linear_extents(const Shape& x, const Shape& weight, const Shape& y) {
    check(x.rank() >= 1 && weight.rank() == 2, "linear_forward: input ", x, ", weight ", weight, ", output ", y);
    const LinearExtents e{x[0], weight[1], weight[0]};
    check(x.numel() == e.n * e.in && y.numel() == e.n * e.out, "linear_forward: input ", x, ", weight ", weight,
          ", output ", y);
    return e;
}

// dx may be an empty tensor (rank 0) when the input gradient is not wanted.
inline LinearExtents linear_backward_extents(const Shape& x, const Shape& weight, const Shape& dy, const Shape& dx,
                                             const Shape& dweight) {
    check(x.rank() >= 1 && weight.rank() == 2, "linear_backward: input ", x, ", weight ", weight);
    const LinearExtents e{x[0], weight[1], weight[0]};
    check(x.numel() == e.n * e.in && dy.numel() == e.n * e.out && dweight.numel() == e.out * e.in &&
              (dx.rank() == 0 || dx.numel() == e.n * e.in),
          "linear_backward: input ", x, ", weight ", weight, ", gradient ", dy);
    return e;
}

}  // namespace mpnet::ops
