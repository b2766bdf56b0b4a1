// The Communicator over MPI (any implementation; tested with Debian's OpenMPI), for programs
// started by mpirun, srun or another MPI launcher. Include it only where <mpi.h> is available
// (the programs are built with it when CMake finds MPI).
//
// The gradient sum is a reduce-scatter and an all-gather done by hand rather than
// MPI_Allreduce, whose order of additions is the library's choice: each rank receives one
// slice of every rank's buffer (MPI_Alltoall), adds them in tree order, and the summed slices
// are shared again (MPI_Allgather). That moves 2(K-1)/K of the buffer per rank, like a ring
// all-reduce, and gives the same bits on every rank and in every run.
//
// A watchdog bounds every collective: a rank that stopped or stalled would otherwise leave
// the others waiting forever. When a collective takes longer than the timeout, the waiting
// rank says which collective and exits; the launcher then ends the job.
#pragma once
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mpnet/dist/communicator.hpp"
#include "mpnet/dist/tree_order.hpp"

namespace mpnet::dist {

// MPI initialised for the object's lifetime. Only the main thread calls MPI (the watchdog
// never does), so MPI_THREAD_FUNNELED is enough.
class MpiSession {
public:
    MpiSession() {
        int provided = 0;
        check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS, "MPI_Init_thread failed");
    }
    MpiSession(const MpiSession&) = delete;
    MpiSession& operator=(const MpiSession&) = delete;
    ~MpiSession() { MPI_Finalize(); }
};

