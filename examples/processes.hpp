// The group of processes a program runs in: the MPI job when an MPI launcher started it (and
// the program was built with MPI), else this process alone (docs/distributed.md).
#pragma once
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "mpnet/dist/communicator.hpp"
#ifdef MPNET_WITH_MPI
#include "mpnet/dist/mpi_communicator.hpp"
#endif

namespace mpnet::cli {

// Runs work(communicator). An error on one rank of several ends the whole job, since the
// other ranks would wait for that one in vain; an AllRanksError, which every rank meets by
// itself, is printed by every rank before any of them exits.
template <class Work>
void with_processes(const char* program, double collective_timeout_s, Work&& work) {
#ifdef MPNET_WITH_MPI
    if (dist::launched_by_mpi()) {
        const dist::MpiSession session;
        dist::MpiCommunicator comm(collective_timeout_s);
        try {
            work(static_cast<dist::Communicator&>(comm));
        } catch (const dist::AllRanksError& e) {
            // Every rank prints before any exits: the launcher ends the job at the first exit,
            // and a rank that had not printed yet would be cut off.
            std::fprintf(stderr, "%s: error: %s\n", program, e.what());
            std::fflush(stderr);
            (void)comm.any(true);
            throw Reported{1};
        } catch (const std::exception& e) {
            if (comm.size() == 1) throw;
            std::fprintf(stderr, "%s: error on rank %d of %d: %s\n", program, comm.rank(), comm.size(), e.what());
            std::fflush(stderr);
            comm.abort(1);
        }
        return;
    }
#else
    (void)program, (void)collective_timeout_s;
    check(!dist::launched_by_mpi(), "started by an MPI launcher, but this ", program,
          " was built without MPI: it would run as independent copies. Rebuild with MPI (libopenmpi-dev) or run it "
          "without mpirun");
#endif
    work(static_cast<dist::Communicator&>(dist::SingleProcess::instance()));
}

// Every rank must run the same command (mpirun's `-np N program args`). Each rank passes how
// it differs from rank 0 ("" if not), in `what` (e.g. "settings"), with rank 0's value given
// first; if any differs, the job stops before any work, rank 0 naming each differing rank
// (the launcher may end the other ranks before they have printed anything).
inline void stop_unless_ranks_agree(dist::Communicator& comm, const std::string& difference, const std::string& what) {
    const std::vector<std::string> all = comm.gather_strings_to_root(difference);
    if (!comm.any(!difference.empty())) return;
    std::string message;
    for (std::size_t r = 0; r < all.size(); ++r)
        if (!all[r].empty())
            message += (message.empty() ? "" : "; ") + ("rank " + std::to_string(r) + " was started with other " + what +
                                                         " than rank 0 (" + all[r] + ", rank 0's value first)");
    if (comm.is_root()) throw dist::AllRanksError(message + "; every rank must run the same command");
    throw dist::AllRanksError("rank " + std::to_string(comm.rank()) + ": the ranks were started with different " + what +
                              " (rank 0 names them); every rank must run the same command");
}

// The command lines themselves, for a program whose ranks share nothing else: ranks given
// other arguments would each do their share of a different job, and the files rank 0
// writes would mix them. Names each rank's first differing argument.
inline void check_same_command(dist::Communicator& comm, const std::vector<std::string>& args) {
    if (comm.size() == 1) return;
    const auto root = nlohmann::json::parse(comm.broadcast(nlohmann::json(args).dump())).get<std::vector<std::string>>();
    std::string diff;
    for (std::size_t i = 0; diff.empty() && i < std::max(root.size(), args.size()); ++i) {
        auto at = [&](const std::vector<std::string>& a) { return i < a.size() ? "'" + a[i] + "'" : std::string("none"); };
        if (at(root) != at(args)) diff = "argument " + std::to_string(i + 1) + ": " + at(root) + " vs " + at(args);
    }
    stop_unless_ranks_agree(comm, diff, "arguments");
}

}  // namespace mpnet::cli
