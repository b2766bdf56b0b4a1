// Host memory for the CPU backend: a caching pool of 64-byte aligned blocks.
//
// Training repeats the same shapes every step, so freed blocks are kept in exact-size
// buckets and handed out again: after the first step no call reaches the system
// allocator. The pool also counts bytes in use and their peak, which the trainer and
// the benchmarks report as peak memory.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace mpnet::cpu {

class MemoryPool {
public:
    static MemoryPool& instance() {
        static MemoryPool pool;
        return pool;
    }
    ~MemoryPool() { release_cached(); }

    void* allocate(std::size_t bytes) {
        const std::size_t size = round_up(bytes);
        {
            std::lock_guard lock(mutex_);
            in_use_ += size;
            if (in_use_ > peak_) peak_ = in_use_;
            auto it = free_.find(size);
            if (it != free_.end() && !it->second.empty()) {
                void* p = it->second.back();
                it->second.pop_back();
                cached_ -= size;
                return p;
            }
        }
        void* p = std::aligned_alloc(alignment, size);
        if (!p) {
            release_cached();
            p = std::aligned_alloc(alignment, size);
            if (!p) throw std::bad_alloc();
        }
        return p;
    }
    void deallocate(void* p, std::size_t bytes) {
        const std::size_t size = round_up(bytes);
        std::lock_guard lock(mutex_);
        in_use_ -= size;
        cached_ += size;
        free_[size].push_back(p);
    }
    // Returns every cached block to the system.
    void release_cached() {
        std::lock_guard lock(mutex_);
        for (auto& [size, blocks] : free_)
            for (void* p : blocks) std::free(p);
        free_.clear();
        cached_ = 0;
    }
    [[nodiscard]] std::size_t bytes_in_use() const { return in_use_; }
    [[nodiscard]] std::size_t peak_bytes() const { return peak_; }
    // Freed blocks kept for reuse (held from the system but not in use).
    [[nodiscard]] std::size_t bytes_cached() const { return cached_; }
    void reset_peak() {
        std::lock_guard lock(mutex_);
        peak_ = in_use_;
    }

    static constexpr std::size_t alignment = 64;

private:
    static std::size_t round_up(std::size_t bytes) { return (bytes + alignment - 1) / alignment * alignment; }

    std::mutex mutex_;
    std::unordered_map<std::size_t, std::vector<void*>> free_;
    std::size_t in_use_ = 0, peak_ = 0, cached_ = 0;
};

}  // namespace mpnet::cpu
