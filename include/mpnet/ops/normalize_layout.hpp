// The part of normalize every backend shares: the argument checks and the groups the
// tensor splits into (ops::reduction_layout).
#pragma once
#include "mpnet/core/error.hpp"
#include "mpnet/ops/reduce_dims.hpp"

namespace mpnet::ops {

// normalize_forward: y has x's shape.
inline ReductionLayout normalize_forward_layout(const Shape& x, const Shape& y, Dims dims) {
    check(x == y, "normalize_forward: shapes ", x, " and ", y, " differ");
    return reduction_layout(x, dims);
}

// normalize_backward: dy and dx have x's shape, and forward saved one scale per group.
inline ReductionLayout normalize_backward_layout(const Shape& x, const Shape& dy, const Shape& dx, int64_t scales,
                                                 Dims dims) {
    check(x == dy && x == dx, "normalize_backward: input ", x, ", gradient ", dy, " into ", dx);
    ReductionLayout L = reduction_layout(x, dims);
    check(scales == L.groups(), "normalize_backward: ", scales, " saved scales for ", L.groups(), " groups of ", x);
    return L;
}

}  // namespace mpnet::ops
