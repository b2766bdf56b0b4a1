// The whole EDM2 denoiser: an inference forward (no context kept) and a full training step
// as the trainer runs it: noise levels and noise drawn, forced weight normalisation and
// the forward with the uncertainty head, the EDM2 loss, backward, non-finite gradients
// zeroed, and an Adam step. Counters: images per second, GFLOP/s (2 FLOPs per forward
// multiply-add, 6 for a training step), the memory pool's peak (every live tensor:
// parameters, gradients, Adam moments, the batch and the activations) next to what is
// live between steps, and the growth of the process's resident set over the benchmark
// (comparable with PyTorch's; meaningful when the benchmark runs alone in its process,
// as bench/compare.py runs it). Each row also runs with bf16 convolution operands (/bf16).
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <vector>

#include "common.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/precond.hpp"
#include "mpnet/train/adam.hpp"
#include "mpnet/train/schedule.hpp"

namespace {

using namespace mpnet;
using namespace mpnet::bench;
using benchmark::Counter;
using benchmark::State;
// A is the activations' storage: float, or float16 / bfloat16 (--precision).
template <class A>
using Net = nn::Precond<float, CpuBackend, A>;

// A batch of images ~ N(0, sigma_data^2) and one-hot labels of classes 0, 1, 2, ...
struct Batch {
    F images, labels;
    Batch(const nn::NetworkConfig& cfg, int64_t n)
        : images(filled({n, cfg.img_channels, cfg.img_resolution, cfg.img_resolution}, 5, cfg.sigma_data)),
          labels(F::zeros({n, std::max<int64_t>(cfg.label_dim, 1)})) {
        for (int64_t i = 0; cfg.label_dim && i < n; ++i) labels.data()[i * cfg.label_dim + i % cfg.label_dim] = 1;
    }
};

constexpr double mib = 1 << 20;

double resident_mib() {
    std::ifstream statm("/proc/self/statm");
    double pages = 0, resident = 0;
    statm >> pages >> resident;
    return resident * double(sysconf(_SC_PAGESIZE)) / mib;
}
double max_resident_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) * 1024 / mib;
}

// The resident set and its high-water mark when a benchmark starts.
struct Rss {
    double start = resident_mib(), high_before = max_resident_mib();
};

void report_memory(State& st, std::size_t live_between_steps, const Rss& rss) {
    st.counters["peak_MiB"] = double(CpuBackend::peak_bytes()) / mib;
    st.counters["state_MiB"] = double(live_between_steps) / mib;
    const auto& pool = cpu::MemoryPool::instance();
    st.counters["pool_held_MiB"] = double(pool.bytes_held()) / mib;
    // Only a benchmark that raised the process's high-water mark can say how far it raised it.
    const double high = max_resident_mib();
    if (high > rss.high_before) st.counters["rss_growth_MiB"] = high - rss.start;
}

template <class A>
void inference(State& st, const BenchPreset& p) {
    const Rss rss;
    const auto cfg = nn::find_preset(p.name).net;
    Net<A> net(cfg, 1);
    const Batch batch(cfg, p.batch);
    std::vector<float> s(static_cast<size_t>(p.batch));
    for (size_t i = 0; i < s.size(); ++i) s[i] = float(std::exp(-1.2 + 1.2 * rng::normal(7, i)));
    const F sigma = F::from_host({p.batch}, s);
    const std::size_t live = cpu::MemoryPool::instance().bytes_in_use();
    cpu::MemoryPlan plan;  // as the sampler evaluates its network: activations in one planned arena
    const auto evaluate = [&] {
        const cpu::MemoryPlan::Region region(plan);
        return net.forward(batch.images, sigma, batch.labels, {}, false).D;
    };
    evaluate();  // records the plan
    evaluate();  // touches its arena's pages, as every later evaluation finds them
    CpuBackend::reset_peak();
    for (auto _ : st) benchmark::DoNotOptimize(evaluate().data());
    st.counters["arena_MiB"] = double(plan.arena_bytes()) / mib;
    report_memory(st, live, rss);  // before the peak yardsticks are measured, which need memory of their own
    report_flops(st, 2.0 * double(p.batch) * nn::network_cost(cfg).macs);
    st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
}

// One optimisation step of the EDM2 recipe on a fixed batch.
template <class A>
class Trainer {
public:
    explicit Trainer(const BenchPreset& p)
        : preset_(nn::find_preset(p.name)), n_(p.batch), net_(preset_.net, 1), adam_(net_),
          batch_(preset_.net, p.batch), noisy_(batch_.images.shape()), noise_(batch_.images.shape()),
          dD_(batch_.images.shape()), dlogvar_({p.batch}) {}

