// The multi-head cosine attention core of an EDM2 Block on the CPU.
//
// Input qkv [N, 3C, HW] with channel (head c_h + ch) 3 + s (s = q, k, v); each of q, k, v
// is pixel-normalised over its c_h channels; per head
//   S = q^T k / sqrt(c_h),  P = softmax_rows(S),  y = v P^T   (y: [c_h, HW]).
// Backward:
//   dv = dy P,  dP = dy^T v,  dS = P o (dP - rowsum(P o dP)),  dq = k dS^T / sqrt(c_h),
//   dk = q dS / sqrt(c_h), then through the pixel normalisation of each.
#pragma once
#include <array>
#include <cmath>
#include <type_traits>
#include <utility>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/eigen.hpp"
#include "mpnet/backend/cpu/half_chunks.hpp"
#include "mpnet/backend/cpu/packet_math.hpp"
#include "mpnet/ops/attention_geometry.hpp"
#include "mpnet/ops/constants.hpp"

namespace mpnet::cpu {

namespace detail {

// One (image, head) job reads the head's 3c x hw block of qkv (channel ch 3 + s of the block
// is channel ch of q, k or v) and keeps its normalised q, k, v (c x hw each), their scales
// (hw each) and the softmax weights (hw x hw).
template <class T>
struct HeadState {
    T *q, *k, *v, *q_scale, *k_scale, *v_scale, *weights;
};

// Gathers channel set s of a head's block and normalises each pixel over the c channels.
template <class T>
void gather_normalized(const T* block, int64_t c, int64_t hw, int s, T* out, T* scale) {
    for (int64_t i = 0; i < hw; ++i) {
        double ss = 0;
        for (int64_t ch = 0; ch < c; ++ch) {
            const double v = block[(ch * 3 + s) * hw + i];
            ss += v * v;
        }
        scale[i] = T(ops::normalize_eps + std::sqrt(ss / double(c)));
    }
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t i = 0; i < hw; ++i) out[ch * hw + i] = block[(ch * 3 + s) * hw + i] / scale[i];
}

// Backward of gather_normalized: writes channel set s of a head's block of dqkv from the
// gradient dn of the normalised values n (c x hw) and their scales.
template <class T>
void scatter_normalized_grad(const T* n, const T* scale, const T* dn, int64_t c, int64_t hw, int s, T* dblock) {
    for (int64_t i = 0; i < hw; ++i) {
        double dot = 0;
        for (int64_t ch = 0; ch < c; ++ch) dot += double(dn[ch * hw + i]) * n[ch * hw + i];
        const double sc = scale[i], rms = sc - ops::normalize_eps;
        const double coef = rms > 0 ? dot / (double(c) * rms) : 0.0;
        for (int64_t ch = 0; ch < c; ++ch)
            dblock[(ch * 3 + s) * hw + i] = T(dn[ch * hw + i] / sc - n[ch * hw + i] * coef);
    }
}

// One head forward: the state from its block of qkv, and its c x hw output y.
template <class T>
void head_forward(const T* block, int64_t c, int64_t hw, const HeadState<T>& h, T* y) {
    gather_normalized(block, c, hw, 0, h.q, h.q_scale);
    gather_normalized(block, c, hw, 1, h.k, h.k_scale);
    gather_normalized(block, c, hw, 2, h.v, h.v_scale);
    MatMap<T> P(h.weights, hw, hw);
    P.noalias() = ConstMatMap<T>(h.q, c, hw).transpose() * ConstMatMap<T>(h.k, c, hw);
    P *= T(1 / std::sqrt(double(c)));
    // The softmax's exponentials and sums through packet_math.hpp, so that, unlike Eigen's
    // own loops, which peel to an aligned address, they do not depend on where P lies.
    using namespace Eigen::internal;
    for (int64_t i = 0; i < hw; ++i) {
        T* row = h.weights + i * hw;
        const auto shift = pset1<packet::Packet<T>>(P.row(i).maxCoeff());
        packet::transform(hw, row, [&](auto x) { return pexp(psub(x, shift)); }, row);
        P.row(i) /= packet::sum(row, hw);
    }
    MatMap<T>(y, c, hw).noalias() = ConstMatMap<T>(h.v, c, hw) * P.transpose();
}

// One head backward: its block of dqkv from the saved state and its c x hw slice of dy.
template <class T>
void head_backward(const HeadState<const T>& h, const T* dy, int64_t c, int64_t hw, T* dblock) {
    const ConstMatMap<T> q(h.q, c, hw), k(h.k, c, hw), v(h.v, c, hw), P(h.weights, hw, hw), dY(dy, c, hw);
    T* scratch = thread_scratch<T>(size_t(hw * hw + 3 * c * hw));
    MatMap<T> dS(scratch, hw, hw), dq(scratch + hw * hw, c, hw), dk(scratch + hw * hw + c * hw, c, hw),
        dv(scratch + hw * hw + 2 * c * hw, c, hw);
    dv.noalias() = dY * P;
    dS.noalias() = dY.transpose() * v;  // dP
    for (int64_t i = 0; i < hw; ++i) {
        const T r = packet::dot(h.weights + i * hw, dS.data() + i * hw, hw);  // wherever the rows lie
        dS.row(i) = (P.row(i).array() * (dS.row(i).array() - r)).matrix();
    }
    dS *= T(1 / std::sqrt(double(c)));
    dq.noalias() = k * dS.transpose();
    dk.noalias() = q * dS;
    scatter_normalized_grad(h.q, h.q_scale, dq.data(), c, hw, 0, dblock);
    scatter_normalized_grad(h.k, h.k_scale, dk.data(), c, hw, 1, dblock);
    scatter_normalized_grad(h.v, h.v_scale, dv.data(), c, hw, 2, dblock);
}

// The saved state of job `slot` in a context's tensors.
template <class T, class Context>
HeadState<T> head_state(Context& s, int64_t slot, int64_t c, int64_t hw) {
    return {s.q.data() + slot * c * hw,  s.k.data() + slot * c * hw,  s.v.data() + slot * c * hw,
            s.q_scale.data() + slot * hw, s.k_scale.data() + slot * hw, s.v_scale.data() + slot * hw,
            s.weights.data() + slot * hw * hw};
}

// A context's tensors for `jobs` heads, of element type T.
template <Element T>
void allocate(ops::AttentionContext<T, CpuBackend>& s, int64_t jobs, int64_t c, int64_t hw) {
    s.q = CpuTensor<T>(Shape{jobs, c, hw}), s.k = CpuTensor<T>(Shape{jobs, c, hw}), s.v = CpuTensor<T>(Shape{jobs, c, hw});
    s.q_scale = CpuTensor<T>(Shape{jobs, hw}), s.k_scale = CpuTensor<T>(Shape{jobs, hw}),
    s.v_scale = CpuTensor<T>(Shape{jobs, hw});
    s.weights = CpuTensor<T>(Shape{jobs, hw, hw});
}

// The state's parts with their sizes, in the context's order: q, k, v, their scales, the
// weights. float_state lays a float state out in the same order, end to end.
template <class T>
std::array<std::pair<T*, int64_t>, 7> parts(const HeadState<T>& h, int64_t c, int64_t hw) {
    return {{{h.q, c * hw}, {h.k, c * hw}, {h.v, c * hw}, {h.q_scale, hw}, {h.k_scale, hw}, {h.v_scale, hw},
             {h.weights, hw * hw}}};
}

// A read-only view of a state (a function, not a conversion operator, which nvcc warns about).
template <class T>
HeadState<const T> as_const(const HeadState<T>& h) {
    return {h.q, h.k, h.v, h.q_scale, h.k_scale, h.v_scale, h.weights};
}

// A head's float state in one buffer (widened_buffer's), from `at` on.
inline HeadState<float> float_state(float* at, int64_t c, int64_t hw) {
    return {at, at + c * hw, at + 2 * c * hw, at + 3 * c * hw, at + 3 * c * hw + hw, at + 3 * c * hw + 2 * hw,
            at + 3 * c * hw + 3 * hw};
}
inline int64_t state_floats(int64_t c, int64_t hw) { return 3 * c * hw + 3 * hw + hw * hw; }

}  // namespace detail

