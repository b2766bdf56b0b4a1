// Tensor: a dense, contiguous, row-major array in one backend's memory.
//
// Copies share storage (like a handle); clone() makes a deep copy. Views and batch
// slices share storage too, which is what the layers need for cheap reshapes and for
// splitting a batch into gradient-accumulation rounds.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/shape.hpp"

namespace mpnet {

template <Element T, Backend B>
class Tensor {
public:
    using value_type = T;
    using backend_type = B;

    Tensor() = default;

    // Uninitialised storage of the given shape.
    explicit Tensor(Shape shape) : shape_(shape) {
        const auto n = static_cast<std::size_t>(shape.numel());
        if (n == 0) return;
        const std::size_t bytes = n * sizeof(T);
        T* p = static_cast<T*>(B::allocate(bytes));
        storage_ = std::shared_ptr<T>(p, [bytes](T* q) { B::deallocate(q, bytes); });
        data_ = p;
    }

    static Tensor zeros(Shape shape) {
        Tensor t(shape);
        t.set_zero();
        return t;
    }
    static Tensor from_host(Shape shape, std::span<const T> values) {
        Tensor t(shape);
        t.copy_from_host(values);
        return t;
    }

    [[nodiscard]] const Shape& shape() const { return shape_; }
    [[nodiscard]] int64_t size(int dim) const { return shape_[dim]; }
    [[nodiscard]] int rank() const { return shape_.rank(); }
    [[nodiscard]] int64_t numel() const { return shape_.numel(); }
    [[nodiscard]] std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }
    [[nodiscard]] bool empty() const { return data_ == nullptr; }
    [[nodiscard]] T* data() { return data_; }
    [[nodiscard]] const T* data() const { return data_; }

    // The same storage under another shape with as many elements.
    [[nodiscard]] Tensor view(Shape shape) const {
        check(shape.numel() == numel(), "Tensor::view: ", shape_, " cannot be viewed as ", shape);
        Tensor t = *this;
        t.shape_ = shape;
        return t;
    }
    // Rows [begin, end) of the first dimension, sharing storage.
    [[nodiscard]] Tensor slice(int64_t begin, int64_t end) const {
        check(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "Tensor::slice: [", begin, ",", end,
              ") out of ", shape_);
        Tensor t = *this;
        t.shape_ = shape_.with(0, end - begin);
        t.data_ = data_ + begin * shape_.numel_from(1);
        return t;
    }
    [[nodiscard]] Tensor clone() const {
        Tensor t(shape_);
        if (numel()) B::copy(t.data(), data(), bytes());
        return t;
    }
    void copy_from(const Tensor& src) {
        check(src.shape() == shape_, "Tensor::copy_from: shape ", src.shape(), " into ", shape_);
        if (numel()) B::copy(data(), src.data(), bytes());
    }
    // Overwrites every element with host values, as many as the tensor holds.
    void copy_from_host(std::span<const T> values) {
        check(values.size() == static_cast<std::size_t>(numel()), "Tensor::copy_from_host: ", values.size(),
              " values for shape ", shape_);
        if (numel()) B::copy_from_host(data(), values.data(), bytes());
    }
    void set_zero() {
        if (numel()) B::zero(data(), bytes());
    }
    [[nodiscard]] std::vector<T> to_host() const {
        std::vector<T> out(static_cast<std::size_t>(numel()));
        if (numel()) B::copy_to_host(out.data(), data(), bytes());
        return out;
    }

private:
    Shape shape_;
    std::shared_ptr<T> storage_;
    T* data_ = nullptr;
};

// Requires two tensors to have the same shape, naming the operation when they do not.
template <class TA, class TB>
void check_same_shape(const TA& a, const TB& b, const char* what) {
    check(a.shape() == b.shape(), what, ": shapes ", a.shape(), " and ", b.shape(), " differ");
}

// Requires two tensors to have as many elements (for kernels that read both flat).
template <class TA, class TB>
void check_same_size(const TA& a, const TB& b, const char* what) {
    check(a.numel() == b.numel(), what, ": ", a.shape(), " and ", b.shape(), " differ in size");
}

}  // namespace mpnet
