// Host memory for the CPU backend: a caching pool of 64-byte aligned blocks, and memory plans
// that place a recurring phase's blocks in one arena.
//
// Training repeats the same shapes every step, so freed blocks are kept in exact-size buckets
// and handed out again: after the first step no call reaches the system allocator. Buckets
// alone hold more than is ever in use at once (a block freed at one size is never handed out
// at another), so the phases that recur — a training step, a network evaluation — run inside
// a MemoryPlan::Region: the plan logs each block's size and lifetime the first time, places
// the blocks in one arena from those lifetimes (core/lifetime_plan.hpp), and from then on
// hands out the same offsets in the same order. Blocks that outlive the region, and anything
// the plan did not foresee, come from the buckets. The pool counts bytes in use and their
// peak, which the trainer and the benchmarks report as peak memory.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "mpnet/backend/cpu/arena.hpp"
#include "mpnet/core/lifetime_plan.hpp"

namespace mpnet::cpu {

class MemoryPool;

// Where one recurring phase's blocks go. Keep it with whatever runs the phase (the trainer,
// the denoiser) and wrap each run of the phase in a Region; the first run is recorded, the
// following ones served from the arena. A run that allocates differently (another batch
// size, a first step that creates state) is served from the pool and replaces the plan.
class MemoryPlan {
public:
    MemoryPlan() = default;
    MemoryPlan(const MemoryPlan&) = delete;
    MemoryPlan& operator=(const MemoryPlan&) = delete;
    ~MemoryPlan();

    // Allocations made on this thread while a Region lives follow the plan.
    class Region {
    public:
        explicit Region(MemoryPlan& plan);
        Region(const Region&) = delete;
        Region& operator=(const Region&) = delete;
        ~Region();

    private:
        MemoryPlan* plan_;
        MemoryPlan* outer_;
        int exceptions_ = std::uncaught_exceptions();
    };

    [[nodiscard]] std::size_t arena_bytes() const { return arena_ ? arena_->bytes() : 0; }
    // The sum of sizes alive at once in the recorded run: no arena can be smaller.
    [[nodiscard]] std::size_t planned_live_peak() const { return live_peak_; }
    [[nodiscard]] int64_t times_planned() const { return times_planned_; }
    // Blocks of the last run served from the arena, and from the pool.
    [[nodiscard]] int64_t arena_blocks() const { return arena_blocks_; }
    [[nodiscard]] int64_t pool_blocks() const { return int64_t(sizes_.size()) - arena_blocks_; }

private:
    friend class MemoryPool;
    static constexpr std::size_t escapes = SIZE_MAX;

    // No plan serves this run (none yet, or it departed from the plan).
    [[nodiscard]] bool recording() const { return !arena_ || diverged_; }

    // Called by the pool, on the region's thread.
    void* take(std::size_t bytes);
    void note_allocation(void* p, std::size_t bytes, bool from_arena) noexcept;
    void note_free(void* p) noexcept;
    void begin();
    void end(bool completed) noexcept;
    void replan();
    void forget() noexcept;

    // The run in progress: each block's size and the events at which it was taken and freed.
    std::vector<std::size_t> sizes_;
    std::vector<int64_t> taken_at_, freed_at_;  // freed_at_ -1: still alive
    std::unordered_map<void*, std::size_t> alive_;
    int64_t events_ = 0, arena_blocks_ = 0;
    bool diverged_ = false, in_region_ = false, untracked_ = false;

    // The plan: each block's size and offset (escapes: from the pool).
    std::vector<std::size_t> planned_sizes_, offsets_;
    std::shared_ptr<Arena> arena_;
    std::size_t live_peak_ = 0;
    int64_t times_planned_ = 0;
};

namespace detail {
inline thread_local MemoryPlan* current_plan = nullptr;
}

class MemoryPool {
public:
    static MemoryPool& instance() {
        static MemoryPool pool;
        return pool;
    }
    ~MemoryPool() { release_cached(); }

