// The EDM sampler (Karras et al. 2022, Algorithm 2) as EDM2 uses it: Heun's second-order
// method on the probability-flow ODE dx/dt = (x - D(x; t)) / t, optional churn, and
// guidance by a second denoiser.
//
//   x_0 = noise t_0;  per step:  t^ = t_i (1 + gamma),  x^ = x_i + sqrt(t^2 - t_i^2) S_noise eps
//   d = (x^ - D(x^; t^)) / t^,   x' = x^ + (t_{i+1} - t^) d
//   unless last (or euler):  d' = (x' - D(x'; t_{i+1})) / t_{i+1},  x' = x^ + (t_{i+1} - t^) (d + d') / 2
//   guided D = g + w (net - g), at noise levels inside the guidance interval only
//
// Every random number belongs to one image: the churn noise of image i at step k is
// normal(substream(substream(seed_i, churn), k), j), so an image never depends on which
// batch it was sampled in, nor on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "mpnet/sample/denoiser.hpp"
#include "mpnet/sample/time_steps.hpp"

namespace mpnet::sample {

// The substream purpose of churn noise (distinct from seeds.hpp's label_purpose).
inline constexpr uint64_t churn_purpose = 0x636875726eULL;  // "churn"

struct SampleProgress {
    int step;            // steps finished so far, 1..steps
    int steps;
    int64_t nfe;         // network evaluations per image so far
};

template <Scalar T, Backend B>
struct SampleResult {
    Tensor<T, B> images;  // [N, C, H, W], in the data's range (about [-1, 1] for pixels)
    int64_t nfe = 0;      // network evaluations per image (edm_nfe(options, guided))
};

struct SampleHooks {
    std::span<const uint64_t> churn_seeds;                      // one per image; needed when churn is on
    std::function<void(const SampleProgress&)> on_step;        // after every step
};

namespace detail {

// D(x; t), guided where a guide is given and the options guide at t: g + w (net - g),
// formed in `out`.
template <Scalar T, Backend B, class Net, class Guide>
void guided_denoise(Net& net, Guide* guide, const SamplerOptions& o, const Tensor<T, B>& x, double t,
                    const Tensor<T, B>& labels, Tensor<T, B>& out, int64_t& nfe) {
    const double w = o.guidance;
    const Tensor<T, B> d_net = net(x, t, labels);
    ++nfe;
    check_same_shape(d_net, x, "edm_sample: denoiser output");
    if (guide == nullptr || !o.guided_at(t)) {
        out.copy_from(d_net);
        return;
    }
    const Tensor<T, B> d_guide = (*guide)(x, t, labels);
    ++nfe;
    check_same_shape(d_guide, x, "edm_sample: guide output");
    out.copy_from(d_guide);
    axpby(B{}, T(w), d_net, T(1 - w), out);
}

// d = (x - D) / t
template <Scalar T, Backend B>
void slope(const Tensor<T, B>& x, const Tensor<T, B>& denoised, double t, Tensor<T, B>& d) {
    d.copy_from(denoised);
    axpby(B{}, T(1 / t), x, T(-1 / t), d);
}

// x += sqrt(t_hat^2 - t^2) S_noise eps, with eps drawn per image from its own stream.
template <Scalar T, Backend B>
void add_churn_noise(Tensor<T, B>& x, Tensor<T, B>& eps, std::span<const uint64_t> seeds, int step, double scale) {
    for (int64_t i = 0; i < x.size(0); ++i) {
        Tensor<T, B> row = eps.slice(i, i + 1);
        fill_normal(B{}, row, rng::substream(rng::substream(seeds[static_cast<std::size_t>(i)], churn_purpose),
                                             static_cast<uint64_t>(step)), 0);
    }
    axpby(B{}, T(scale), eps, T(1), x);
}

}  // namespace detail

// Samples images from `noise` [N, C, H, W] (unit variance) with labels [N, label_dim] or an
// empty tensor; the guide, if not null, gets the same labels (an unconditional one ignores
// them). The work buffers are allocated once here; the denoisers allocate their outputs.
template <Scalar T, Backend B, class Net, class Guide>
    requires Denoiser<Net, T, B> && Denoiser<Guide, T, B>
SampleResult<T, B> edm_sample(Net& net, Guide* guide, const Tensor<T, B>& noise, const Tensor<T, B>& labels,
                              const SamplerOptions& o, const SampleHooks& hooks = {}) {
    const std::vector<double> t = edm_time_steps(o);
    check(noise.rank() == 4, "edm_sample: noise must be [N, C, H, W], got ", noise.shape());
    const bool churn = o.S_churn > 0;
    check(!churn || hooks.churn_seeds.size() == static_cast<std::size_t>(noise.size(0)), "edm_sample: churn needs ",
          noise.size(0), " per-image seeds, got ", hooks.churn_seeds.size());

    Tensor<T, B> x(noise.shape()), x_next(noise.shape()), denoised(noise.shape()), d(noise.shape()),
        d_prime(noise.shape()), eps;
    if (churn) eps = Tensor<T, B>(noise.shape());
    affine(B{}, noise, T(t[0]), T(0), x);
    int64_t nfe = 0;  // every call evaluates each image once
    for (int i = 0; i < o.steps; ++i) {
        const double t_cur = t[static_cast<std::size_t>(i)], t_next = t[static_cast<std::size_t>(i) + 1];
        const double gamma = o.churn_gamma(t_cur);
        const double t_hat = t_cur + gamma * t_cur;
        if (gamma > 0)
            detail::add_churn_noise(x, eps, hooks.churn_seeds, i, std::sqrt(t_hat * t_hat - t_cur * t_cur) * o.S_noise);

        // Euler step from t_hat to t_next.
        detail::guided_denoise(net, guide, o, x, t_hat, labels, denoised, nfe);
        detail::slope(x, denoised, t_hat, d);
        x_next.copy_from(x);
        axpby(B{}, T(t_next - t_hat), d, T(1), x_next);

        // Second-order correction with the slope at t_next (t_N = 0 has none).
        if (!o.euler && i < o.steps - 1) {
            detail::guided_denoise(net, guide, o, x_next, t_next, labels, denoised, nfe);
            detail::slope(x_next, denoised, t_next, d_prime);
            axpby(B{}, T(0.5), d_prime, T(0.5), d);
            x_next.copy_from(x);
            axpby(B{}, T(t_next - t_hat), d, T(1), x_next);
        }
        std::swap(x, x_next);
        if (hooks.on_step) hooks.on_step(SampleProgress{i + 1, o.steps, nfe});
    }
    return {x, nfe};
}

// Unguided: edm_sample(net, nullptr, noise, labels, options).
template <Scalar T, Backend B, class Net>
    requires Denoiser<Net, T, B>
SampleResult<T, B> edm_sample(Net& net, std::nullptr_t, const Tensor<T, B>& noise, const Tensor<T, B>& labels,
                              const SamplerOptions& o, const SampleHooks& hooks = {}) {
    return edm_sample(net, static_cast<Net*>(nullptr), noise, labels, o, hooks);
}

}  // namespace mpnet::sample
