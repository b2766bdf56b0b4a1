// How long idle OpenMP threads spin before they sleep, bounded for the programs.
//
// By default an idle GNU OpenMP thread spins for about 300 000 iterations (a fraction of a
// millisecond) at every barrier before it sleeps. On a machine shared with another busy
// program, a thread whose partner was descheduled burns its core spinning, and two OpenMP
// programs on 2 cores slowed each other down 7x (docs/performance.md). 10 000 iterations keep
// a quiet machine's speed (within 1 %) and bring two trainers side by side to 1.2x their fair
// share. The runtime reads the setting once, when it loads, so a program that finds it unset
// sets it and starts itself again; a setting the user gave (OMP_WAIT_POLICY, GOMP_SPINCOUNT,
// KMP_BLOCKTIME) is left alone.
#pragma once
#include <unistd.h>

#include <cstdlib>

namespace mpnet::cli {

inline void bound_openmp_spinning(char** argv) {
    for (const char* name : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"})
        if (std::getenv(name)) return;
    ::setenv("GOMP_SPINCOUNT", "10000", 1);
    ::setenv("KMP_BLOCKTIME", "1", 1);  // LLVM's runtime: milliseconds
    ::execv("/proc/self/exe", argv);
    // Not restarted (no /proc): run with the runtime's defaults; the variables set above only
    // reach child processes.
}

}  // namespace mpnet::cli
