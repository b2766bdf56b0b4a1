// A bounded cache of decoded samples in front of a streamed dataset's reader.
//
// The most recently used samples are kept, up to a byte budget, so that a dataset a little
// larger than the memory given to it, or one on a slow disk, decodes a sample once per
// cache lifetime rather than once per epoch. With the data order a fresh permutation every
// epoch, a cache holding a fraction f of the dataset serves about f of the reads; holding it
// all, every epoch after the first is served from memory. The budget is a hard bound: a
// sample enters only once older ones have made room. Called from the loader's decode threads.
#pragma once
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "mpnet/data/dataset.hpp"

namespace mpnet::data {

class CachedReader final : public ImageReader {
public:
    // The cache in front of a dataset's reader, if it has one.
    static const CachedReader* of(const Dataset& ds) { return dynamic_cast<const CachedReader*>(ds.reader.get()); }

    // `sample_bytes`: the size of one decoded sample (CHW pixels, or a latent's floats).
    CachedReader(std::shared_ptr<const ImageReader> inner, std::size_t sample_bytes, std::size_t capacity_bytes)
        : inner_(std::move(inner)), sample_bytes_(sample_bytes),
          capacity_(sample_bytes ? capacity_bytes / sample_bytes : 0) {}

    void read(int64_t index, uint8_t* chw) const override {
        fetch(index, chw, [&](uint8_t* dst) { inner_->read(index, dst); });
    }
    void read_latent(int64_t index, float* mean_std) const override {
        fetch(index, reinterpret_cast<uint8_t*>(mean_std),
              [&](uint8_t* dst) { inner_->read_latent(index, reinterpret_cast<float*>(dst)); });
    }

    struct Stats {
        uint64_t hits = 0, misses = 0;
        std::size_t samples = 0, bytes = 0;
    };
    [[nodiscard]] Stats stats() const {
        const std::lock_guard lock(mutex_);
        return {hits_, misses_, entries_.size(), entries_.size() * sample_bytes_};
    }

private:
    struct Entry {
        int64_t index;
        std::vector<uint8_t> bytes;
    };

    // Copies the cached sample to dst, or decodes it there (outside the lock: decoding is the
    // slow part) and keeps a copy, evicting the least recently used samples to stay in budget.
    template <class Decode>
    void fetch(int64_t index, uint8_t* dst, Decode&& decode) const {
        {
            const std::lock_guard lock(mutex_);
            if (const auto it = where_.find(index); it != where_.end()) {
                entries_.splice(entries_.begin(), entries_, it->second);  // now the most recent
                std::memcpy(dst, it->second->bytes.data(), sample_bytes_);
                ++hits_;
                return;
            }
            ++misses_;
        }
        decode(dst);
        if (capacity_ == 0) return;
        std::vector<uint8_t> copy(dst, dst + sample_bytes_);
        const std::lock_guard lock(mutex_);
        if (where_.contains(index)) return;  // another thread decoded it meanwhile
        if (entries_.size() == capacity_) {
            where_.erase(entries_.back().index);
            entries_.pop_back();
        }
        entries_.push_front(Entry{index, std::move(copy)});
        where_[index] = entries_.begin();
    }

    std::shared_ptr<const ImageReader> inner_;
    std::size_t sample_bytes_, capacity_;  // capacity in samples
    mutable std::mutex mutex_;
    mutable std::list<Entry> entries_;  // most recently used first
    mutable std::unordered_map<int64_t, std::list<Entry>::iterator> where_;
    mutable uint64_t hits_ = 0, misses_ = 0;
};

}  // namespace mpnet::data
