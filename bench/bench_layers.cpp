// The layer benchmarks of bench/layers.hpp on the CPU: wall-clock time per call, rates with
// their fraction of the machine's measured peak (GFLOP/s against the FMA peak, GB/s against
// the copy bandwidth at that working-set size).
#include <functional>
#include <string>
#include <utility>

#include "common.hpp"
#include "layers.hpp"

namespace {

using namespace mpnet;
using benchmark::State;

struct CpuHarness {
    using backend = CpuBackend;
    static void add(const std::string& name, const bench::BenchPreset& p, std::function<void(State&)> fn) {
        bench::add(name, p, std::move(fn));
    }
    // One thread pool does all work: matrix layers are registered like the others.
    static void add_matrix(const std::string& name, const bench::BenchPreset& p, std::function<void(State&)> fn) {
        bench::add(name, p, std::move(fn));
    }
    template <class F>
    static void time(State& st, F&& step) {
        for (auto _ : st) step();
    }
    static void report_flops(State& st, double flops) { bench::report_flops(st, flops); }
    static void report_bytes(State& st, double bytes) { bench::report_bytes(st, bytes); }
};

bool register_all() {
    for (const auto& p : bench::bench_presets) bench::register_layers<CpuHarness>(p);
    return true;
}
const bool registered = register_all();

}  // namespace
