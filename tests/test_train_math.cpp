// The learning-rate schedule against the reference (schedule.safetensors), and Adam
// against a direct evaluation of its update rule.
#include "golden.hpp"
#include "mpnet/nn/precond.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/schedule.hpp"

using namespace mpnet;

TEST_CASE("golden: learning-rate schedule with and without ramp-up") {
    const auto& f = test::golden("schedule.safetensors");
    const auto nimg = f.read<double>("cur_nimg");
    for (auto [name, rampup] : {std::pair{"rampup10.lr", 10e6}, std::pair{"rampup0.lr", 0.0}}) {
        const auto ref = f.read<double>(name);
        for (size_t i = 0; i < nimg.size(); ++i) {
            CAPTURE(nimg[i]);
            CHECK(train::learning_rate(nimg[i], 2048, 0.012, 70000, rampup) == doctest::Approx(ref[i]).epsilon(1e-12));
        }
    }
}

namespace {
struct OneParam {
    nn::Param<double, CpuBackend> p{Shape{3}};
    template <class F>
    void visit(F&& f) {
        f("p", p);
    }
};
}  // namespace

TEST_CASE("Adam follows its update rule with bias correction") {
    OneParam net;
    const std::vector<double> x0{1, -2, 3}, g{0.5, -1, 2};
    net.p.value = CpuTensor<double>::from_host(Shape{3}, x0);
    net.p.grad = CpuTensor<double>::from_host(Shape{3}, g);
    train::Adam<double, CpuBackend> adam(net);
    adam.step(0.1);
    adam.step(0.1);
    // Two steps with the same gradient: m_hat = g, v_hat = g^2, so each step moves by lr * sign(g).
    for (int i = 0; i < 3; ++i)
        CHECK(net.p.value.data()[i] == doctest::Approx(x0[size_t(i)] - 0.2 * (g[size_t(i)] > 0 ? 1 : -1)).epsilon(1e-6));
}
