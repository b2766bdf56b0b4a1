// Offsets in one arena for blocks whose lifetimes are known in advance.
//
// A training step or a network evaluation allocates the same tensors in the same order every
// time. Given each block's size and the interval of events during which it is alive, two
// blocks may share bytes when their intervals do not meet. Placing the blocks largest first,
// each into the tightest gap left by the already-placed blocks that are alive at the same
// time ("greedy by size", as TensorFlow Lite and similar inference runtimes plan activation
// memory) usually lands within a few percent of the largest sum of sizes alive at any one
// instant, which no placement can beat.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

namespace mpnet {

// A block alive from event `first` up to, not including, event `last`.
struct Lifetime {
    std::size_t bytes = 0;
    int64_t first = 0, last = 0;
    [[nodiscard]] bool meets(const Lifetime& o) const { return first < o.last && o.first < last; }
};

struct ArenaPlan {
    std::vector<std::size_t> offsets;  // one per lifetime, each a multiple of the alignment
    std::size_t bytes = 0;             // the arena's size
};

// The most bytes alive at any one instant: the lower bound for any plan's size.
inline std::size_t live_peak(std::span<const Lifetime> blocks) {
    std::vector<std::pair<int64_t, int64_t>> events;  // (time, +bytes or -bytes), frees first at a tie
    events.reserve(blocks.size() * 2);
    for (const auto& b : blocks) {
        events.emplace_back(b.first, int64_t(b.bytes));
        events.emplace_back(b.last, -int64_t(b.bytes));
    }
    std::sort(events.begin(), events.end());
    int64_t live = 0, peak = 0;
    for (const auto& [t, d] : events) peak = std::max(peak, live += d);
    return std::size_t(peak);
}

inline ArenaPlan plan_arena(std::span<const Lifetime> blocks, std::size_t alignment) {
    const auto round = [&](std::size_t n) { return (n + alignment - 1) / alignment * alignment; };
    std::vector<std::size_t> order(blocks.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return blocks[a].bytes > blocks[b].bytes;
    });
    ArenaPlan plan;
    plan.offsets.assign(blocks.size(), 0);
    std::vector<std::size_t> placed;  // indices, in placement order
    std::vector<std::pair<std::size_t, std::size_t>> taken;  // [begin, end) of the placed blocks that meet this one
    for (std::size_t i : order) {
        const std::size_t need = round(blocks[i].bytes);
        taken.clear();
        for (std::size_t j : placed)
            if (blocks[i].meets(blocks[j])) taken.emplace_back(plan.offsets[j], plan.offsets[j] + round(blocks[j].bytes));
        std::sort(taken.begin(), taken.end());
        // The tightest gap that fits; past the last taken block when none does.
        std::size_t best = SIZE_MAX, best_gap = SIZE_MAX, cursor = 0;
        for (const auto& [begin, end] : taken) {
            if (begin >= cursor + need && begin - cursor < best_gap) best = cursor, best_gap = begin - cursor;
            cursor = std::max(cursor, end);
        }
        plan.offsets[i] = best != SIZE_MAX ? best : cursor;
        plan.bytes = std::max(plan.bytes, plan.offsets[i] + need);
        placed.push_back(i);
    }
    return plan;
}

}  // namespace mpnet
