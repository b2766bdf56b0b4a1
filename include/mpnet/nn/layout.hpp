// The U-Net's layout derived from its configuration: the list of encoder and decoder
// elements with their channel counts and resolutions. The network is built from it, and
// parameter counts and FLOPs are computed from it without allocating any weights.
#pragma once
#include <string>
#include <vector>

#include "mpnet/nn/config.hpp"
#include "mpnet/ops/resample_mode.hpp"

namespace mpnet::nn {

struct BlockSpec {
    std::string name;  // e.g. "16x16_block0"
    bool encoder = true;
    bool is_conv = false;  // the plain 3x3 MPConv that starts the encoder
    int64_t in = 0, out = 0;
    int64_t resolution = 0;  // of the block's output
    ops::Resample resample = ops::Resample::keep;
    bool attention = false;
    bool takes_skip = false;  // decoder blocks fed mp_cat(x, skip)
};

struct UNetLayout {
    std::vector<BlockSpec> enc, dec;
};

inline UNetLayout unet_layout(const NetworkConfig& c) {
    UNetLayout L;
    const auto cblock = c.cblock();
    const int64_t levels = int64_t(cblock.size());
    auto name = [](int64_t res, const std::string& what) {
        return std::to_string(res) + "x" + std::to_string(res) + "_" + what;
    };
    int64_t cout = c.img_channels + 1;
    for (int64_t level = 0; level < levels; ++level) {
        const int64_t res = c.img_resolution >> level, channels = cblock[size_t(level)];
        if (level == 0) {
            L.enc.push_back({name(res, "conv"), true, true, cout, channels, res});
            cout = channels;
        } else {
            L.enc.push_back({name(res, "down"), true, false, cout, cout, res, ops::Resample::down});
        }
        for (int64_t i = 0; i < c.num_blocks; ++i) {
            L.enc.push_back({name(res, "block" + std::to_string(i)), true, false, cout, channels, res,
                             ops::Resample::keep, c.has_attention(res)});
            cout = channels;
        }
    }
    std::vector<int64_t> skips;
    for (const auto& b : L.enc) skips.push_back(b.out);
    for (int64_t level = levels - 1; level >= 0; --level) {
        const int64_t res = c.img_resolution >> level, channels = cblock[size_t(level)];
        if (level == levels - 1) {
            L.dec.push_back({name(res, "in0"), false, false, cout, cout, res, ops::Resample::keep, true});
            L.dec.push_back({name(res, "in1"), false, false, cout, cout, res});
        } else {
            L.dec.push_back({name(res, "up"), false, false, cout, cout, res, ops::Resample::up});
        }
        for (int64_t i = 0; i <= c.num_blocks; ++i) {
            const int64_t cin = cout + skips.back();
            skips.pop_back();
            L.dec.push_back({name(res, "block" + std::to_string(i)), false, false, cin, channels, res,
                             ops::Resample::keep, c.has_attention(res), true});
            cout = channels;
        }
    }
    return L;
}

// Parameters and multiply-adds of one element, from its spec alone.
struct Cost {
    int64_t params = 0;
    double macs = 0;  // multiply-accumulates per image in the forward pass
    Cost& operator+=(const Cost& o) {
        params += o.params;
        macs += o.macs;
        return *this;
    }
};

inline Cost block_cost(const BlockSpec& b, const NetworkConfig& c) {
    const double hw = double(b.resolution * b.resolution);
    if (b.is_conv) return {b.out * b.in * 9, hw * double(b.out * b.in * 9)};
    const int64_t res0_in = b.encoder ? b.out : b.in;
    Cost k;
    k.params = 1 + b.out * res0_in * 9 + b.out * c.cemb() + b.out * b.out * 9;  // emb_gain, res0, emb, res1
    k.macs = hw * double(b.out * res0_in * 9 + b.out * b.out * 9) + double(b.out * c.cemb());
    if (b.in != b.out) {
        k.params += b.out * b.in;
        k.macs += hw * double(b.out * b.in);
    }
    if (b.attention) {
        k.params += 3 * b.out * b.out + b.out * b.out;
        k.macs += hw * double(4 * b.out * b.out) + 2 * hw * hw * double(b.out);  // qkv, proj; q k^T and w v
    }
    return k;
}

// The whole Precond: U-Net, embeddings, output convolution and the uncertainty head.
inline Cost network_cost(const NetworkConfig& c) {
    const auto L = unet_layout(c);
    Cost k;
    for (const auto& b : L.enc) k += block_cost(b, c);
    for (const auto& b : L.dec) k += block_cost(b, c);
    const int64_t cout = c.cblock()[0];
    const double hw = double(c.img_resolution * c.img_resolution);
    k += {1 + c.img_channels * cout * 9, hw * double(c.img_channels * cout * 9)};  // out_gain, out_conv
    k += {c.cemb() * c.cnoise(), double(c.cemb() * c.cnoise())};                  // emb_noise
    if (c.label_dim) k += {c.cemb() * c.label_dim, double(c.cemb() * c.label_dim)};
    k += {c.logvar_channels, double(c.logvar_channels)};  // logvar_linear
    return k;
}

}  // namespace mpnet::nn
