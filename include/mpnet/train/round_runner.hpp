// How the trainer runs the computation of one round (forward, loss and backward of one chunk).
//
// The trainer stages a round's inputs first (the batch, sigma and noise into buffers that
// keep their addresses for the trainer's lifetime, the dropout seed into the network's seed
// on the backend), then hands the computation to a RoundRunner. The computation reads only
// those buffers and the network's state, and writes the parameter gradients (zeroed first)
// and one loss slot: running it again gives the same result. That is what lets a runner
// capture it once as a CUDA graph and replay it every round (train/cuda_graph_rounds.cuh);
// without a runner the trainer calls it directly. On the CPU a test runs every round twice
// (idempotence); that a round passes no per-round value to a kernel by argument, which a
// replay would freeze, only the CUDA test of replayed against plain rounds checks.
#pragma once
#include <functional>

namespace mpnet::train {

class RoundRunner {
public:
    virtual ~RoundRunner() = default;
    // Runs `compute`, or what an earlier call to it recorded.
    virtual void run(const std::function<void()>& compute) = 0;
};

}  // namespace mpnet::train