    void step() {
        const cpu::MemoryPlan::Region region(memory_plan_);
        const auto& t = preset_.train;
        const uint64_t seed = rng::substream(11, uint64_t(steps_));
        // sigma = exp(P_mean + P_std N(0, 1)), noisy = images + sigma N(0, 1)
        std::vector<float> s(static_cast<size_t>(n_));
        for (size_t i = 0; i < s.size(); ++i) s[i] = float(std::exp(t.P_mean + t.P_std * rng::normal(seed, i)));
        const F sigma = F::from_host({n_}, s);
        fill_normal(CpuBackend{}, noise_, seed, uint64_t(n_));
        const Shape per_image{n_, 1, noise_.shape().numel_from(1)};
        F scaled = noisy_.view(per_image);
        scale_channels_forward(CpuBackend{}, noise_.view(per_image), sigma, scaled);
        axpby(CpuBackend{}, 1.0f, batch_.images, 1.0f, noisy_);

        net_.zero_grad();
        typename Net<A>::Context ctx;
        const auto out = net_.forward(noisy_, sigma, batch_.labels, {true, seed}, true, &ctx);
        edm2_loss(CpuBackend{}, out.D, batch_.images, sigma, out.logvar, preset_.net.sigma_data, 1.0 / double(n_), dD_,
                  dlogvar_, loss_);
        net_.backward(dD_, dlogvar_, ctx);
        clear_nonfinite(CpuBackend{}, net_.flat_grads());
        ++steps_;
        const double nimg = double(steps_ * n_);
        adam_.step(train::learning_rate(nimg, double(n_), t.lr, t.decay, t.rampup_mimg * 1e6));
    }
    [[nodiscard]] const nn::NetworkConfig& config() const { return preset_.net; }
    [[nodiscard]] const cpu::MemoryPlan& memory_plan() const { return memory_plan_; }

private:
    nn::Preset preset_;
    int64_t n_, steps_ = 0;
    Net<A> net_;
    train::Adam<float, CpuBackend> adam_;
    Batch batch_;
    F noisy_, noise_, dD_, dlogvar_;
    CpuTensor<double> loss_{Shape{1}};
    cpu::MemoryPlan memory_plan_;
};

template <class A>
void training_step(State& st, const BenchPreset& p) {
    const Rss rss;
    Trainer<A> trainer(p);
    trainer.step();  // records the memory plan
    trainer.step();  // touches its arena's pages, as every later step finds them
    const std::size_t live = cpu::MemoryPool::instance().bytes_in_use();
    CpuBackend::reset_peak();
    for (auto _ : st) trainer.step();
    report_memory(st, live, rss);
    st.counters["arena_MiB"] = double(trainer.memory_plan().arena_bytes()) / mib;
    report_flops(st, 6.0 * double(p.batch) * nn::network_cost(trainer.config()).macs);
    st.counters["img/s"] = Counter(double(p.batch), Counter::kIsIterationInvariantRate);
}

// fn under the given math; a bf16 row on a machine without it is reported as skipped.
template <class Fn>
auto with_math(cpu::Math math, Fn fn) {
    return [math, fn](State& st) {
        if (math == cpu::Math::bf16 && !cpu::bf16_unavailable().empty()) {
            st.SkipWithError(("bf16 not available: " + cpu::bf16_unavailable()).c_str());
            for (auto _ : st) break;  // a skipped benchmark must still enter its loop
            return;
        }
        const cpu::MathScope scope(math);
        fn(st);
    };
}

// Rows without a suffix run float32; rows ending /bf16 run the convolutions on bf16 operands;
// rows ending /act-fp16 or /act-bf16 store the activations in 16 bits (float32 math).
bool register_all() {
    for (const auto& p : bench_presets) {
        for (const cpu::Math math : {cpu::Math::fp32, cpu::Math::bf16}) {
            const std::string suffix = std::string("/") + p.name + "/" + std::to_string(p.batch) +
                                       (math == cpu::Math::bf16 ? "/bf16" : "");
            add("network/inference" + suffix, p, with_math(math, [p](State& st) { inference<float>(st, p); }));
            add("network/train_step" + suffix, p, with_math(math, [p](State& st) { training_step<float>(st, p); }));
        }
        const std::string base = std::string("/") + p.name + "/" + std::to_string(p.batch);
        add("network/inference" + base + "/act-fp16", p, [p](State& st) { inference<float16>(st, p); });
        add("network/train_step" + base + "/act-fp16", p, [p](State& st) { training_step<float16>(st, p); });
        add("network/inference" + base + "/act-bf16", p, [p](State& st) { inference<bfloat16>(st, p); });
        add("network/train_step" + base + "/act-bf16", p, [p](State& st) { training_step<bfloat16>(st, p); });
    }
    return true;
}
const bool registered = register_all();

}  // namespace
