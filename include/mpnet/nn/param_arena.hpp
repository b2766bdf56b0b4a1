// ParamArena: every parameter's value and gradient as views into two flat buffers.
//
// One buffer per role lets whole-network operations be one call: the optimizer's fused
// step, zeroing or all-reducing the gradients, an EMA update, a checkpoint copy. Each
// parameter starts on a 64-byte boundary (the zero padding between them is never written
// by a layer), so kernels see the alignment a tensor of its own would have.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/nn/param.hpp"

namespace mpnet::nn {

// Where each named tensor lies in a flat buffer: offsets in elements, in visit order.
struct ParamLayout {
    struct Entry {
        std::string name;
        Shape shape;
        int64_t offset;
    };
    std::vector<Entry> entries;
    int64_t numel = 0;  // padding included

    static constexpr std::size_t alignment = 64;

    template <Scalar T>
    void append(std::string name, Shape shape) {
        static_assert(alignment % sizeof(T) == 0, "ParamLayout: element size must divide the alignment");
        constexpr int64_t step = alignment / sizeof(T);
        const int64_t offset = (numel + step - 1) / step * step;
        entries.push_back({std::move(name), shape, offset});
        numel = offset + shape.numel();
    }

    // The named views of a flat buffer laid out as this.
    template <Scalar T, Backend B>
    [[nodiscard]] std::vector<std::pair<std::string, Tensor<T, B>>> views(const Tensor<T, B>& flat) const {
        check(flat.numel() == numel, "ParamLayout::views: a buffer of ", flat.numel(), " elements, the layout has ", numel);
        std::vector<std::pair<std::string, Tensor<T, B>>> out;
        for (const auto& e : entries) out.emplace_back(e.name, view(flat, e));
        return out;
    }
    template <Scalar T, Backend B>
    [[nodiscard]] static Tensor<T, B> view(const Tensor<T, B>& flat, const Entry& e) {
        return flat.slice(e.offset, e.offset + e.shape.numel()).view(e.shape);
    }
};

template <Scalar T, Backend B>
class ParamArena {
public:
    using TensorT = Tensor<T, B>;

    ParamArena() = default;

    // Copies every parameter net.visit() reaches into the arena and rebinds its value and,
    // `with_grads`, its gradient (zero) to views of it; the tensors each parameter held before
    // are released. Without gradients (inference) the arena holds the values alone.
    template <class Net>
    explicit ParamArena(Net& net, bool with_grads = true) {
        net.visit([&](const std::string& name, Param<T, B>& p) { layout_.append<T>(name, p.value.shape()); });
        values_ = TensorT::zeros(Shape{layout_.numel});
        if (with_grads) grads_ = TensorT::zeros(Shape{layout_.numel});
        std::size_t i = 0;
        net.visit([&](const std::string&, Param<T, B>& p) {
            const auto& e = layout_.entries[i++];
            TensorT value = ParamLayout::view(values_, e);
            value.copy_from(p.value);
            p.value = value;
            if (!with_grads) {
                p.grad = TensorT{};
                return;
            }
            TensorT grad = ParamLayout::view(grads_, e);
            if (p.grad.data() != nullptr) grad.copy_from(p.grad);
            p.grad = grad;
        });
        // The per-parameter tensors just released have sizes nothing else asks for: a caching
        // allocator would hold them (twice the network) for the rest of the run.
        release_cached_memory<B>();
    }

    [[nodiscard]] const ParamLayout& layout() const { return layout_; }
    [[nodiscard]] TensorT& values() { return values_; }
    [[nodiscard]] const TensorT& values() const { return values_; }
    [[nodiscard]] TensorT& grads() { return grads_; }
    [[nodiscard]] const TensorT& grads() const { return grads_; }

private:
    ParamLayout layout_;
    TensorT values_, grads_;  // [layout_.numel]
};

// The arena a network keeps (arena()), or for a network without one, such as a test's few
// parameters, a new arena that binds them.
template <Scalar T, Backend B, class Net>
ParamArena<T, B> arena_of(Net& net) {
    if constexpr (requires { net.arena(); }) return net.arena();
    else return ParamArena<T, B>(net);
}

}  // namespace mpnet::nn
