// A training step and a sampler step keep their scalars on the backend: counted on the CPU,
// where the same code as on the GPU runs, they read nothing back to the host (on a GPU each
// read would wait for the stream and rule out capturing the step in a CUDA graph).
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "host_reads_cases.hpp"
#include "mpnet/backend/cpu/cpu.hpp"

using namespace mpnet;
using F = CpuTensor<float>;

TEST_CASE("host reads: counted for to_host and for every kernel that returns a value") {
    F x(Shape{4});
    fill(CpuBackend{}, x, 1.0f);
    const uint64_t before = host_reads();
    (void)x.to_host();
    (void)sum(CpuBackend{}, x);
    (void)dot(CpuBackend{}, x, x);
    F d(Shape{1, 1, 2, 2}), dD(Shape{1, 1, 2, 2}), s(Shape{1}), lv(Shape{1}), dlv(Shape{1});
    fill(CpuBackend{}, d, 0.5f), fill(CpuBackend{}, s, 1.0f), fill(CpuBackend{}, lv, 0.0f);
    (void)edm2_loss(CpuBackend{}, d, d, s, lv, 0.5, 1.0, dD, dlv);
    CHECK(host_reads() - before == 4);
    CpuTensor<double> total(Shape{1});
    edm2_loss(CpuBackend{}, d, d, s, lv, 0.5, 1.0, dD, dlv, total);  // the sum stays on the backend
    F g(Shape{1});
    fill(CpuBackend{}, g, 0.0f);
    dot_accumulate(CpuBackend{}, x, x, 2.0, g);
    x.data()[1] = NAN, x.data()[2] = -INFINITY;
    clear_nonfinite(CpuBackend{}, x);
    CHECK(host_reads() - before == 4);
    CHECK(g.to_host()[0] == 2.0f);
    CHECK(x.to_host() == std::vector<float>{1, 0, 0, 1});  // non-finite values zeroed, the rest kept
}

TEST_CASE("host reads: a whole training step makes none") { test::check_training_step_reads_nothing<CpuBackend>(); }

TEST_CASE("host reads: guided sampling with churn makes none") { test::check_sampling_reads_nothing<CpuBackend>(); }
