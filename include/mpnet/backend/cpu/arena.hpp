// Pages straight from the operating system, and an arena carved from them at planned offsets.
//
// Blocks of a megabyte or more are mapped and unmapped directly rather than taken from
// malloc: glibc serves them from its heap once its adaptive mmap threshold has risen, and a
// heap keeps freed memory resident, so the process's resident set would stay at the largest
// it ever was instead of following what the program holds.
//
// Blocks of 2 MiB or more (activations, arenas) start on a 2 MiB boundary and are advised to
// use transparent huge pages. A convolution reads one channel plane after another, each 4 KiB
// at 32 x 32, from tensors of many megabytes: with 4 KiB pages nearly every plane is a TLB
// entry of its own, more than the TLB holds (docs/performance.md, "Huge pages", measured).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <new>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#include <unistd.h>
#define MPNET_HAVE_MMAP 1
#endif

namespace mpnet::cpu {

inline constexpr std::size_t memory_alignment = 64;
inline constexpr std::size_t mapped_threshold = std::size_t(1) << 20;
inline constexpr std::size_t huge_page = std::size_t(2) << 20;

#ifdef MPNET_HAVE_MMAP
// `bytes` of fresh pages starting on a huge-page boundary, advised to use huge pages; nullptr
// when the system has none. It maps a huge page more than asked and unmaps the ends around
// the aligned range, so what remains is exactly what system_free unmaps.
inline void* map_huge_aligned(std::size_t bytes) {
    const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    const std::size_t length = (bytes + page - 1) / page * page;
    void* raw = mmap(nullptr, length + huge_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const auto aligned = (start + huge_page - 1) / huge_page * huge_page;
    if (aligned > start) munmap(raw, aligned - start);
    munmap(reinterpret_cast<void*>(aligned + length), start + huge_page - aligned);
    auto* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
    madvise(p, length, MADV_HUGEPAGE);  // advice: where huge pages are off or used up, 4 KiB pages serve
#endif
    return p;
}
#endif

// Memory with 64-byte alignment from the system; nullptr when it has none.
inline void* system_allocate(std::size_t bytes) {
#ifdef MPNET_HAVE_MMAP
    if (bytes >= huge_page) return map_huge_aligned(bytes);
    if (bytes >= mapped_threshold) {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? nullptr : p;
    }
#endif
    return std::aligned_alloc(memory_alignment, (bytes + memory_alignment - 1) / memory_alignment * memory_alignment);
}
inline void system_free(void* p, std::size_t bytes) {
#ifdef MPNET_HAVE_MMAP
    if (bytes >= mapped_threshold) {
        munmap(p, bytes);
        return;
    }
#endif
    std::free(p);
}

// One allocation holding the blocks of a memory plan at their offsets. It refuses a block
// that would overlap a live one, so a plan that no longer matches what the program does can
// cost speed but never correctness.
class Arena {
public:
    explicit Arena(std::size_t bytes) : bytes_(bytes), base_(static_cast<std::byte*>(system_allocate(bytes))) {
        if (!base_) throw std::bad_alloc();
    }
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena() { system_free(base_, bytes_); }

    [[nodiscard]] bool contains(const void* p) const {
        const auto* b = static_cast<const std::byte*>(p);
        return b >= base_ && b < base_ + bytes_;
    }
    // The block [offset, offset + bytes), or nullptr when a live block overlaps it.
    void* take(std::size_t offset, std::size_t bytes) {
        if (offset + bytes > bytes_) return nullptr;
        const auto next = live_.lower_bound(offset);
        if (next != live_.end() && next->first < offset + bytes) return nullptr;
        if (next != live_.begin() && std::prev(next)->second > offset) return nullptr;
        live_.emplace_hint(next, offset, offset + bytes);
        live_bytes_ += bytes;
        return base_ + offset;
    }
    void give_back(const void* p) {
        const auto it = live_.find(std::size_t(static_cast<const std::byte*>(p) - base_));
        live_bytes_ -= it->second - it->first;
        live_.erase(it);
    }
    [[nodiscard]] std::size_t bytes() const { return bytes_; }
    [[nodiscard]] std::size_t live_bytes() const { return live_bytes_; }
    [[nodiscard]] bool empty() const { return live_.empty(); }

private:
    std::size_t bytes_;
    std::byte* base_;
    std::map<std::size_t, std::size_t> live_;  // offset -> end of each block handed out
    std::size_t live_bytes_ = 0;
};

}  // namespace mpnet::cpu
