// Power-function EMA of the network parameters, tracked during training (EDM2, section 3.1).
//
// Each profile k keeps its own copy of every parameter and, after each optimizer step,
// moves it by ema <- beta_k ema + (1 - beta_k) param with beta_k = (1 - dt/t)^(gamma_k+1),
// t the images seen after the step and dt the batch size. Unlike a constant-beta EMA this
// forgets the random initialisation at a rate that scales with training length, so one
// sigma_rel means the same relative averaging window at any point of a run.
//
// Each profile is one flat buffer laid out as a ParamLayout (nn/param_arena.hpp), with named
// views for profile(k) and the state files. Given the network's flat parameters (laid out
// the same), an update is one elementwise kernel call per profile, equal to one call per
// parameter bit for bit, and the zero padding stays zero.
//
// An update is staged, then applied, as Adam's step is (train/adam.hpp): stage() computes
// every profile's (1 - beta_k, beta_k) on the host and writes them to the backend; apply()
// runs one axpby_staged(B{}, coefficients, x, y) per profile (y = c[0] x + c[1] y), which
// reads them there, so a CUDA graph that recorded apply() once replays every update
// correctly. The kernel is found by argument-dependent lookup: include the backend's kernels
// (e.g. mpnet/backend/cpu/cpu.hpp) before instantiating update().
#pragma once
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/io/safetensors.hpp"
#include "mpnet/nn/param_arena.hpp"
#include "mpnet/phema/profile.hpp"
#include "mpnet/train/host_staging.hpp"

namespace mpnet::train {

template <Scalar T, Backend B>
class PowerEma {
public:
    using NamedTensors = std::vector<std::pair<std::string, Tensor<T, B>>>;

    // Every profile starts as a copy of params; the first update (images seen == batch size)
    // has beta = 0 and overwrites it anyway.
    PowerEma(std::vector<double> sigma_rels, const NamedTensors& params)
        : PowerEma(std::move(sigma_rels), layout_of(params), pack(params)) {}
    // The same for parameters already in one flat buffer laid out as `layout`.
    PowerEma(std::vector<double> sigma_rels, nn::ParamLayout layout, const Tensor<T, B>& flat_params)
        : sigma_rels_(std::move(sigma_rels)), layout_(std::move(layout)) {
        check(!sigma_rels_.empty(), "PowerEma: no profiles to track");
        check(flat_params.numel() == layout_.numel, "PowerEma: ", flat_params.numel(),
              " flat parameter values, the layout has ", layout_.numel);
        for (const double s : sigma_rels_) {
            gammas_.push_back(phema::std_to_exp(s));
            flat_.push_back(flat_params.clone());
            profiles_.push_back(layout_.views(flat_.back()));
        }
        coefficients_ = Tensor<T, B>(Shape{int64_t(sigma_rels_.size()), 2});
    }

    // After an optimizer step: images_seen counts the images of that step too.
    void update(const NamedTensors& params, double images_seen, double batch_size) {
        check_matches(params);
        stage(images_seen, batch_size);
        for (std::size_t k = 0; k < profiles_.size(); ++k) {
            const Tensor<T, B> c = coefficients(k);
            for (std::size_t i = 0; i < params.size(); ++i) axpby_staged(B{}, c, params[i].second, profiles_[k][i].second);
        }
    }
    // The same for the parameters as one flat buffer laid out as at construction.
    void update(const Tensor<T, B>& flat_params, double images_seen, double batch_size) {
        stage(images_seen, batch_size);
        apply(flat_params);
    }

    // The update after an optimizer step, in two parts: stage() writes every profile's
    // coefficients to the backend by `upload` (train/host_staging.hpp; by default a copy that
    // waits for the device; a bad time leaves them and every profile as they were), apply()
    // moves each profile towards the flat parameters with them.
    template <class Upload = CopyFromHost>
    void stage(double images_seen, double batch_size, Upload&& upload = Upload{}) {
        std::vector<T> c;
        for (const double gamma : gammas_) {
            const double beta = phema::beta_from_exp(gamma, images_seen, batch_size);
            c.push_back(static_cast<T>(1 - beta));
            c.push_back(static_cast<T>(beta));
        }
        upload(coefficients_, std::span<const T>(c));
    }
    [[nodiscard]] std::size_t staged_bytes() const { return coefficients_.bytes(); }  // what stage() uploads
    void apply(const Tensor<T, B>& flat_params) {
        check(flat_params.numel() == layout_.numel, "PowerEma::update: ", flat_params.numel(),
              " flat parameter values, the EMA tracks ", layout_.numel);
        const Tensor<T, B> x = flat_params.view(flat_.front().shape());
        for (std::size_t k = 0; k < flat_.size(); ++k) axpby_staged(B{}, coefficients(k), x, flat_[k]);
    }

