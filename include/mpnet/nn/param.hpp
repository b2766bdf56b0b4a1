// A trainable tensor and its gradient, registered under the reference state_dict name.
#pragma once
#include <string>

#include "mpnet/core/tensor.hpp"

namespace mpnet::nn {

template <Scalar T, Backend B>
struct Param {
    Tensor<T, B> value;
    Tensor<T, B> grad;  // accumulated by backward; zeroed by the optimizer's caller

    Param() = default;
    explicit Param(Shape shape) : value(shape) {}

    // The gradient backward accumulates into. A network's arena binds every gradient to its
    // flat buffer; a network built for inference has none, and only a backward pass through
    // it (a test's) allocates one, zero, here.
    Tensor<T, B>& grad_to_accumulate() {
        if (grad.data() == nullptr || grad.shape() != value.shape()) grad = Tensor<T, B>::zeros(value.shape());
        return grad;
    }
};

// Modules implement visit(prefix, f), calling f(name, Param&) for each parameter, so that
// saving, loading, the optimizer and the EMA all walk one list of names.
inline std::string join_name(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
}

}  // namespace mpnet::nn
