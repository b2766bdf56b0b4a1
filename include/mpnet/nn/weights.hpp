// Saving and loading a network's weights as safetensors under the reference state_dict
// names, with the configuration as JSON in the metadata.
#pragma once
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "mpnet/io/safetensors.hpp"
#include "mpnet/nn/layout.hpp"
#include "mpnet/nn/precond.hpp"

namespace mpnet::nn {

// Calls f(name, tensor) for every parameter and buffer of the network.
template <Scalar T, Backend B, Element A, class F>
void for_each_state_tensor(Precond<T, B, A>& net, F&& f) {
    net.visit([&](const std::string& name, Param<T, B>& p) { f(name, p.value); });
    net.visit_buffers([&](const std::string& name, Tensor<T, B>& t) { f(name, t); });
}

// Adds every state tensor, stored as float32 whatever T is.
template <Scalar T, Backend B, Element A>
void add_state(io::SafetensorsWriter& w, Precond<T, B, A>& net, const std::string& prefix = "") {
    for_each_state_tensor(net, [&](const std::string& name, Tensor<T, B>& t) {
        const auto host = t.to_host();
        std::vector<float> f(host.begin(), host.end());
        w.add(prefix + name, t.shape().vec(), std::span<const float>(f));
    });
}

template <Scalar T, Backend B, Element A>
void save_weights(Precond<T, B, A>& net, const std::filesystem::path& path,
                  const std::map<std::string, std::string>& metadata = {}) {
    io::SafetensorsWriter w;
    add_state(w, net);
    w.set_metadata("config", to_json(net.config()));
    w.set_metadata("format", "mpnet-weights-1");
    for (const auto& [k, v] : metadata) w.set_metadata(k, v);
    w.write(path);
}

// Reads the network configuration stored in a weights file.
inline NetworkConfig read_config(const io::SafetensorsFile& file) {
    check(file.metadata().count("config"), file.label(), ": no network configuration in __metadata__");
    try {
        return config_from_json(file.metadata().at("config"));
    } catch (const Error& e) {
        fail(file.label(), ": ", e.what());
    }
}

// Loads every state tensor from `file` (names prefixed by `prefix`). Each must be present with
// the network's shape; float tensors of any width (F64/F32/F16/BF16) are converted. Tensors
// in the file under `prefix` that the network does not have are an error too (unless
// allow_extra: a file that also holds other data), so that nothing is silently ignored or
// left at its initial value.
template <Scalar T, Backend B, Element A>
void load_state(Precond<T, B, A>& net, const io::SafetensorsFile& file, const std::string& prefix = "",
                bool allow_extra = false) {
    std::set<std::string> wanted;
    for_each_state_tensor(net, [&](const std::string& name, Tensor<T, B>& t) {
        const std::string key = prefix + name;
        wanted.insert(key);
        check(file.contains(key), file.label(), ": missing tensor '", key, "'");
        const auto& info = file.info(key);
        const Shape shape = info.shape.empty() ? Shape{} : Shape(std::span<const int64_t>(info.shape));
        check(shape == t.shape() || (shape.numel() == 1 && t.numel() == 1), file.label(), ": tensor '", key,
              "' has shape ", shape, ", the network expects ", t.shape());
        const auto values = file.read<T>(key);
        B::copy_from_host(t.data(), values.data(), t.bytes());
    });
    if (allow_extra) return;
    for (const auto& info : file.tensors())
        check(!info.name.starts_with(prefix) || wanted.count(info.name), file.label(), ": tensor '", info.name,
              "' is not part of this network");
}

// Loads a weights file written by save_weights into a network of the same configuration.
template <Scalar T, Backend B, Element A>
void load_weights(Precond<T, B, A>& net, const std::filesystem::path& path) {
    const auto file = io::SafetensorsFile::open(path);
    const NetworkConfig stored = read_config(file);
    check(to_json(stored) == to_json(net.config()), file.label(), ": network configuration ", to_json(stored),
          " differs from ", to_json(net.config()));
    load_state(net, file);
}

// Values a network of this configuration stores: its parameters and the two Fourier
// embeddings' frequencies and phases.
inline int64_t state_numel(const NetworkConfig& c) {
    return network_cost(c).params + 2 * (c.cnoise() + c.logvar_channels);
}

// A configuration must describe the tensors the file holds before a network of that size is
// allocated: a corrupt or hostile `config` would otherwise decide how much memory is taken.
inline void check_config_fits(const io::SafetensorsFile& file, const NetworkConfig& c) {
    int64_t stored = 0;
    for (const auto& t : file.tensors()) stored += int64_t(t.numel());
    const int64_t wanted = state_numel(c);
    check(stored == wanted, file.label(), ": the network configuration in its metadata has ", wanted,
          " values, the file holds ", stored);
}

// Builds the network a weights file describes and loads it, for inference (no gradient
// buffer; Gradients::flat for one to train).
template <Scalar T, Backend B, Element A = T>
Precond<T, B, A> load_network(const std::filesystem::path& path,
                              typename Precond<T, B, A>::Gradients gradients = Precond<T, B, A>::Gradients::none) {
    const auto file = io::SafetensorsFile::open(path);
    const NetworkConfig config = read_config(file);
    check_config_fits(file, config);
    Precond<T, B, A> net(config, 0, gradients);
    load_state(net, file);
    return net;
}

}  // namespace mpnet::nn
