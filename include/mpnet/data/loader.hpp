// Batches for the training loop, assembled on a background thread ahead of time.
//
// The worker fills a queue of up to `prefetch` batches while the step runs, so next() only
// waits when assembly is slower than the step. Batch k covers positions [k*batch, (k+1)*batch)
// of the data order (order.hpp), continuing across epoch boundaries; since a batch is a pure
// function of its first position, the sequence does not depend on the prefetch depth or on
// timing, and seek() restarts it exactly where a checkpoint left off.
//
// A Shard makes the loader hand out only some batches of that sequence: of every `period`
// consecutive batches, those numbered [begin, end). Data-parallel processes each take their
// own consecutive chunks of every global batch this way, and together see exactly the
// images one process would.
//
// One thread consumes (calls next/position/seek). The dataset must outlive the loader.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "mpnet/core/error.hpp"
#include "mpnet/data/batch.hpp"
#include "mpnet/data/dataset.hpp"
#include "mpnet/data/order.hpp"

namespace mpnet::data {

struct Shard {
    int64_t begin = 0, end = 1, period = 1;
};

class Loader {
public:
    using Batch = data::Batch;

    // `decode_threads`: threads that decode a streamed dataset's images for each batch.
    Loader(const Dataset& ds, int64_t batch, uint64_t seed, bool xflip, int prefetch = 4, Shard shard = {},
           int decode_threads = 1)
        : ds_(ds), batch_(batch), seed_(seed), xflip_(xflip), prefetch_(prefetch), shard_(shard),
          decode_threads_(decode_threads) {
        validate(ds);
        check(batch > 0, ds.source, ": batch size ", batch, " must be positive");
        check(prefetch > 0, ds.source, ": prefetch depth ", prefetch, " must be positive");
        check(decode_threads > 0, ds.source, ": decode threads ", decode_threads, " must be positive");
        check(shard.period >= 1 && shard.begin >= 0 && shard.begin < shard.end && shard.end <= shard.period,
              ds.source, ": shard [", shard.begin, ", ", shard.end, ") of ", shard.period, " batches is empty or out of range");
        start(0);
    }
    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;
    ~Loader() { stop(); }

    // The next `batch` images of the shard; rethrows anything the worker threw.
    Batch next() {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return !queue_.empty() || error_; });
        if (queue_.empty()) std::rethrow_exception(error_);
        auto [first, b] = std::move(queue_.front());
        queue_.pop_front();
        space_.notify_one();
        position_ = first + static_cast<uint64_t>(b.n);
        return b;
    }

    // Where in the sequence the next batch of the shard would be looked for (without a shard:
    // the images handed out so far). Store it in a checkpoint and seek() to it on resume.
    [[nodiscard]] uint64_t position() const { return position_; }

    // Continues with the first batch of the shard at or after `position`, which must start a
    // batch when the loader has a shard.
    void seek(uint64_t position) {
        check(shard_.period == 1 || position % static_cast<uint64_t>(batch_) == 0, ds_.source, ": position ", position,
              " is not at a batch boundary of ", batch_, " images");
        stop();
        start(position);
    }

private:
    void start(uint64_t position) {
        position_ = position;
        stopping_ = false;
        error_ = nullptr;
        queue_.clear();
        worker_ = std::thread([this, position] { run(position); });
    }

    void stop() {
        {
            const std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        space_.notify_all();
        if (worker_.joinable()) worker_.join();
    }

    void run(uint64_t position) {
        try {
            DataOrder order(ds_.size, seed_);
            for (;;) {
                {
                    std::unique_lock lock(mutex_);
                    space_.wait(lock, [&] { return stopping_ || queue_.size() < static_cast<std::size_t>(prefetch_); });
                    if (stopping_) return;
                }
                const auto batch = static_cast<uint64_t>(batch_);
                const auto in_period = static_cast<int64_t>(position / batch % static_cast<uint64_t>(shard_.period));
                if (in_period < shard_.begin || in_period >= shard_.end) {
                    position += batch;  // another shard's batch
                    continue;
                }
                Batch b = make_batch(ds_, order, xflip_, position, batch_, decode_threads_);
                const std::lock_guard lock(mutex_);
                queue_.emplace_back(position, std::move(b));
                position += batch;
                ready_.notify_one();
            }
        } catch (...) {
            const std::lock_guard lock(mutex_);
            error_ = std::current_exception();
            ready_.notify_one();
        }
    }

    const Dataset& ds_;
    int64_t batch_;
    uint64_t seed_;
    bool xflip_;
    int prefetch_;
    Shard shard_;
    int decode_threads_;
    uint64_t position_ = 0;  // consumer side: just past the last batch next() returned

    std::mutex mutex_;
    std::condition_variable ready_, space_;  // a batch was queued / a slot was freed or stop asked
    std::deque<std::pair<uint64_t, Batch>> queue_;  // (first position, batch)
    std::exception_ptr error_;
    bool stopping_ = false;
    std::thread worker_;
};

}  // namespace mpnet::data
