// Adam over every parameter of a network (betas 0.9/0.99, eps 1e-8, no weight decay, as
// EDM2 trains), with its state saved into and restored from training checkpoints.
//
// A step is staged, then applied: stage() counts the step and writes its learning rate and
// bias corrections into a small tensor on the backend, apply() launches the one fused kernel,
// which reads them there. apply() thus passes nothing that changes from step to step as a
// kernel argument, and a CUDA graph that recorded it once replays every step correctly.
#pragma once
#include <array>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/io/safetensors.hpp"
#include "mpnet/nn/param_arena.hpp"
#include "mpnet/train/host_staging.hpp"

namespace mpnet::train {

struct AdamOptions {
    double beta1 = 0.9, beta2 = 0.99, eps = 1e-8;
};

// What the adam_step kernel reads for step t (counted from 1): [lr, 1 - beta1^t, 1 - beta2^t].
inline std::array<double, 3> adam_step_coefficients(double lr, double beta1, double beta2, int64_t t) {
    return {lr, 1 - std::pow(beta1, double(t)), 1 - std::pow(beta2, double(t))};
}

template <Scalar T, Backend B>
class Adam {
public:
    using TensorT = Tensor<T, B>;

    // Registers the parameters a network visits, through its arena (one is built for a network
    // without one); the moments start at zero and share the arena's layout, so that a step is
    // one fused kernel call. The kernel is elementwise and the padding stays zero (a zero
    // gradient and zero moments move nothing), so this equals one call per parameter bit for bit.
    template <class Net>
    explicit Adam(Net& net, AdamOptions opts = {})
        : opts_(opts), arena_(nn::arena_of<T, B>(net)), m_(TensorT::zeros(arena_.values().shape())),
          v_(TensorT::zeros(arena_.values().shape())), m_views_(arena_.layout().views(m_)),
          v_views_(arena_.layout().views(v_)) {}

    void step(double lr) {
        stage(lr);
        apply();
    }
    // The next step's count and coefficients, written to the backend by `upload`
    // (train/host_staging.hpp; by default a copy that waits for the device).
    template <class Upload = CopyFromHost>
    void stage(double lr, Upload&& upload = Upload{}) {
        const std::array<double, 3> c = adam_step_coefficients(lr, opts_.beta1, opts_.beta2, step_ + 1);
        upload(coefficients_, std::span<const double>(c));
        ++step_;
    }
    // What stage() uploads.
    static constexpr std::size_t staged_bytes = 3 * sizeof(double);
    // The staged step: reads the coefficients on the backend, nothing from the host.
    void apply() {
        adam_step(B{}, arena_.values(), arena_.grads(), m_, v_, coefficients_, opts_.beta1, opts_.beta2, opts_.eps);
    }

    [[nodiscard]] int64_t steps() const { return step_; }

    // The moments as flat buffers in the arena's layout, and the step count: what another
    // process needs to continue with the same state.
    [[nodiscard]] std::pair<TensorT&, TensorT&> moments() { return {m_, v_}; }
    void set_steps(int64_t steps) { step_ = steps; }

    // Calls f(name, tensor) for every moment tensor save_state stores (beside `<prefix>step`).
    template <class F>
    void visit_state(const std::string& prefix, F&& f) const {
        for (std::size_t i = 0; i < m_views_.size(); ++i) {
            f(prefix + "m." + m_views_[i].first, m_views_[i].second);
            f(prefix + "v." + v_views_[i].first, v_views_[i].second);
        }
    }

    void save_state(io::SafetensorsWriter& w, const std::string& prefix) const {
        visit_state(prefix, [&](const std::string& name, const TensorT& t) { add(w, name, t); });
        const std::vector<int64_t> step{step_};
        w.add<int64_t>(prefix + "step", {1}, step);
    }
    void load_state(const io::SafetensorsFile& f, const std::string& prefix) {
        for (std::size_t i = 0; i < m_views_.size(); ++i) {
            read(f, prefix + "m." + m_views_[i].first, m_views_[i].second);
            read(f, prefix + "v." + v_views_[i].first, v_views_[i].second);
        }
        step_ = f.read<int64_t>(prefix + "step").at(0);
    }

private:
    static void add(io::SafetensorsWriter& w, const std::string& name, const TensorT& t) {
        const auto host = t.to_host();
        w.add<T>(name, t.shape().vec(), std::span<const T>(host));
    }
    static void read(const io::SafetensorsFile& f, const std::string& name, TensorT& t) {
        f.check_shape(name, t.shape().vec());
        t.copy_from_host(f.read<T>(name));
    }

    AdamOptions opts_;
    nn::ParamArena<T, B> arena_;
    TensorT m_, v_;                              // the moments, laid out as the arena
    std::vector<std::pair<std::string, TensorT>> m_views_, v_views_;  // named, for checkpoints
    Tensor<double, B> coefficients_{Shape{3}};  // the staged step's, read by adam_step
    int64_t step_ = 0;
};

}  // namespace mpnet::train