template <Scalar T>
void attention_forward(CpuBackend, const CpuTensor<T>& qkv, int64_t heads, CpuTensor<T>& y,
                       std::type_identity_t<ops::AttentionContext<T, CpuBackend>>* ctx) {
    const auto g = ops::attention_geometry(qkv.shape(), heads, y.shape(), "attention_forward");
    const int64_t C = g.channels, hw = g.hw, c = g.head_channels;
    ops::AttentionContext<T, CpuBackend> local;
    auto& s = ctx ? *ctx : local;
    const bool keep = ctx != nullptr;
    // Inference keeps one head's buffers per thread instead of every head's.
    detail::allocate(s, keep ? g.jobs() : omp_get_max_threads(), c, hw);
#pragma omp parallel for schedule(static) if (g.jobs() > 1)
    for (int64_t job = 0; job < g.jobs(); ++job) {
        const int64_t b = job / heads, head = job % heads, slot = keep ? job : omp_get_thread_num();
        detail::head_forward(qkv.data() + (b * 3 * C + head * 3 * c) * hw, c, hw,
                             detail::head_state<T>(s, slot, c, hw), y.data() + (b * C + head * c) * hw);
    }
}

template <Scalar T>
void attention_backward(CpuBackend, const ops::AttentionContext<T, CpuBackend>& s, int64_t heads,
                        const CpuTensor<T>& dy, CpuTensor<T>& dqkv) {
    const auto g = ops::attention_backward_geometry(s, heads, dy.shape(), dqkv.shape());
    const int64_t C = g.channels, hw = g.hw, c = g.head_channels;
#pragma omp parallel for schedule(static) if (g.jobs() > 1)
    for (int64_t job = 0; job < g.jobs(); ++job) {
        const int64_t b = job / heads, head = job % heads;
        detail::head_backward(detail::head_state<const T>(s, job, c, hw), dy.data() + (b * C + head * c) * hw, c, hw,
                              dqkv.data() + (b * 3 * C + head * 3 * c) * hw);
    }
}

