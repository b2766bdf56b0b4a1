// The argument checks of the kernels whose operands differ in shape, one function per
// kernel, called by every backend before its loops. (Kernels whose operands share one
// shape call check_same_shape from core/tensor.hpp.) Each returns the extents the kernel
// needs, so that backends do not read them off the shapes a second time.
#pragma once
#include <cstdint>

#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

namespace mpnet::ops {

// mp_cat along channels: a [N, Ca, ...] and b [N, Cb, ...] into y [N, Ca + Cb, ...].
struct CatExtents {
    int64_t n, ca, cb, inner;
};

inline CatExtents cat_extents(const Shape& a, const Shape& b, const Shape& y, const char* what) {
    check(a.rank() >= 2 && b.rank() >= 2 && y.rank() >= 2, what, ": shapes ", a, " + ", b, " -> ", y,
          " have no channel dimension");
    const CatExtents e{a[0], a[1], b[1], a.numel_from(2)};
    check(b[0] == e.n && b.numel_from(2) == e.inner && y[1] == e.ca + e.cb &&
              y.numel() == e.n * (e.ca + e.cb) * e.inner,
          what, ": shapes ", a, " + ", b, " -> ", y);
    return e;
}

// mp_sum_backward: each wanted gradient (not empty) has dy's size.
template <class Tn>
void check_mp_sum_backward(const Tn& dy, const Tn& da, const Tn& db) {
    check((da.empty() || da.numel() == dy.numel()) && (db.empty() || db.numel() == dy.numel()),
          "mp_sum_backward: gradient ", dy.shape(), " into ", da.shape(), " and ", db.shape());
}

// append_ones_channel: x [N, C, ...] into y [N, C + 1, ...].
inline void check_append_ones(const Shape& x, const Shape& y) {
    check(x.rank() >= 2 && y.rank() >= 2 && y[1] == x[1] + 1 && y.numel() == x[0] * (x.numel_from(1) + x.numel_from(2)),
          "append_ones_channel: ", x, " -> ", y);
}

// mp_fourier: x [N] (any shape of N elements), freqs and phases [C], y [N, C]; returns C.
inline int64_t fourier_channels(const Shape& x, const Shape& freqs, const Shape& phases, const Shape& y,
                                const char* what) {
    const int64_t c = freqs.numel();
    check(phases.numel() == c && y.numel() == x.numel() * c, what, ": ", y, " for ", x.numel(), " inputs x ", c,
          " channels");
    return c;
}

// edm2_loss: D, y and dD [N, ...]; sigma, logvar and dlogvar one per image.
struct LossExtents {
    int64_t n, inner;
};

inline LossExtents loss_extents(const Shape& D, const Shape& y, const Shape& sigma, const Shape& logvar,
                                const Shape& dD, const Shape& dlogvar) {
    check(D.rank() >= 1 && D == y && D == dD, "edm2_loss: denoised ", D, ", target ", y, ", gradient ", dD);
    const LossExtents e{D[0], D.numel_from(1)};
    check(sigma.numel() == e.n && logvar.numel() == e.n && dlogvar.numel() == e.n, "edm2_loss: sigma ", sigma,
          ", logvar ", logvar, " and dlogvar ", dlogvar, " for ", D);
    return e;
}

// adam_step: gradient and moments as large as the parameter, three step coefficients.
inline void check_adam(const Shape& param, const Shape& grad, const Shape& m, const Shape& v,
                       const Shape& coefficients) {
    check(grad.numel() == param.numel() && m.numel() == param.numel() && v.numel() == param.numel(),
          "adam_step: parameter ", param, ", gradient ", grad, ", moments ", m, " and ", v);
    check(coefficients.numel() == 3, "adam_step: the step coefficients must be [lr, 1 - beta1^t, 1 - beta2^t], got ",
          coefficients);
}

}  // namespace mpnet::ops
