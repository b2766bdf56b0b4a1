// The argument checks of the per-channel scaling kernels (scale_channels and
// modulated_silu, y[n, c, ...] = f(x[n, c, ...] s[n, c])), shared by every backend: the
// tensor is N C planes of `inner` elements, each with one scale.
#pragma once
#include <cstdint>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

namespace mpnet::ops {

struct ChannelPlanes {
    int64_t planes, inner;
};

// Forward: x [N, C, ...] and one scale per plane into y of x's size.
inline ChannelPlanes channel_planes(const Shape& x, const Shape& s, const Shape& y, const char* what) {
    check(x.rank() >= 2, what, ": input ", x, " has no channel dimension");
    const ChannelPlanes p{x[0] * x[1], x.numel_from(2)};
    check(s.numel() == p.planes && y.numel() == x.numel(), what, ": scale ", s, " for ", x, " -> ", y);
    return p;
}

// Backward: dy and dx of x's size, ds of s's.
inline ChannelPlanes channel_planes(const Shape& x, const Shape& s, const Shape& dy, const Shape& dx,
                                    const Shape& ds, const char* what) {
    const ChannelPlanes p = channel_planes(x, s, dy, what);
    check(dx.numel() == x.numel() && ds.numel() == p.planes, what, ": gradients ", dx, " and ", ds, " for ", x);
    return p;
}

}  // namespace mpnet::ops
