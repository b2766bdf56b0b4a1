// How the trainer runs the device work of a training step, part by part.
//
// The trainer stages each part's inputs first, then hands its device work to a StepRunner:
//   normalize  forced weight normalisation, once per step;
//   round      forward, loss and backward of one chunk of the batch (one per chunk); its
//              inputs (the batch, sigma and noise) are staged into buffers that keep their
//              addresses for the trainer's lifetime, the dropout seed into the network's
//              seed on the backend;
//   update     the non-finite gradients cleared, Adam, and the EMA on the process that
//              keeps it; Adam's learning rate and bias corrections and the EMA's
//              coefficients are staged on the backend (train/adam.hpp, train/ema.hpp);
//   step       all three in one, when the step is one round on one process: nothing then
//              runs between them.
// Otherwise, between the parts, the trainer copies each round's loss out and sums the
// gradients over chunks and processes. A part reads only its staged buffers and the training
// state, and passes no value that changes from step to step to a kernel by argument. That is
// what lets a runner capture each part once as a CUDA graph and replay it
// (train/cuda_graph_steps.cuh); without a runner the trainer calls the parts directly.
//
// Nor may a part wait for the device or move data to or from the host: no copy_from_host,
// to_host, sum or dot, no edm2_loss that returns its sum, no upload through the staging
// slots (which refuse one while their stream is captured), no normalize over dimensions that
// are not adjacent (its group list is uploaded and refuses too).
//
// A round also gives the same result when run again (it zeroes the gradients before writing
// them and writes its loss sum to one fixed slot, which the trainer copies out after it), which
// a CPU test checks by running every round twice; the other
// parts change the state they read, so they run once. That a part passes no per-step value
// by argument, which a replay would freeze, only the CUDA test of replayed against plain
// steps checks.
#pragma once
#include <functional>

namespace mpnet::train {

enum class StepPart { step, normalize, round, update };
inline constexpr int step_parts = 4;

class StepRunner {
public:
    virtual ~StepRunner() = default;
    // Runs `work`, the device work of `part`, or what an earlier call for that part recorded.
    virtual void run(StepPart part, const std::function<void()>& work) = 0;
};

}  // namespace mpnet::train