    void* allocate(std::size_t bytes) {
        const std::size_t size = round_up(bytes);
        MemoryPlan* plan = detail::current_plan;
        void* p = nullptr;
        bool from_arena = false;
        {
            std::lock_guard lock(mutex_);
            in_use_ += size;
            if (in_use_ > peak_) peak_ = in_use_;
            if (plan && (p = plan->take(size))) {
                from_arena = true;
                arena_live_ += size;
            } else if (auto it = free_.find(size); it != free_.end() && !it->second.empty()) {
                p = it->second.back();
                it->second.pop_back();
                cached_ -= size;
            }
        }
        if (!p) p = system_allocate(size);
        if (!p) {
            release_cached();
            p = system_allocate(size);
            if (!p) {
                std::lock_guard lock(mutex_);
                in_use_ -= size;
                throw std::bad_alloc();
            }
        }
        if (plan) plan->note_allocation(p, size, from_arena);  // never throws: see there
        return p;
    }
    void deallocate(void* p, std::size_t bytes) {
        const std::size_t size = round_up(bytes);
        MemoryPlan* plan = detail::current_plan;
        if (plan) plan->note_free(p);
        std::unique_lock lock(mutex_);
        in_use_ -= size;
        for (auto it = arenas_.begin(); it != arenas_.end(); ++it) {
            if (!(*it)->contains(p)) continue;
            (*it)->give_back(p);
            arena_live_ -= size;
            if ((*it)->empty() && it->use_count() == 1) forget_arena(it);  // its plan has moved on
            return;
        }
        // A run being recorded returns its large blocks at once: cached in buckets they would
        // add up to more than the run ever holds, and the plan will serve them next time.
        if (plan && plan->recording() && size >= mapped_threshold) {
            lock.unlock();
            system_free(p, size);
            return;
        }
        cached_ += size;
        free_[size].push_back(p);
    }
    // Returns every cached block to the system (arenas stay with their plans).
    void release_cached() {
        std::lock_guard lock(mutex_);
        for (auto& [size, blocks] : free_)
            for (void* p : blocks) system_free(p, size);
        free_.clear();
        cached_ = 0;
    }
    [[nodiscard]] std::size_t bytes_in_use() const { return locked([&] { return in_use_; }); }
    [[nodiscard]] std::size_t peak_bytes() const { return locked([&] { return peak_; }); }
    // Freed blocks kept for reuse (held from the system but not in use).
    [[nodiscard]] std::size_t bytes_cached() const { return locked([&] { return cached_; }); }
    // Everything taken from the system: blocks in use or cached, and whole arenas.
    [[nodiscard]] std::size_t bytes_held() const {
        return locked([&] { return in_use_ - arena_live_ + cached_ + arena_bytes_; });
    }
    void reset_peak() {
        std::lock_guard lock(mutex_);
        peak_ = in_use_;
    }

    static constexpr std::size_t alignment = memory_alignment;

private:
    friend class MemoryPlan;
    // Empty requests get a block of their own too: every live block has a distinct address.
    static std::size_t round_up(std::size_t bytes) {
        return std::max<std::size_t>(alignment, (bytes + alignment - 1) / alignment * alignment);
    }
    template <class F>
    std::size_t locked(F&& f) const {
        std::lock_guard lock(mutex_);
        return f();
    }

    std::shared_ptr<Arena> make_arena(std::size_t bytes) {
        auto arena = std::make_shared<Arena>(bytes);
        std::lock_guard lock(mutex_);
        arenas_.push_back(arena);
        arena_bytes_ += bytes;
        return arena;
    }
    // A plan lets go of its arena; it is unmapped once its last block comes back.
    void drop_arena(std::shared_ptr<Arena>& arena) {
        if (!arena) return;
        std::lock_guard lock(mutex_);
        const auto it = std::find(arenas_.begin(), arenas_.end(), arena);
        arena.reset();
        if (it != arenas_.end() && (*it)->empty() && it->use_count() == 1) forget_arena(it);
    }
    void forget_arena(std::vector<std::shared_ptr<Arena>>::iterator it) {
        arena_bytes_ -= (*it)->bytes();
        arenas_.erase(it);
    }