// ---- on 16-bit activations ----------------------------------------------------------------
// Each job widens its head's block of qkv (or its saved state and its slice of dy) into a
// per-thread float buffer, runs the float head code on it and rounds what it stores once:
// backend/half_storage.hpp's results (the output from the float state, the state then
// rounded into the context), without float copies of the whole tensors and context.

template <HalfStorage A>
void attention_forward(CpuBackend, const CpuTensor<A>& qkv, int64_t heads, CpuTensor<A>& y,
                       std::type_identity_t<ops::AttentionContext<A, CpuBackend>>* ctx) {
    const auto g = ops::attention_geometry(qkv.shape(), heads, y.shape(), "attention_forward");
    const int64_t C = g.channels, hw = g.hw, c = g.head_channels, state = detail::state_floats(c, hw);
    if (ctx) detail::allocate(*ctx, g.jobs(), c, hw);
#pragma omp parallel for schedule(static) if (g.jobs() > 1)
    for (int64_t job = 0; job < g.jobs(); ++job) {
        const int64_t b = job / heads, head = job % heads;
        float* block = detail::widened_buffer(size_t(4 * c * hw + state));
        float* out = block + 3 * c * hw;
        const detail::HeadState<float> h = detail::float_state(out + c * hw, c, hw);
        detail::widen(qkv.data() + (b * 3 * C + head * 3 * c) * hw, block, 3 * c * hw);
        detail::head_forward(block, c, hw, h, out);
        detail::narrow(out, y.data() + (b * C + head * c) * hw, c * hw);
        if (ctx) {
            const float* from = h.q;
            for (const auto& [to, count] : detail::parts(detail::head_state<A>(*ctx, job, c, hw), c, hw)) {
                detail::narrow(from, to, count);
                from += count;
            }
        }
    }
}

template <HalfStorage A>
void attention_backward(CpuBackend, const ops::AttentionContext<A, CpuBackend>& s, int64_t heads,
                        const CpuTensor<A>& dy, CpuTensor<A>& dqkv) {
    const auto g = ops::attention_backward_geometry(s, heads, dy.shape(), dqkv.shape());
    const int64_t C = g.channels, hw = g.hw, c = g.head_channels, state = detail::state_floats(c, hw);
#pragma omp parallel for schedule(static) if (g.jobs() > 1)
    for (int64_t job = 0; job < g.jobs(); ++job) {
        const int64_t b = job / heads, head = job % heads;
        float* h = detail::widened_buffer(size_t(state + 4 * c * hw));
        float *dyf = h + state, *dblock = dyf + c * hw;
        float* to = h;
        for (const auto& [from, count] : detail::parts(detail::head_state<const A>(s, job, c, hw), c, hw)) {
            detail::widen(from, to, count);
            to += count;
        }
        detail::widen(dy.data() + (b * C + head * c) * hw, dyf, c * hw);
        detail::head_backward<float>(detail::as_const(detail::float_state(h, c, hw)), dyf, c, hw, dblock);
        detail::narrow(dblock, dqkv.data() + (b * 3 * C + head * 3 * c) * hw, 3 * c * hw);
    }
}

}  // namespace mpnet::cpu
