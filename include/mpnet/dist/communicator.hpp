// What the trainer and the sampler need from a group of cooperating processes, whatever
// carries the messages: their number and rank, a gradient sum in tree order (tree_order.hpp),
// gathering small values, and rank 0 telling the others. A single process is a group of one
// (SingleProcess); MpiCommunicator (mpi_communicator.hpp) runs over MPI.
//
// Every call is collective: all ranks make the same calls in the same order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::dist {

// An error every rank detects and reports by itself (options that differ between ranks, say):
// no rank needs to stop the others, and each exits with its own message.
class AllRanksError : public Error {
public:
    using Error::Error;
};

// Whether an MPI launcher (mpirun, mpiexec, srun with PMI or PMIx) started this process.
// Programs initialise MPI only then, so that one started by hand never needs an MPI runtime.
[[nodiscard]] inline bool launched_by_mpi() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
        if (std::getenv(name)) return true;
    return false;
}

class Communicator {
public:
    virtual ~Communicator() = default;
    [[nodiscard]] virtual int rank() const = 0;
    [[nodiscard]] virtual int size() const = 0;

    // Replaces `values` on every rank by their sum over the ranks, each element added in the
    // tree order over ranks (tree_order.hpp): the same bits on every rank and in every run.
    virtual void sum(std::span<float> values) = 0;
    virtual void sum(std::span<double> values) = 0;

    // Every rank's `mine` (each rank gives as many values), concatenated in rank order, on every rank.
    [[nodiscard]] virtual std::vector<double> gather(std::span<const double> mine) = 0;

    // Every rank's bytes (any length, each rank its own) on rank 0, one entry per rank in rank
    // order; nothing elsewhere.
    [[nodiscard]] virtual std::vector<std::vector<std::byte>> gather_to_root(std::span<const std::byte> mine) = 0;

    // Rank 0's bytes on every rank (each rank passes a buffer of the same size).
    virtual void broadcast(std::span<std::byte> bytes) = 0;

    [[nodiscard]] bool is_root() const { return rank() == 0; }

    // Every rank's values concatenated in rank order, on rank 0; empty elsewhere.
    [[nodiscard]] std::vector<float> gather_floats_to_root(std::span<const float> mine) {
        std::vector<float> out;
        for (const auto& part : gather_to_root(std::as_bytes(mine))) {
            const std::size_t at = out.size();
            out.resize(at + part.size() / sizeof(float));
            if (!part.empty()) std::memcpy(out.data() + at, part.data(), part.size());
        }
        return out;
    }

    // Every rank's string on rank 0, in rank order; empty elsewhere.
    [[nodiscard]] std::vector<std::string> gather_strings_to_root(const std::string& mine) {
        std::vector<std::string> out;
        for (const auto& part : gather_to_root(std::as_bytes(std::span(mine.data(), mine.size()))))
            out.emplace_back(reinterpret_cast<const char*>(part.data()), part.size());
        return out;
    }

    // Rank 0's string on every rank.
    std::string broadcast(const std::string& text) {
        uint64_t length = text.size();
        broadcast(std::as_writable_bytes(std::span(&length, 1)));
        std::string out = is_root() ? text : std::string(length, '\0');
        broadcast(std::as_writable_bytes(std::span(out.data(), out.size())));
        return out;
    }

    // Rank 0's value of a trivially copyable object on every rank.
    template <class V>
    void broadcast_value(V& value) {
        broadcast(std::as_writable_bytes(std::span(&value, 1)));
    }

    // Whether `flag` is true on any rank.
    [[nodiscard]] bool any(bool flag) {
        const double mine = flag ? 1 : 0;
        for (const double v : gather(std::span(&mine, 1)))
            if (v != 0) return true;
        return false;
    }
};

// One process on its own: every collective is the identity.
class SingleProcess final : public Communicator {
public:
    using Communicator::broadcast;  // the string overload too
    [[nodiscard]] int rank() const override { return 0; }
    [[nodiscard]] int size() const override { return 1; }
    void sum(std::span<float>) override {}
    void sum(std::span<double>) override {}
    [[nodiscard]] std::vector<double> gather(std::span<const double> mine) override {
        return {mine.begin(), mine.end()};
    }
    [[nodiscard]] std::vector<std::vector<std::byte>> gather_to_root(std::span<const std::byte> mine) override {
        return {std::vector<std::byte>(mine.begin(), mine.end())};
    }
    void broadcast(std::span<std::byte>) override {}

    static SingleProcess& instance() {
        static SingleProcess p;
        return p;
    }
};

}  // namespace mpnet::dist