    [[nodiscard]] std::size_t num_profiles() const { return profiles_.size(); }
    [[nodiscard]] double sigma_rel(std::size_t k) const { return sigma_rels_.at(k); }
    [[nodiscard]] double exponent(std::size_t k) const { return gammas_.at(k); }
    // Profile k's averaged tensors, named and ordered as the parameters given at construction.
    [[nodiscard]] const NamedTensors& profile(std::size_t k) const { return profiles_.at(k); }

    // Stores `<prefix>sigma_rel` (F64 [K]) and `<prefix><k>.<name>` for every profile k and
    // parameter, in T's own dtype so that load_state restores them bit for bit.
    void save_state(io::SafetensorsWriter& out, const std::string& prefix) const {
        out.add<double>(prefix + "sigma_rel", {static_cast<std::int64_t>(sigma_rels_.size())},
                        std::span<const double>(sigma_rels_));
        visit_state(prefix, [&](const std::string& name, const Tensor<T, B>& value) {
            const std::vector<T> host = value.to_host();
            out.add<T>(name, value.shape().vec(), std::span<const T>(host));
        });
    }

    // Calls f(name, tensor) for every profile tensor save_state stores (beside `<prefix>sigma_rel`).
    template <class F>
    void visit_state(const std::string& prefix, F&& f) const {
        for (std::size_t k = 0; k < profiles_.size(); ++k)
            for (const auto& [name, value] : profiles_[k]) f(key(prefix, k, name), value);
    }

    // All or nothing: every tensor is read and checked before any profile changes.
    void load_state(const io::SafetensorsFile& in, const std::string& prefix) {
        const std::vector<double> stored = in.read<double>(prefix + "sigma_rel");
        if (stored != sigma_rels_)
            fail(in.label(), ": EMA state under '", prefix, "' tracks other profiles (", stored.size(),
                 " stored, ", sigma_rels_.size(), " configured, or different sigma_rel values)");
        std::vector<std::vector<T>> host;
        for (std::size_t k = 0; k < profiles_.size(); ++k)
            for (const auto& [name, value] : profiles_[k]) {
                const std::string n = key(prefix, k, name);
                in.check_shape(n, value.shape().vec());
                host.push_back(in.read<T>(n));
            }
        std::size_t next = 0;
        for (NamedTensors& ema : profiles_)
            for (auto& [name, value] : ema) {
                if (value.numel()) B::copy_from_host(value.data(), host[next].data(), value.bytes());
                ++next;
            }
    }

private:
    // Profile k's staged (1 - beta_k, beta_k).
    [[nodiscard]] Tensor<T, B> coefficients(std::size_t k) const {
        return coefficients_.slice(int64_t(k), int64_t(k) + 1).view(Shape{2});
    }

    static nn::ParamLayout layout_of(const NamedTensors& params) {
        nn::ParamLayout layout;
        for (const auto& [name, value] : params) layout.append<T>(name, value.shape());
        return layout;
    }
    static Tensor<T, B> pack(const NamedTensors& params) {
        const nn::ParamLayout layout = layout_of(params);
        auto flat = Tensor<T, B>::zeros(Shape{layout.numel});
        auto views = layout.views(flat);
        for (std::size_t i = 0; i < params.size(); ++i) views[i].second.copy_from(params[i].second);
        return flat;
    }

    static std::string key(const std::string& prefix, std::size_t k, const std::string& name) {
        return prefix + std::to_string(k) + "." + name;
    }

    void check_matches(const NamedTensors& params) const {
        const NamedTensors& ref = profiles_.front();
        check(params.size() == ref.size(), "PowerEma::update: ", params.size(), " parameters, the EMA tracks ",
              ref.size());
        for (std::size_t i = 0; i < ref.size(); ++i)
            check(params[i].first == ref[i].first && params[i].second.shape() == ref[i].second.shape(),
                  "PowerEma::update: parameter ", i, " is '", params[i].first, "' ", params[i].second.shape(),
                  ", the EMA tracks '", ref[i].first, "' ", ref[i].second.shape());
    }

    std::vector<double> sigma_rels_;
    std::vector<double> gammas_;
    nn::ParamLayout layout_;
    std::vector<Tensor<T, B>> flat_;      // profile k as one buffer laid out as layout_
    std::vector<NamedTensors> profiles_;  // profile k's named views into flat_[k]
    Tensor<T, B> coefficients_;           // [K, 2]: the staged update's (1 - beta_k, beta_k)
};

}  // namespace mpnet::train
