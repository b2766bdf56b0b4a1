// Adam over every parameter of a network (betas 0.9/0.99, eps 1e-8, no weight decay, as
// EDM2 trains), with its state saved into and restored from training checkpoints.
#pragma once
#include <string>
#include <vector>

#include "mpnet/io/safetensors.hpp"
#include "mpnet/nn/param.hpp"

namespace mpnet::train {

struct AdamOptions {
    double beta1 = 0.9, beta2 = 0.99, eps = 1e-8;
};

template <Scalar T, Backend B>
class Adam {
public:
    using TensorT = Tensor<T, B>;

    // Registers the parameters a network visits; the moments start at zero.
    template <class Net>
    explicit Adam(Net& net, AdamOptions opts = {}) : opts_(opts) {
        net.visit([&](const std::string& name, nn::Param<T, B>& p) {
            slots_.push_back({name, &p, TensorT::zeros(p.value.shape()), TensorT::zeros(p.value.shape())});
        });
    }

    void step(double lr) {
        ++step_;
        for (auto& s : slots_) adam_step(B{}, s.param->value, s.param->grad, s.m, s.v, lr, opts_.beta1, opts_.beta2,
                                         opts_.eps, step_);
    }
    [[nodiscard]] int64_t steps() const { return step_; }

    // Calls f(name, tensor) for every moment tensor save_state stores (beside `<prefix>step`).
    template <class F>
    void visit_state(const std::string& prefix, F&& f) const {
        for (const auto& s : slots_) {
            f(prefix + "m." + s.name, s.m);
            f(prefix + "v." + s.name, s.v);
        }
    }

    void save_state(io::SafetensorsWriter& w, const std::string& prefix) const {
        visit_state(prefix, [&](const std::string& name, const TensorT& t) { add(w, name, t); });
        const std::vector<int64_t> step{step_};
        w.add<int64_t>(prefix + "step", {1}, step);
    }
    void load_state(const io::SafetensorsFile& f, const std::string& prefix) {
        for (auto& s : slots_) {
            read(f, prefix + "m." + s.name, s.m);
            read(f, prefix + "v." + s.name, s.v);
        }
        step_ = f.read<int64_t>(prefix + "step").at(0);
    }

private:
    struct Slot {
        std::string name;
        nn::Param<T, B>* param;
        TensorT m, v;
    };
    static void add(io::SafetensorsWriter& w, const std::string& name, const TensorT& t) {
        const auto host = t.to_host();
        w.add<T>(name, t.shape().vec(), std::span<const T>(host));
    }
    static void read(const io::SafetensorsFile& f, const std::string& name, TensorT& t) {
        f.check_shape(name, t.shape().vec());
        const auto v = f.read<T>(name);
        B::copy_from_host(t.data(), v.data(), t.bytes());
    }

    AdamOptions opts_;
    std::vector<Slot> slots_;
    int64_t step_ = 0;
};

}  // namespace mpnet::train
