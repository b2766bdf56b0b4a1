// The group of processes a program runs in: the MPI job when an MPI launcher started it (and
// the program was built with MPI), else this process alone (docs/distributed.md).
#pragma once
#include <cstdio>
#include <exception>

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

}  // namespace mpnet::cli
