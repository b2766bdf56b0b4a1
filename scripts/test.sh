#!/usr/bin/env bash
# Installs what is missing, builds everything (Release) and runs every test with ctest.
#   scripts/test.sh --sanitize   the same suite built with AddressSanitizer + UBSan instead
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

if [ "${1:-}" = "--sanitize" ]; then
    cmake -S . -B build/sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPNET_SANITIZE=ON \
          -DMPNET_BUILD_BENCH=OFF -DMPNET_CUDA=OFF -DMPNET_MPI=OFF
    cmake --build build/sanitize -j "$jobs"
    exec ctest --test-dir build/sanitize --output-on-failure -j "$jobs"
fi

# MPI is required here, so that the data-parallel tests (tests/test_mpi.cpp) always run.
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DMPNET_MPI=ON
cmake --build build/release -j "$jobs"
exec ctest --test-dir build/release --output-on-failure -j "$jobs"
