// MPFourier: a fixed random Fourier embedding of a scalar per sample.
#pragma once
#include <numbers>

#include "mpnet/core/rng.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/nn/param.hpp"

namespace mpnet::nn {

template <Scalar T, Backend B>
class MPFourier {
public:
    using TensorT = Tensor<T, B>;

    // freqs = 2 pi N(0, 1) bandwidth, phases = 2 pi U(0, 1), from the stream `seed`.
    MPFourier(int64_t channels, uint64_t seed, double bandwidth = 1) {
        std::vector<T> f(static_cast<std::size_t>(channels)), p(static_cast<std::size_t>(channels));
        for (size_t i = 0; i < f.size(); ++i) {
            f[i] = T(2 * std::numbers::pi * rng::normal(seed, 2 * i) * bandwidth);
            p[i] = T(2 * std::numbers::pi * rng::uniform(seed, 2 * i + 1));
        }
        freqs = TensorT::from_host(Shape{channels}, f);
        phases = TensorT::from_host(Shape{channels}, p);
    }

    [[nodiscard]] int64_t channels() const { return freqs.numel(); }

    TensorT forward(const TensorT& x) const {
        TensorT y(Shape{x.numel(), channels()});
        mp_fourier_forward(B{}, x, freqs, phases, y);
        return y;
    }
    TensorT backward(const TensorT& x, const TensorT& dy) const {
        TensorT dx(x.shape());
        mp_fourier_backward(B{}, x, freqs, phases, dy, dx);
        return dx;
    }

    // The buffers are saved and loaded with the weights but never trained.
    template <class F>
    void visit_buffers(const std::string& prefix, F&& f) {
        f(join_name(prefix, "freqs"), freqs);
        f(join_name(prefix, "phases"), phases);
    }

    TensorT freqs, phases;
};

}  // namespace mpnet::nn
