// The order in which training sees the images, as a pure function of (seed, position).
//
// Global position p (the number of images handed out before this one) falls in epoch
// e = p / size at slot p % size of that epoch's permutation. Epoch e's permutation is a
// Fisher-Yates shuffle driven by the counter-based RNG stream derived from (seed, e), and the
// x-flip of position p is one draw of another stream at index p. Nothing depends on what was
// drawn before, so a checkpoint only needs p to resume the exact same sequence.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/core/rng.hpp"

namespace mpnet::data {

// Substream purposes, distinct from those the network and the trainer derive from a seed.
inline constexpr uint64_t order_purpose = 0x6461'7461'2e6f'7264;  // "data.ord"
inline constexpr uint64_t flip_purpose = 0x6461'7461'2e66'6c70;   // "data.flp"
inline constexpr uint64_t latent_purpose = 0x6461'7461'2e6c'6174; // "data.lat"

// Epoch `epoch`'s permutation of [0, size).
inline std::vector<int64_t> epoch_permutation(int64_t size, uint64_t seed, uint64_t epoch) {
    const uint64_t stream = rng::substream(rng::substream(seed, order_purpose), epoch);
    std::vector<int64_t> perm(static_cast<std::size_t>(size));
    std::iota(perm.begin(), perm.end(), int64_t{0});
    for (int64_t i = size - 1; i > 0; --i) {
        // u < 1, but u * (i + 1) can round up to i + 1 in double; clamp to stay in range.
        const double u = rng::uniform(stream, static_cast<uint64_t>(i));
        const int64_t j = std::min(i, static_cast<int64_t>(u * static_cast<double>(i + 1)));
        std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
    }
    return perm;
}

// Whether the image at `position` is mirrored, when x-flip augmentation is on.
inline bool flip_at(uint64_t seed, uint64_t position) {
    return rng::uniform(rng::substream(seed, flip_purpose), position) < 0.5;
}

// Maps positions to dataset indices, keeping the permutation of the last epoch it was asked about.
class DataOrder {
public:
    DataOrder(int64_t size, uint64_t seed)
        : size_(size), seed_(seed), flip_stream_(rng::substream(seed, flip_purpose)) {
        check(size > 0, "data order: the dataset has no images");
    }

    [[nodiscard]] int64_t index_at(uint64_t position) {
        const uint64_t epoch = position / static_cast<uint64_t>(size_);
        if (perm_.empty() || epoch != epoch_) {
            perm_ = epoch_permutation(size_, seed_, epoch);
            epoch_ = epoch;
        }
        return perm_[position % static_cast<uint64_t>(size_)];
    }

    [[nodiscard]] bool flip(uint64_t position) const { return rng::uniform(flip_stream_, position) < 0.5; }

    // The stream of the noise that draws a latent from its posterior (latents.hpp), indexed by
    // position * values per latent + element: a pure function of the position, as the rest.
    [[nodiscard]] uint64_t latent_stream() const { return rng::substream(seed_, latent_purpose); }

private:
    int64_t size_;
    uint64_t seed_, flip_stream_;
    uint64_t epoch_ = 0;
    std::vector<int64_t> perm_;
};

}  // namespace mpnet::data
