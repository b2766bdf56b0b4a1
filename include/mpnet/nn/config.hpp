// The configuration of an EDM2 denoiser: every constructor argument of the reference
// Precond, UNet and Block, with JSON round-trip and the named presets.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/core/error.hpp"

namespace mpnet::nn {

struct NetworkConfig {
    // UNet
    int64_t img_resolution = 32;
    int64_t img_channels = 1;
    int64_t label_dim = 10;                        // 0 = unconditional
    int64_t model_channels = 64;
    std::vector<int64_t> channel_mult = {1, 2, 3, 4};
    int64_t channel_mult_noise = 0;                // 0 = cblock[0]
    int64_t channel_mult_emb = 0;                  // 0 = max(cblock)
    int64_t num_blocks = 3;
    std::vector<int64_t> attn_resolutions = {16, 8};
    double label_balance = 0.5;
    double concat_balance = 0.5;
    // Block
    std::vector<double> resample_filter = {1, 1};
    int64_t channels_per_head = 64;
    double dropout = 0;
    double res_balance = 0.3;
    double attn_balance = 0.3;
    double clip_act = 256;
    // Precond
    double sigma_data = 0.5;
    int64_t logvar_channels = 128;

    [[nodiscard]] std::vector<int64_t> cblock() const {
        std::vector<int64_t> c;
        for (auto m : channel_mult) c.push_back(model_channels * m);
        return c;
    }
    [[nodiscard]] int64_t cnoise() const { return channel_mult_noise ? model_channels * channel_mult_noise : cblock()[0]; }
    [[nodiscard]] int64_t cemb() const {
        const auto c = cblock();
        return channel_mult_emb ? model_channels * channel_mult_emb : *std::max_element(c.begin(), c.end());
    }
    [[nodiscard]] bool has_attention(int64_t res) const {
        return std::find(attn_resolutions.begin(), attn_resolutions.end(), res) != attn_resolutions.end();
    }

    // Bounds far above any EDM2 network (the largest, img512-xxl, has 448 channels and
    // multipliers up to 4) that keep every parameter count and shape product inside int64,
    // so that a corrupt configuration is refused here instead of overflowing or exhausting
    // memory when the network is built.
    static constexpr int64_t max_channels = 1 << 16, max_mult = 64, max_blocks = 64, max_resolution = 1 << 14,
                             max_labels = 1 << 24;

    // Throws naming the first setting that no network can be built with.
    void validate() const {
        check(img_resolution <= max_resolution && img_channels <= max_channels && label_dim <= max_labels &&
                  model_channels <= max_channels && num_blocks <= max_blocks && logvar_channels <= max_channels &&
                  channels_per_head <= max_channels * max_mult && channel_mult_noise >= 0 &&
                  channel_mult_noise <= max_mult && channel_mult_emb >= 0 && channel_mult_emb <= max_mult,
              "network config: a size is beyond the supported range (channels <= ", max_channels,
              ", multipliers <= ", max_mult, ", blocks <= ", max_blocks, ", resolution <= ", max_resolution,
              ", labels <= ", max_labels, ")");
        for (auto m : channel_mult) check(m <= max_mult, "network config: channel_mult entry ", m, " exceeds ", max_mult);
        for (const double v : {label_balance, concat_balance, res_balance, attn_balance})
            check(v >= 0 && v <= 1, "network config: balances must lie in [0, 1] (got ", v, ")");
        check(clip_act > 0 && std::isfinite(clip_act), "network config: clip_act must be positive and finite");
        check(std::isfinite(sigma_data), "network config: sigma_data must be finite");
        for (const double v : resample_filter) check(std::isfinite(v), "network config: resample_filter must be finite");
        check(img_resolution > 0 && (img_resolution & (img_resolution - 1)) == 0, "network config: img_resolution ",
              img_resolution, " is not a power of two");
        check(!channel_mult.empty() && img_resolution >> (channel_mult.size() - 1) >= 1, "network config: ",
              channel_mult.size(), " levels are too many for resolution ", img_resolution);
        check(img_channels > 0 && label_dim >= 0 && model_channels > 0 && num_blocks >= 0 && logvar_channels > 0,
              "network config: channel counts must be positive");
        for (auto m : channel_mult) check(m > 0, "network config: channel_mult entries must be positive");
        check(channels_per_head > 0, "network config: channels_per_head must be positive");
        for (int64_t level = 0; level < int64_t(channel_mult.size()); ++level) {
            const int64_t res = img_resolution >> level, c = cblock()[size_t(level)];
            const bool deepest = level + 1 == int64_t(channel_mult.size());
            if (has_attention(res) || deepest)
                check(c % channels_per_head == 0 && c >= channels_per_head, "network config: ", c,
                      " channels at ", res, "x", res, " do not split into heads of ", channels_per_head);
        }
        check(dropout >= 0 && dropout < 1, "network config: dropout ", dropout, " outside [0, 1)");
        check(sigma_data > 0, "network config: sigma_data must be positive");
        check(!resample_filter.empty() && resample_filter.size() % 2 == 0,
              "network config: resample_filter must have even length");
    }
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(NetworkConfig, img_resolution, img_channels, label_dim, model_channels,
                                                channel_mult, channel_mult_noise, channel_mult_emb, num_blocks,
                                                attn_resolutions, label_balance, concat_balance, resample_filter,
                                                channels_per_head, dropout, res_balance, attn_balance, clip_act,
                                                sigma_data, logvar_channels)

inline std::string to_json(const NetworkConfig& c) { return nlohmann::json(c).dump(); }

// Brings a configuration as the reference implementation writes it to mpnet's keys (None
// means "derive"; use_fp16 is a precision choice of its trainer, not part of the network)
// and refuses unknown keys, so that a typo is never ignored. Keys may be missing.
inline void normalize_config_json(nlohmann::json& j) {
    check(j.is_object(), "network config must be a JSON object");
    j.erase("use_fp16");
    for (const char* k : {"channel_mult_noise", "channel_mult_emb"})
        if (j.contains(k) && j[k].is_null()) j[k] = 0;
    const nlohmann::json known = nlohmann::json(NetworkConfig{});
    for (const auto& [key, value] : j.items())
        check(known.contains(key), "network config: unknown setting '", key, "'");
}

// Parses and validates a configuration; missing keys take their defaults.
inline NetworkConfig config_from_json(const std::string& text) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        fail("network config is not valid JSON: ", e.what());
    }
    normalize_config_json(j);
    try {
        auto c = j.get<NetworkConfig>();
        c.validate();
        return c;
    } catch (const nlohmann::json::exception& e) {
        fail("network config: ", e.what());
    }
}

}  // namespace mpnet::nn
