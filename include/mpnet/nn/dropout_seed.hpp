// The seed of a network's dropout masks, kept on the backend.
//
// A training round draws its masks from a seed that changes every round. Were it a kernel
// argument, a CUDA graph captured from one round would replay that round's masks forever;
// kept in backend memory (two doubles, rng::to_words) and read by the dropout kernels, it is
// changed before each replay by two small kernels outside the graph. Every block of a
// network shares one seed and draws from its own substream of it (`stream`: the block's index).
#pragma once
#include <cstdint>

#include "mpnet/core/rng.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::nn {

template <Backend B>
struct DropoutSeed {
    Tensor<double, B> words = Tensor<double, B>::zeros(Shape{2});
    uint64_t stream = 0;

    // Writes `seed` by kernels (nothing waits for the device): for every holder of `words`.
    void set(uint64_t seed) const {
        const rng::SeedWords w = rng::to_words(seed);
        Tensor<double, B> hi = words.slice(0, 1), lo = words.slice(1, 2);
        fill(B{}, hi, w.hi);
        fill(B{}, lo, w.lo);
    }
    // The same seed, for another substream.
    [[nodiscard]] DropoutSeed with_stream(uint64_t s) const { return {words, s}; }
};

}  // namespace mpnet::nn
