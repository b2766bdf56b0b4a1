// What the sampler drives: any callable D(x, sigma, labels) -> denoised x, and the adapter
// that makes an EDM2 network (Precond) one.
#pragma once
#include <concepts>
#include <memory>
#include <vector>

#include "mpnet/nn/precond.hpp"

namespace mpnet::sample {

// A denoiser estimates the clean images from x [N, C, H, W] at one noise level sigma shared
// by the batch; labels are [N, label_dim] or an empty tensor (unconditional).
template <class D, class T, class B>
concept Denoiser = Scalar<T> && Backend<B> &&
    requires(D& d, const Tensor<T, B>& x, double sigma, const Tensor<T, B>& labels) {
        { d(x, sigma, labels) } -> std::convertible_to<Tensor<T, B>>;
    };

// Evaluates a Precond network in inference mode. The network takes one sigma per image, so
// the shared sigma is broadcast into a small buffer (by a fill kernel, so the call never
// waits for the host) that is only reallocated when the batch size changes. Every evaluation
// allocates the same activations, so they follow one memory plan. A is the network's
// activation storage: the sampler's tensors are T whatever it is.
template <Scalar T, Backend B, Element A = T>
class NetworkDenoiser {
public:
    explicit NetworkDenoiser(nn::Precond<T, B, A>& net) : net_(&net) {}

    Tensor<T, B> operator()(const Tensor<T, B>& x, double sigma, const Tensor<T, B>& labels) {
        const int64_t n = x.size(0);
        if (sigma_.empty() || sigma_.numel() != n) sigma_ = Tensor<T, B>(Shape{n});
        fill(B{}, sigma_, T(sigma));  // a kernel: nothing waits for the host
        const typename MemoryPlanFor<B>::Region region(*memory_plan_);
        return net_->forward(x, sigma_, labels, nn::ForwardMode{}, false).D;
    }

private:
    nn::Precond<T, B, A>* net_;
    Tensor<T, B> sigma_;
    std::unique_ptr<MemoryPlanFor<B>> memory_plan_ = std::make_unique<MemoryPlanFor<B>>();
};

}  // namespace mpnet::sample
