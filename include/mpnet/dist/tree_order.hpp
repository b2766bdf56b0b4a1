// The one order in which mpnet adds up gradients, so that a data-parallel run over any number
// of processes computes the same bits as one process.
//
// A step's batch is cut into N chunks of --batch-gpu images, numbered in the global batch.
// The step's gradient is the sum of the N chunk gradients over a fixed binary tree: the sum
// over chunks [lo, hi) is the sum over [lo, lo+P) plus the sum over [lo+P, hi), P the largest
// power of two below hi-lo ("left-complete": every left subtree is a full power of two).
// Floating-point addition is commutative, so only this grouping decides the result.
//
// With K processes each takes M = N/K consecutive chunks. When M is a power of two, each
// process's chunks form one subtree of the tree over N, and the tree over the K partial sums
// is the left-complete tree over K leaves: every element comes out as in one process, bit
// for bit. (Otherwise the result is still the same on every rank and in every run, but
// grouped differently from one process.)
#pragma once
#include <algorithm>
#include <bit>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::dist {

// The split point of the left-complete tree over n >= 2 leaves.
[[nodiscard]] constexpr std::size_t tree_split(std::size_t n) { return std::bit_floor(n - 1); }

namespace detail {
// The tree sum of `n` parts over elements [at, at+len), into out; scratch holds one block per
// level below this one.
template <class T>
void tree_sum_block(const T* const* parts, std::size_t n, std::size_t at, std::size_t len, T* out, T* scratch) {
    if (n == 1) {
        std::copy(parts[0] + at, parts[0] + at + len, out);
        return;
    }
    const std::size_t split = tree_split(n);
    tree_sum_block(parts, split, at, len, out, scratch + len);
    tree_sum_block(parts + split, n - split, at, len, scratch, scratch + len);
    for (std::size_t i = 0; i < len; ++i) out[i] += scratch[i];
}
}  // namespace detail

// out = the tree sum of parts (all of out's length), element by element; block by block, so
// that the partial sums stay in cache.
template <class T>
void tree_sum(std::span<const T* const> parts, std::span<T> out) {
    check(!parts.empty(), "tree_sum: no parts");
    constexpr std::size_t block = 4096;
    const auto depth = static_cast<std::size_t>(std::bit_width(parts.size()));  // levels of the tree, at most
    std::vector<T> scratch(depth * std::min(block, out.size()));
    for (std::size_t at = 0; at < out.size(); at += block) {
        const std::size_t len = std::min(block, out.size() - at);
        detail::tree_sum_block(parts.data(), parts.size(), at, len, out.data() + at, scratch.data());
    }
}

// Accumulates chunk gradients in tree order as they arrive, holding at most log2(N)+1
// partial sums: like a binary counter, two partial sums over equally many chunks merge
// at once, and finish() adds the rest from the right, which is the left-complete tree.
template <Scalar T, Backend B>
class GradientTree {
public:
    using TensorT = Tensor<T, B>;

    void add(const TensorT& chunk) {
        TensorT t = take_spare(chunk.shape());
        t.copy_from(chunk);
        stack_.emplace_back(1, std::move(t));
        while (stack_.size() >= 2 && stack_[stack_.size() - 2].first == stack_.back().first) merge_top();
    }

    // Writes the sum of every chunk added since the last finish() into `out`.
    void finish(TensorT& out) {
        check(!stack_.empty(), "GradientTree::finish: no chunks were added");
        while (stack_.size() >= 2) merge_top();
        out.copy_from(stack_.back().second);
        spare_.push_back(std::move(stack_.back().second));
        stack_.clear();
    }

private:
    void merge_top() {
        auto [count, right] = std::move(stack_.back());
        stack_.pop_back();
        auto& left = stack_.back();
        axpby(B{}, T(1), right, T(1), left.second);
        left.first += count;
        spare_.push_back(std::move(right));
    }
    TensorT take_spare(const Shape& shape) {
        if (spare_.empty() || spare_.back().shape() != shape) return TensorT(shape);
        TensorT t = std::move(spare_.back());
        spare_.pop_back();
        return t;
    }

    std::vector<std::pair<int64_t, TensorT>> stack_;  // (chunks summed, their sum), oldest first
    std::vector<TensorT> spare_;                       // buffers kept for the next step
};

}  // namespace mpnet::dist
