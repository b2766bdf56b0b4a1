// Batches for the training loop, assembled on a background thread ahead of time.
//
// The worker fills a queue of up to `prefetch` batches while the step runs, so next() only
// waits when assembly is slower than the step. Batch k covers positions [k*batch, (k+1)*batch)
// of the data order (order.hpp), continuing across epoch boundaries; since a batch is a pure
// function of its first position, the sequence does not depend on the prefetch depth or on
// timing, and seek() restarts it exactly where a checkpoint left off.
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

class Loader {
public:
    using Batch = data::Batch;

    Loader(const Dataset& ds, int64_t batch, uint64_t seed, bool xflip, int prefetch = 4)
        : ds_(ds), batch_(batch), seed_(seed), xflip_(xflip), prefetch_(prefetch) {
        validate(ds);
        check(batch > 0, ds.source, ": batch size ", batch, " must be positive");
        check(prefetch > 0, ds.source, ": prefetch depth ", prefetch, " must be positive");
        start(0);
    }
    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;
    ~Loader() { stop(); }

    // The next `batch` images; rethrows anything the worker threw.
    Batch next() {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return !queue_.empty() || error_; });
        if (queue_.empty()) std::rethrow_exception(error_);
        Batch b = std::move(queue_.front());
        queue_.pop_front();
        space_.notify_one();
        position_ += static_cast<uint64_t>(b.n);
        return b;
    }

    // Images handed out so far: store it in a checkpoint and seek() to it on resume.
    [[nodiscard]] uint64_t position() const { return position_; }

    void seek(uint64_t position) {
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
                Batch b = make_batch(ds_, order, xflip_, position, batch_);
                position += static_cast<uint64_t>(batch_);
                const std::lock_guard lock(mutex_);
                queue_.push_back(std::move(b));
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
    uint64_t position_ = 0;  // consumer side: images returned by next()

    std::mutex mutex_;
    std::condition_variable ready_, space_;  // a batch was queued / a slot was freed or stop asked
    std::deque<Batch> queue_;
    std::exception_ptr error_;
    bool stopping_ = false;
    std::thread worker_;
};

}  // namespace mpnet::data
