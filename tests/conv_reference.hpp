// What the convolution kernel tests share: a shape, random inputs, and the three products
// of a "same" convolution summed directly in double, the reference every kernel is held to.
#pragma once
#include "golden.hpp"

namespace mpnet::test::conv {

struct Case {
    int64_t n, cin, cout, h, w, k;
};

inline CpuTensor<float> random_float(Shape s, uint64_t seed) {
    CpuTensor<float> t(s);
    fill_normal(CpuBackend{}, t, seed, 0);
    return t;
}

// The three products of a "same" convolution, summed directly in double.
struct Reference {
    CpuTensor<double> y, dx, dw;
};

inline Reference direct_convolution(const Case& c, const CpuTensor<float>& x, const CpuTensor<float>& w,
                                   const CpuTensor<float>& dy) {
    Reference r{CpuTensor<double>::zeros({c.n, c.cout, c.h, c.w}), CpuTensor<double>::zeros(x.shape()),
                CpuTensor<double>::zeros(w.shape())};
    const int64_t p = c.k / 2;
    auto at = [](const auto& t, int64_t a, int64_t b, int64_t y, int64_t x) {
        return ((a * t.size(1) + b) * t.size(2) + y) * t.size(3) + x;
    };
    for (int64_t n = 0; n < c.n; ++n)
        for (int64_t co = 0; co < c.cout; ++co)
            for (int64_t ci = 0; ci < c.cin; ++ci)
                for (int64_t ky = 0; ky < c.k; ++ky)
                    for (int64_t kx = 0; kx < c.k; ++kx) {
                        const double wv = w.data()[at(w, co, ci, ky, kx)];
                        for (int64_t oy = 0; oy < c.h; ++oy)
                            for (int64_t ox = 0; ox < c.w; ++ox) {
                                const int64_t iy = oy + ky - p, ix = ox + kx - p;
                                if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
                                const double xv = x.data()[at(x, n, ci, iy, ix)];
                                const double g = dy.data()[at(dy, n, co, oy, ox)];
                                r.y.data()[at(r.y, n, co, oy, ox)] += wv * xv;
                                r.dx.data()[at(r.dx, n, ci, iy, ix)] += wv * g;
                                r.dw.data()[at(r.dw, co, ci, ky, kx)] += xv * g;
                            }
                    }
    return r;
}

}  // namespace mpnet::test::conv
