// The parameter arena: every value and gradient a 64-byte-aligned view into one flat buffer,
// in visit order; and an optimizer step plus EMA update over the flat buffers that equals,
// bit for bit, the same step taken one parameter at a time.
#include <cstdint>
#include <cstring>
#include <map>

#include "golden.hpp"
#include "mpnet/nn/precond.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/ema.hpp"

using namespace mpnet;

namespace {

template <class T>
bool same_bytes(const CpuTensor<T>& a, const CpuTensor<T>& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

// Offset of `view` in `flat`, in elements, checking it lies inside.
template <class T>
int64_t offset_in(const CpuTensor<T>& flat, const CpuTensor<T>& view) {
    const int64_t offset = view.data() - flat.data();
    CHECK(offset >= 0);
    CHECK(offset + view.numel() <= flat.numel());
    return offset;
}

}  // namespace

TEST_CASE_TEMPLATE("param arena: values and gradients are aligned views in visit order, padding zero", T, float, double) {
    nn::Precond<T, CpuBackend> net(test::golden_unet_config(), 3);
    const CpuTensor<T>& values = net.flat_values();
    const CpuTensor<T>& grads = net.flat_grads();
    REQUIRE(values.numel() == grads.numel());
    std::vector<bool> covered(size_t(values.numel()), false);
    int64_t end = 0, count = 0;
    net.visit([&](const std::string& name, nn::Param<T, CpuBackend>& p) {
        CAPTURE(name);
        const int64_t offset = offset_in(values, p.value);
        CHECK(offset_in(grads, p.grad) == offset);
        CHECK(offset >= end);  // in visit order, no overlap
        CHECK(offset * int64_t(sizeof(T)) % 64 == 0);
        CHECK(reinterpret_cast<std::uintptr_t>(p.value.data()) % 64 == 0);
        CHECK(reinterpret_cast<std::uintptr_t>(p.grad.data()) % 64 == 0);
        CHECK(offset - end < int64_t(64 / sizeof(T)));  // padding only up to the next boundary
        for (int64_t i = offset; i < offset + p.value.numel(); ++i) covered[size_t(i)] = true;
        end = offset + p.value.numel();
        ++count;
    });
    CHECK(count == int64_t(net.arena().layout().entries.size()));
    CHECK(end == values.numel());
    for (int64_t i = 0; i < values.numel(); ++i)
        if (!covered[size_t(i)]) {
            CAPTURE(i);
            CHECK(values.data()[i] == T(0));
            CHECK(grads.data()[i] == T(0));
        }
}

TEST_CASE_TEMPLATE("param arena: fused Adam and EMA steps equal per-parameter steps bit for bit", T, float, double) {
    using TT = CpuTensor<T>;
    nn::Precond<T, CpuBackend> net(test::golden_unet_config(), 4);
    const std::vector<double> sigma_rels{0.05, 0.1};
    train::Adam<T, CpuBackend> adam(net);
    train::PowerEma<T, CpuBackend> ema(sigma_rels, net.arena().layout(), net.flat_values());

    // The reference: every parameter's value, gradient, moments and profiles as tensors of their own.
    struct Ref {
        std::string name;
        TT value, grad, m, v;
        std::vector<TT> ema;
    };
    std::vector<Ref> ref;
    net.visit([&](const std::string& name, nn::Param<T, CpuBackend>& p) {
        ref.push_back({name, p.value.clone(), TT(p.value.shape()), TT::zeros(p.value.shape()),
                       TT::zeros(p.value.shape()), {p.value.clone(), p.value.clone()}});
    });

    const double batch = 64;
    for (int64_t step = 1; step <= 3; ++step) {
        const double lr = 0.01 / double(step), nimg = double(step) * batch;
        net.zero_grad();
        size_t i = 0;
        net.visit([&](const std::string&, nn::Param<T, CpuBackend>& p) {
            fill_normal(CpuBackend{}, p.grad, uint64_t(100 * step) + i, 0);
            ref[i++].grad.copy_from(p.grad);
        });
        adam.step(lr);
        ema.update(net.flat_values(), nimg, batch);
        for (Ref& r : ref) {
            const auto c = CpuTensor<double>::from_host(Shape{3}, train::adam_step_coefficients(lr, 0.9, 0.99, step));
            adam_step(CpuBackend{}, r.value, r.grad, r.m, r.v, c, 0.9, 0.99, 1e-8);
            for (size_t k = 0; k < sigma_rels.size(); ++k) {
                const double beta = phema::beta_from_exp(phema::std_to_exp(sigma_rels[k]), nimg, batch);
                axpby(CpuBackend{}, T(1 - beta), r.value, T(beta), r.ema[k]);
            }
        }
    }

    size_t i = 0;
    net.visit([&](const std::string& name, nn::Param<T, CpuBackend>& p) {
        CAPTURE(name);
        CHECK(same_bytes(p.value, ref[i++].value));
    });
    std::map<std::string, TT> moments;
    adam.visit_state("", [&](const std::string& name, const TT& t) { moments.emplace(name, t); });
    REQUIRE(moments.size() == 2 * ref.size());
    for (const Ref& r : ref) {
        CAPTURE(r.name);
        CHECK(same_bytes(moments.at("m." + r.name), r.m));
        CHECK(same_bytes(moments.at("v." + r.name), r.v));
    }
    for (size_t k = 0; k < sigma_rels.size(); ++k) {
        const auto& profile = ema.profile(k);
        REQUIRE(profile.size() == ref.size());
        for (size_t j = 0; j < ref.size(); ++j) {
            CAPTURE(ref[j].name);
            CHECK(profile[j].first == ref[j].name);
            CHECK(same_bytes(profile[j].second, ref[j].ema[k]));
        }
    }
}
