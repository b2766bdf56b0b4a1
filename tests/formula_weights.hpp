// The formula weights of scripts/metrics_golden.py: tensor <name> of n elements holds
// offset + scale * u(i), u(i) in [-1, 1) a 32-bit hash of (i, FNV-1a of the name), rounded
// to float32 from double as NumPy does, so both sides hold the same bits. The golden file
// lists each network's tensor names and shapes in its metadata ("<network>_shapes").
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/io/safetensors.hpp"

namespace mpnet::test {

inline uint32_t fnv1a(const std::string& s) {
    uint32_t h = 0x811C9DC5u;
    for (const unsigned char c : s) h = (h ^ c) * 0x01000193u;
    return h;
}

// (offset, scale) by the tensor's name and shape: formula_spec in the script.
inline std::pair<double, double> formula_spec(const std::string& name, const std::vector<int64_t>& shape) {
    const std::string last = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
    if (last == "running_var") return {1.0, 0.5};
    if (last == "running_mean" || last == "bias" || name == "cls_token" || name == "pos_embed" || name == "mask_token")
        return {0.0, 0.1};
    if (last == "gamma") return {0.5, 0.25};
    if (shape.size() >= 2) {
        int64_t fan_in = 1;
        for (std::size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
        return {0.0, std::sqrt((name.find(".conv.") != std::string::npos ? 6.0 : 3.0) / double(fan_in))};
    }
    return {1.0, 0.1};
}

inline std::vector<float> formula_values(const std::string& name, const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (const auto d : shape) n *= d;
    const auto [offset, scale] = formula_spec(name, shape);
    const uint64_t h = fnv1a(name);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        uint64_t u = ((uint64_t(i) + 1) * 0x9E3779B1u + h * 0x85EBCA77u) & 0xFFFFFFFFu;
        u ^= u >> 15;
        u = (u * 0x2C1B3C6Du) & 0xFFFFFFFFu;
        u ^= u >> 12;
        v[std::size_t(i)] = float(offset + scale * (double(u) / 4294967296.0 * 2.0 - 1.0));
    }
    return v;
}

// The bytes of a weights file of the network's formula weights; `drop` leaves a tensor out
// and `extra` adds one, for the loaders' refusals.
inline std::vector<std::byte> formula_weight_bytes(const io::SafetensorsFile& golden, const std::string& network,
                                                   const std::string& drop = "", const std::string& extra = "") {
    const auto shapes = nlohmann::json::parse(golden.metadata().at(network + "_shapes"));
    io::SafetensorsWriter w;
    for (const auto& [name, shape_json] : shapes.items()) {
        if (name == drop) continue;
        const auto shape = shape_json.get<std::vector<int64_t>>();
        const auto v = formula_values(name, shape);
        w.add<float>(name, shape, std::span<const float>(v));
    }
    if (!extra.empty()) {
        const std::vector<float> one{1.0f};
        w.add<float>(extra, {1}, std::span<const float>(one));
    }
    return w.to_bytes();
}

// The same file, in memory.
inline io::SafetensorsFile formula_weights(const io::SafetensorsFile& golden, const std::string& network,
                                           const std::string& drop = "", const std::string& extra = "") {
    return io::SafetensorsFile::from_bytes(formula_weight_bytes(golden, network, drop, extra), network + " formula weights");
}

}  // namespace mpnet::test