class MpiCommunicator final : public Communicator {
public:
    using Communicator::broadcast;  // the string overload too
    // `timeout_s`: longest wait in one collective before the job is stopped.
    explicit MpiCommunicator(double timeout_s, MPI_Comm comm = MPI_COMM_WORLD)
        : comm_(comm), timeout_(timeout_s) {
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
        // Errors come back as codes and are reported by check(), not by MPI's own abort.
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        watchdog_ = std::thread([this] { watch(); });
    }
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;
    ~MpiCommunicator() override {
        {
            const std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        changed_.notify_one();
        watchdog_.join();
    }

    [[nodiscard]] int rank() const override { return rank_; }
    [[nodiscard]] int size() const override { return size_; }

    void sum(std::span<float> values) override { sum_in_tree_order(values, MPI_FLOAT); }
    void sum(std::span<double> values) override { sum_in_tree_order(values, MPI_DOUBLE); }

    [[nodiscard]] std::vector<double> gather(std::span<const double> mine) override {
        std::vector<double> all(mine.size() * std::size_t(size_));
        const Deadline d(*this, "gathering values");
        ok(MPI_Allgather(mine.data(), count(mine.size()), MPI_DOUBLE, all.data(), count(mine.size()), MPI_DOUBLE, comm_),
           "MPI_Allgather");
        return all;
    }

    // Point to point, in pieces: a rank's part may exceed MPI's int counts.
    [[nodiscard]] std::vector<std::vector<std::byte>> gather_to_root(std::span<const std::byte> mine) override {
        const Deadline d(*this, "gathering results on rank 0");
        if (!is_root()) {
            uint64_t n = mine.size();
            ok(MPI_Send(&n, 1, MPI_UINT64_T, 0, gather_tag, comm_), "MPI_Send");
            for (std::size_t at = 0; at < mine.size(); at += piece)
                ok(MPI_Send(mine.data() + at, int(std::min(piece, mine.size() - at)), MPI_BYTE, 0, gather_tag, comm_),
                   "MPI_Send");
            return {};
        }
        std::vector<std::vector<std::byte>> all{std::vector<std::byte>(mine.begin(), mine.end())};
        for (int r = 1; r < size_; ++r) {
            uint64_t n = 0;
            ok(MPI_Recv(&n, 1, MPI_UINT64_T, r, gather_tag, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
            auto& part = all.emplace_back(std::size_t(n));
            for (std::size_t at = 0; at < part.size(); at += piece)
                ok(MPI_Recv(part.data() + at, int(std::min(piece, part.size() - at)), MPI_BYTE, r, gather_tag, comm_,
                            MPI_STATUS_IGNORE),
                   "MPI_Recv");
        }
        return all;
    }

    void broadcast(std::span<std::byte> bytes) override {
        const Deadline d(*this, "waiting for rank 0");
        for (std::size_t at = 0; at < bytes.size(); at += piece)
            ok(MPI_Bcast(bytes.data() + at, count(std::min(piece, bytes.size() - at)), MPI_BYTE, 0, comm_), "MPI_Bcast");
    }

    // Ends every process of the job: for an error on one rank, which the others cannot know of.
    [[noreturn]] void abort(int code) { MPI_Abort(comm_, code); std::abort(); }

private:
    static constexpr std::size_t piece = std::size_t(1) << 30;  // bytes per message: MPI counts are int
    static constexpr int gather_tag = 1;

    template <class T>
    void sum_in_tree_order(std::span<T> values, MPI_Datatype type) {
        if (size_ == 1) return;
        const std::size_t K = std::size_t(size_), slice = (values.size() + K - 1) / K;
        check(slice <= std::size_t(INT32_MAX), "gradient sum: ", values.size(), " values are too many for ", K, " ranks");
        // A buffer whose length K slices fill exactly is sent and received in place; another
        // goes through a padded copy. Buffers are kept between steps: fresh ones would cost a
        // page fault per 4 KiB every step.
        const bool padded = slice * K != values.size();
        T* whole = values.data();
        if (padded) {
            whole = reuse<T>(padded_, slice * K);
            std::fill(std::copy(values.begin(), values.end(), whole), whole + slice * K, T(0));
        }
        T* received = reuse<T>(received_, slice * K);
        T* mine = reuse<T>(mine_, slice);
        {
            const Deadline d(*this, "the gradient sum");
            ok(MPI_Alltoall(whole, int(slice), type, received, int(slice), type, comm_), "MPI_Alltoall");
        }
        std::vector<const T*> parts(K);
        for (std::size_t r = 0; r < K; ++r) parts[r] = received + r * slice;
        tree_sum(std::span<const T* const>(parts), std::span<T>(mine, slice));
        {
            const Deadline d(*this, "the gradient sum");
            ok(MPI_Allgather(mine, int(slice), type, whole, int(slice), type, comm_), "MPI_Allgather");
        }
        if (padded) std::copy(whole, whole + values.size(), values.begin());
    }

    template <class T>
    static T* reuse(std::vector<std::byte>& buffer, std::size_t n) {
        if (buffer.size() < n * sizeof(T)) buffer.resize(n * sizeof(T));
        return reinterpret_cast<T*>(buffer.data());
    }

    static int count(std::size_t n) {
        check(n <= std::size_t(INT32_MAX), "an MPI message of ", n, " elements is too long");
        return int(n);
    }
    void ok(int code, const char* what) const {
        if (code == MPI_SUCCESS) return;
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(code, text, &length);
        fail("rank ", rank_, ": ", what, " failed: ", std::string(text, std::size_t(length)));
    }

    // Marks the time spent in one collective for the watchdog.
    class Deadline {
    public:
        Deadline(MpiCommunicator& c, const char* what) : c_(c) {
            const std::lock_guard lock(c_.mutex_);
            c_.waiting_for_ = what;
            c_.since_ = std::chrono::steady_clock::now();
            c_.changed_.notify_one();
        }
        ~Deadline() {
            const std::lock_guard lock(c_.mutex_);
            c_.waiting_for_ = nullptr;
        }
        Deadline(const Deadline&) = delete;
        Deadline& operator=(const Deadline&) = delete;

    private:
        MpiCommunicator& c_;
    };

    void watch() {
        std::unique_lock lock(mutex_);
        while (!stopping_) {
            if (!waiting_for_) {
                changed_.wait(lock, [&] { return stopping_ || waiting_for_; });
                continue;
            }
            const auto limit = since_ + std::chrono::duration<double>(timeout_);
            const char* what = waiting_for_;
            const auto started = since_;
            changed_.wait_until(lock, std::chrono::time_point_cast<std::chrono::steady_clock::duration>(limit),
                                [&] { return stopping_ || waiting_for_ != what || since_ != started; });
            if (!stopping_ && waiting_for_ == what && since_ == started && std::chrono::steady_clock::now() >= limit) {
                std::fprintf(stderr,
                             "error: rank %d of %d: %s did not finish within %.0f s: another rank stopped or stalled; "
                             "ending the job (see --collective-timeout)\n",
                             rank_, size_, what, timeout_);
                std::fflush(stderr);
                std::_Exit(1);
            }
        }
    }

    MPI_Comm comm_;
    int rank_ = 0, size_ = 1;
    double timeout_;
    std::mutex mutex_;
    std::condition_variable changed_;
    const char* waiting_for_ = nullptr;  // the collective in progress, if any
    std::chrono::steady_clock::time_point since_;
    bool stopping_ = false;
    std::thread watchdog_;
    std::vector<std::byte> padded_, received_, mine_;  // the gradient sum's buffers, kept between calls
};

}  // namespace mpnet::dist
