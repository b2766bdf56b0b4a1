// The backward of float convolutions with at most four output channels: the U-Net's output
// layer (one channel for Fashion-MNIST, three for pixels, four for latents).
//
// The blocked products of conv_gemm.hpp tile output channels by the register tile, so one
// output channel fills one row of it, and in the weight gradient one lane in sixteen of each
// vector: that backward ran at 5 % of the FMA peak. Here each plane is summed directly: the
// padded plane shifted by each tap and added in one long loop that the compiler vectorises.
// The input gradient is split over (image, input channel) planes, the weight gradient over
// input channels, each summed in a fixed order: the same bits for any thread count. (The
// forward stays with the blocked product, which this scheme did not beat: one load and store
// of the sums per tap.) The plane loops are marked `omp simd`: their operands lie in separate
// buffers, which the compiler's own overlap test cannot always tell (the padded planes and
// the sums share a thread's scratch).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/ops/conv_geometry.hpp"

namespace mpnet::cpu::conv {

using ops::ConvGeometry;

inline constexpr int64_t narrow_max_cout = 4;

namespace narrow {

// The planes are handled flat, with a row stride of pw = w + 2p: a tap (ky, kx) is then one
// offset ky pw + kx, and each tap's work one loop over all h pw positions, long enough to
// vectorise well. The 2p extra columns of each output row are computed and dropped.

// Plane src [h, w] in dst with rows of pw, `above` zero rows before it and zeros around it:
// (above + h + p) pw + 2p floats.
inline void pad_plane(const float* src, int64_t h, int64_t w, int64_t p, int64_t above, float* dst) {
    const int64_t pw = w + 2 * p;
    std::fill(dst, dst + (above + h + p) * pw + 2 * p, 0.0f);
    for (int64_t i = 0; i < h; ++i) std::copy(src + i * w, src + (i + 1) * w, dst + (above + i) * pw + p);
}
inline int64_t padded_floats(int64_t h, int64_t w, int64_t p) { return (h + 2 * p) * (w + 2 * p) + 2 * p; }

// dx[n, ci, i, j] = sum over co, ky, kx of weight[co, ci, ky, kx] dy[n, co, i - ky + p, j - kx + p].
template <int CO>
void narrow_input_gradient(const ConvGeometry& g, const float* dy, const float* weight, float* dx) {
    const int64_t h = g.h, w = g.w, k = g.k, p = k / 2, cin = g.cin, pw = w + 2 * p, hw = h * w, flat = h * pw;
    const int64_t padded = padded_floats(h, w, p);
#pragma omp parallel for schedule(static)
    for (int64_t plane_index = 0; plane_index < g.n * cin; ++plane_index) {
        const int64_t n = plane_index / cin, ci = plane_index % cin;
        // Image n's dy planes, padded again for each input channel: CO planes against the
        // 9 CO passes that follow. dy pixel (o, m) sits at flat (o + p) pw + m + p, so output
        // pixel (i, j) of tap (ky, kx) reads flat i pw + j + (2p - ky) pw + 2p - kx.
        float* scratch = cpu::detail::thread_scratch<float>(std::size_t(CO * padded + flat));
        float* __restrict grads = scratch;
        float* __restrict out = scratch + CO * padded;
        for (int co = 0; co < CO; ++co) pad_plane(dy + (n * CO + co) * hw, h, w, p, p, grads + co * padded);
        std::fill(out, out + flat, 0.0f);
        for (int co = 0; co < CO; ++co)
            for (int64_t ky = 0; ky < k; ++ky)
                for (int64_t kx = 0; kx < k; ++kx) {
                    const float wv = weight[((co * cin + ci) * k + ky) * k + kx];
                    const float* __restrict in = grads + co * padded + (2 * p - ky) * pw + 2 * p - kx;
#pragma omp simd
                    for (int64_t t = 0; t < flat; ++t) out[t] += wv * in[t];
                }
        for (int64_t i = 0; i < h; ++i) std::copy(out + i * pw, out + i * pw + w, dx + plane_index * hw + i * w);
    }
}

// dweight[co, ci, ky, kx] = sum over n, i, j of dy[n, co, i, j] x[n, ci, i + ky - p, j + kx - p]:
// dy laid out with rows of pw and zeros in the extra columns (which so add nothing), each
// tap one vectorised sum per image, added into double image by image.
template <int CO>
void narrow_weight_gradient(const ConvGeometry& g, const float* x, const float* dy, float* dweight) {
    const int64_t h = g.h, w = g.w, k = g.k, p = k / 2, cin = g.cin, pw = w + 2 * p, hw = h * w, flat = h * pw;
    const int64_t padded = padded_floats(h, w, p);
#pragma omp parallel for schedule(static)
    for (int64_t ci = 0; ci < cin; ++ci) {
        float* scratch = cpu::detail::thread_scratch<float>(std::size_t(padded + CO * padded));
        float* __restrict plane = scratch;
        float* __restrict grads = scratch + padded;
        std::vector<double> total(std::size_t(CO * k * k), 0.0);
        for (int64_t n = 0; n < g.n; ++n) {
            pad_plane(x + (n * cin + ci) * hw, h, w, p, p, plane);
            // dy (i, j) at flat i pw + j: no rows above, its padding columns after each row.
            for (int co = 0; co < CO; ++co) pad_plane(dy + (n * CO + co) * hw, h, w, p, 0, grads + co * padded);
            for (int co = 0; co < CO; ++co)
                for (int64_t ky = 0; ky < k; ++ky)
                    for (int64_t kx = 0; kx < k; ++kx) {
                        const float* __restrict grad = grads + co * padded + p;
                        const float* __restrict in = plane + ky * pw + kx;
                        float sum = 0;
#pragma omp simd reduction(+ : sum)
                        for (int64_t t = 0; t < flat; ++t) sum += grad[t] * in[t];
                        total[std::size_t((co * k + ky) * k + kx)] += sum;
                    }
        }
        for (int co = 0; co < CO; ++co)
            for (int64_t t = 0; t < k * k; ++t)
                dweight[(co * cin + ci) * k * k + t] = float(total[std::size_t(co * k * k + t)]);
    }
}

template <template <int> class F, class... Args>
void with_cout(int64_t cout, Args&&... args) {
    switch (cout) {
        case 1: return F<1>{}(args...);
        case 2: return F<2>{}(args...);
        case 3: return F<3>{}(args...);
        default: return F<4>{}(args...);
    }
}
template <int CO>
struct InputGradient {
    void operator()(const ConvGeometry& g, const float* dy, const float* wt, float* dx) const {
        narrow_input_gradient<CO>(g, dy, wt, dx);
    }
};
template <int CO>
struct WeightGradient {
    void operator()(const ConvGeometry& g, const float* x, const float* dy, float* dw) const {
        narrow_weight_gradient<CO>(g, x, dy, dw);
    }
};

}  // namespace narrow

// dweight (overwritten), and dx when not null.
inline void narrow_backward(const ConvGeometry& g, const float* x, const float* weight, const float* dy, float* dx,
                            float* dweight) {
    narrow::with_cout<narrow::WeightGradient>(g.cout, g, x, dy, dweight);
    if (dx) narrow::with_cout<narrow::InputGradient>(g.cout, g, dy, weight, dx);
}

}  // namespace mpnet::cpu::conv
