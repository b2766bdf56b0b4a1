// The data-parallel gradient sum (docs/distributed.md): MpiCommunicator::sum on a float buffer
// of each preset's parameter count, the step's only exchange. Run it under the launcher:
//   mpirun -np 2 build/release/bench/bench_gradient_sum
// Every rank runs the same fixed iteration counts (an adaptive count could differ between
// ranks and leave one waiting); rank 0 reports.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>
#include <vector>

#include "mpnet/dist/mpi_communicator.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/presets.hpp"

using namespace mpnet;

namespace {

dist::MpiCommunicator* comm = nullptr;

void BM_GradientSum(benchmark::State& state, int64_t numel) {
    std::vector<float> grads(static_cast<size_t>(numel), 1.0f);
    for (auto _ : state) {
        comm->sum(std::span<float>(grads));
        benchmark::DoNotOptimize(grads.data());
    }
    const double bytes = double(numel) * sizeof(float);
    state.counters["MB"] = bytes / 1e6;
    state.counters["ranks"] = comm->size();
    state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
}

// The parameter counts of the presets the sum is timed for (the arena adds at most a few
// floats of alignment padding per tensor).
void register_presets() {
    for (const char* name : {"fmnist-s", "edm2-img64-s", "edm2-img512-xs", "edm2-img512-s"}) {
        nn::NetworkConfig cfg = nn::find_preset(name).net;
        if (cfg.img_resolution == 0) cfg.img_resolution = 64;
        const int64_t numel = nn::network_cost(cfg).params;
        benchmark::RegisterBenchmark((std::string("BM_GradientSum/") + name).c_str(), BM_GradientSum, numel)
            ->Iterations(numel > 20'000'000 ? 5 : 20)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
}

class Silent : public benchmark::BenchmarkReporter {
public:
    bool ReportContext(const Context&) override { return true; }
    void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
    const dist::MpiSession session;
    dist::MpiCommunicator c(600);
    comm = &c;
    benchmark::Initialize(&argc, argv);
    register_presets();
    if (c.is_root()) {
        benchmark::RunSpecifiedBenchmarks();
    } else {
        Silent silent;
        benchmark::RunSpecifiedBenchmarks(&silent);
    }
    benchmark::Shutdown();
}