    mutable std::mutex mutex_;
    std::unordered_map<std::size_t, std::vector<void*>> free_;
    std::vector<std::shared_ptr<Arena>> arenas_;
    std::size_t in_use_ = 0, peak_ = 0, cached_ = 0, arena_live_ = 0, arena_bytes_ = 0;
};

inline MemoryPlan::~MemoryPlan() { MemoryPool::instance().drop_arena(arena_); }

inline MemoryPlan::Region::Region(MemoryPlan& plan) : plan_(&plan), outer_(detail::current_plan) {
    if (plan.in_region_) throw std::logic_error("MemoryPlan: a region of this plan is already open");
    plan.begin();
    detail::current_plan = &plan;
}
inline MemoryPlan::Region::~Region() {
    detail::current_plan = outer_;
    plan_->end(std::uncaught_exceptions() == exceptions_);
}

inline void MemoryPlan::begin() {
    sizes_.clear(), taken_at_.clear(), freed_at_.clear(), alive_.clear();
    events_ = arena_blocks_ = 0;
    diverged_ = untracked_ = false;
    in_region_ = true;
}

// The arena block planned for the next allocation, or nullptr for the pool. Runs under the
// pool's lock (the arena is shared with frees from any thread).
inline void* MemoryPlan::take(std::size_t bytes) {
    const std::size_t id = sizes_.size();
    if (!arena_ || diverged_) return nullptr;
    if (id >= planned_sizes_.size() || planned_sizes_[id] != bytes) {
        diverged_ = true;  // another sequence of sizes: the rest comes from the pool
        return nullptr;
    }
    if (offsets_[id] == escapes) return nullptr;
    void* p = arena_->take(offsets_[id], bytes);
    if (!p) diverged_ = true;  // a block the plan expected freed is still alive
    return p;
}

// Bookkeeping that runs out of memory must not lose the block it describes: the run is then
// marked as not to be planned from, and the block handed out all the same.
inline void MemoryPlan::note_allocation(void* p, std::size_t bytes, bool from_arena) noexcept {
    arena_blocks_ += from_arena;
    if (untracked_) return;
    try {
        sizes_.push_back(bytes);
        taken_at_.push_back(events_++);
        freed_at_.push_back(-1);
        alive_[p] = sizes_.size() - 1;
    } catch (...) {
        untracked_ = true;
    }
}

inline void MemoryPlan::note_free(void* p) noexcept {
    if (untracked_) return;
    const auto it = alive_.find(p);
    if (it == alive_.end()) return;  // not taken in this run of the region
    freed_at_[it->second] = events_++;
    alive_.erase(it);
}

// Runs in Region's destructor, so it must not throw: a plan that cannot be made (no memory
// for the arena or the placement) is dropped, and the next run records afresh.
inline void MemoryPlan::end(bool completed) noexcept {
    in_region_ = false;
    alive_.clear();  // blocks still alive outlive the region: their frees are not this run's
    if (!completed) return;  // an exception cut the run short: it says nothing about the next
    if (untracked_) return forget();
    bool same = !diverged_ && sizes_ == planned_sizes_;
    for (std::size_t i = 0; same && i < sizes_.size(); ++i) same = (freed_at_[i] < 0) == (offsets_[i] == escapes);
    if (same) return;
    try {
        replan();
    } catch (...) {
        forget();
    }
}

inline void MemoryPlan::forget() noexcept {
    MemoryPool::instance().drop_arena(arena_);
    planned_sizes_.clear();
    offsets_.clear();
}

inline void MemoryPlan::replan() {
    std::vector<Lifetime> lifetimes;
    std::vector<std::size_t> planned;  // which blocks the arena holds
    for (std::size_t i = 0; i < sizes_.size(); ++i) {
        if (freed_at_[i] < 0) continue;
        lifetimes.push_back({sizes_[i], taken_at_[i], freed_at_[i]});
        planned.push_back(i);
    }
    const ArenaPlan plan = plan_arena(lifetimes, MemoryPool::alignment);
    planned_sizes_ = sizes_;
    offsets_.assign(sizes_.size(), escapes);
    for (std::size_t k = 0; k < planned.size(); ++k) offsets_[planned[k]] = plan.offsets[k];
    live_peak_ = live_peak(lifetimes);
    ++times_planned_;
    auto& pool = MemoryPool::instance();
    // A new arena when the plan outgrows this one or needs less than half of it.
    if (!arena_ || arena_->bytes() < plan.bytes || arena_->bytes() / 2 > plan.bytes) {
        pool.drop_arena(arena_);
        if (plan.bytes > 0) arena_ = pool.make_arena(plan.bytes);
    }
    // The blocks this run took from the pool are now the arena's to serve.
    pool.release_cached();
}

}  // namespace mpnet::cpu
