// The KL autoencoder of Stable Diffusion (AutoencoderKL, kl-f8: stabilityai/sd-vae-ft-mse),
// whose latents EDM2's ImageNet-512 models generate, forward only: the encoder (pixels to
// the posterior's mean and std) and the decoder (latents to pixels).
//
// Architecture, as diffusers builds it from the weights' shapes:
//   encoder: conv_in; per level i (block_out_channels[i]): layers_per_block resnets, then a
//            stride-2 conv (pad right/bottom by one) except after the last level; mid block
//            (resnet, attention, resnet); group norm + SiLU; conv_out to 2 x latent channels.
//   decoder: conv_in; mid block; per level (channels reversed): layers_per_block + 1
//            resnets, then nearest 2x upsampling + conv except after the last; group norm +
//            SiLU; conv_out to RGB.
//   resnet:  x + conv2(silu(norm2(conv1(silu(norm1(x)))))), x through a 1x1 conv where the
//            channel count changes.
//   attention (one head): x + out(softmax(q^T k / sqrt(C)) v), q, k, v from group_norm(x).
//   quant_conv / post_quant_conv: 1x1 convs after the encoder and before the decoder.
// Group norms have 32 groups and eps 1e-6; convs have biases. The kernels come from the
// backend's header (backend/cpu/autoencoder_ops.hpp on the CPU), which the user includes.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/io/weight_reader.hpp"

namespace mpnet::vae {

struct AutoencoderConfig {
    std::vector<int64_t> block_out_channels;  // sd-vae-ft-mse: 128, 256, 512, 512
    int64_t layers_per_block = 2;
    int64_t latent_channels = 4;
    int64_t in_channels = 3, out_channels = 3;
    int64_t groups = 32;
    double eps = 1e-6;

    // Pixels per latent along each side: 2^(levels - 1), 8 for kl-f8.
    [[nodiscard]] int64_t factor() const { return int64_t(1) << (block_out_channels.size() - 1); }
};

using io::WeightReader;

template <Scalar T, Backend B>
struct Conv {
    Tensor<T, B> weight, bias;  // [out, in, k, k], [out]
    bool stride2 = false;       // the encoder's downsampling: pad right/bottom by one, stride 2

    static Conv load(WeightReader& r, const std::string& prefix, int64_t in, int64_t out, int64_t k,
                     const std::vector<std::string>& aliases = {}) {
        std::vector<std::string> w{prefix + ".weight"}, b{prefix + ".bias"};
        for (const auto& a : aliases) w.push_back(a + ".weight"), b.push_back(a + ".bias");
        return {r.read<T, B>(w, Shape{out, in, k, k}), r.read<T, B>(b, Shape{out})};
    }

    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        Tensor<T, B> full(Shape{x.size(0), weight.size(0), x.size(2), x.size(3)});
        conv2d_forward(B{}, x, weight, full);
        if (!stride2) {
            add_channel_bias(B{}, bias, full);
            return full;
        }
        Tensor<T, B> y(Shape{x.size(0), weight.size(0), x.size(2) / 2, x.size(3) / 2});
        take_odd_pixels(B{}, full, y);
        add_channel_bias(B{}, bias, y);
        return y;
    }
};

template <Scalar T, Backend B>
struct GroupNorm {
    Tensor<T, B> gamma, beta;
    int64_t groups = 32;
    double eps = 1e-6;

    static GroupNorm load(WeightReader& r, const std::string& prefix, int64_t channels, const AutoencoderConfig& c) {
        check(channels % c.groups == 0, "autoencoder: ", channels, " channels of ", prefix, " do not split into ",
              c.groups, " groups");
        return {r.read<T, B>({prefix + ".weight"}, Shape{channels}), r.read<T, B>({prefix + ".bias"}, Shape{channels}),
                c.groups, c.eps};
    }
    // In place: x is normalised (and passed through SiLU if `silu`).
    void apply(Tensor<T, B>& x, bool silu) const { group_norm_forward(B{}, x, groups, eps, gamma, beta, silu, x); }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x, bool silu) const {
        Tensor<T, B> y(x.shape());
        group_norm_forward(B{}, x, groups, eps, gamma, beta, silu, y);
        return y;
    }
};

template <Scalar T, Backend B>
struct Resnet {
    GroupNorm<T, B> norm1, norm2;
    Conv<T, B> conv1, conv2;
    std::optional<Conv<T, B>> shortcut;

    static Resnet load(WeightReader& r, const std::string& p, int64_t in, int64_t out, const AutoencoderConfig& c) {
        Resnet m{GroupNorm<T, B>::load(r, p + ".norm1", in, c), GroupNorm<T, B>::load(r, p + ".norm2", out, c),
                 Conv<T, B>::load(r, p + ".conv1", in, out, 3), Conv<T, B>::load(r, p + ".conv2", out, out, 3), {}};
        if (in != out) m.shortcut = Conv<T, B>::load(r, p + ".conv_shortcut", in, out, 1, {p + ".nin_shortcut"});
        return m;
    }

    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        Tensor<T, B> h = conv1.forward(norm1.forward(x, true));
        norm2.apply(h, true);
        h = conv2.forward(h);
        axpby(B{}, T(1), shortcut ? shortcut->forward(x) : x, T(1), h);
        return h;
    }
};

template <Scalar T, Backend B>
struct Attention {
    GroupNorm<T, B> norm;
    Conv<T, B> q, k, v, out;

    // diffusers' current names, and those of older files (query, key, value, proj_attn).
    static Attention load(WeightReader& r, const std::string& p, int64_t ch, const AutoencoderConfig& c) {
        return {GroupNorm<T, B>::load(r, p + ".group_norm", ch, c),
                Conv<T, B>::load(r, p + ".to_q", ch, ch, 1, {p + ".query"}),
                Conv<T, B>::load(r, p + ".to_k", ch, ch, 1, {p + ".key"}),
                Conv<T, B>::load(r, p + ".to_v", ch, ch, 1, {p + ".value"}),
                Conv<T, B>::load(r, p + ".to_out.0", ch, ch, 1, {p + ".proj_attn"})};
    }

    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        Tensor<T, B> a(x.shape());
        {
            const Tensor<T, B> h = norm.forward(x, false);
            softmax_attention_forward(B{}, q.forward(h), k.forward(h), v.forward(h), a);
        }
        Tensor<T, B> y = out.forward(a);
        axpby(B{}, T(1), x, T(1), y);
        return y;
    }
};

template <Scalar T, Backend B>
struct MidBlock {
    Resnet<T, B> first, second;
    Attention<T, B> attention;

    static MidBlock load(WeightReader& r, const std::string& p, int64_t ch, const AutoencoderConfig& c) {
        return {Resnet<T, B>::load(r, p + ".resnets.0", ch, ch, c), Resnet<T, B>::load(r, p + ".resnets.1", ch, ch, c),
                Attention<T, B>::load(r, p + ".attentions.0", ch, c)};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        return second.forward(attention.forward(first.forward(x)));
    }
};

template <Scalar T, Backend B>
class AutoencoderKL {
public:
    using TensorT = Tensor<T, B>;

    // Loads diffusers' diffusion_pytorch_model.safetensors (float32 or float16): the
    // configuration is read from the tensors' shapes, except the group count, which diffusers
    // keeps in config.json: the file's `norm_num_groups` metadata if it has one, else 32, as
    // in every Stable Diffusion VAE. Every tensor must be used.
    static AutoencoderKL load(const std::filesystem::path& path) {
        const auto file = io::SafetensorsFile::open(path);
        int64_t groups = 32;
        if (const auto it = file.metadata().find("norm_num_groups"); it != file.metadata().end()) {
            const auto& v = it->second;
            check(!v.empty() && v.size() < 5 && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }),
                  file.label(), ": metadata norm_num_groups '", v, "' is not a group count");
            groups = std::stoll(v);
        }
        return AutoencoderKL(file, groups);
    }
    static AutoencoderKL load(const std::filesystem::path& path, int64_t groups) {
        const auto file = io::SafetensorsFile::open(path);
        return AutoencoderKL(file, groups);
    }

    AutoencoderKL(const io::SafetensorsFile& file, int64_t groups) {
        WeightReader r(file);
        check(groups > 0, file.label(), ": group count ", groups);
        c_.groups = groups;
        for (int64_t i = 0; r.has("encoder.down_blocks." + std::to_string(i) + ".resnets.0.conv1.weight"); ++i)
            c_.block_out_channels.push_back(r.dim("encoder.down_blocks." + std::to_string(i) + ".resnets.0.conv1.weight", 0));
        check(!c_.block_out_channels.empty() && c_.block_out_channels.size() <= 8, file.label(),
              ": not an AutoencoderKL (no encoder.down_blocks.<i>.resnets.0.conv1.weight)");
        c_.layers_per_block = 0;
        while (r.has("encoder.down_blocks.0.resnets." + std::to_string(c_.layers_per_block) + ".conv1.weight"))
            ++c_.layers_per_block;
        c_.latent_channels = r.dim("post_quant_conv.weight", 0);
        c_.in_channels = r.dim("encoder.conv_in.weight", 1);
        c_.out_channels = r.dim("decoder.conv_out.weight", 0);
        for (auto ch : c_.block_out_channels)
            check(ch > 0 && ch <= 4096, file.label(), ": block of ", ch, " channels");
        check(c_.latent_channels > 0 && c_.latent_channels <= 64 && c_.in_channels > 0 && c_.in_channels <= 64 &&
                  c_.out_channels > 0 && c_.out_channels <= 64,
              file.label(), ": channel counts out of range");
        load_encoder(r);
        load_decoder(r);
        r.check_all_used("the autoencoder");
    }

    [[nodiscard]] const AutoencoderConfig& config() const { return c_; }

    // The posterior of images x [N, in, H, W] (values as the model was trained on; EDM2
    // passes pixels / 255): moments [N, 2 latent, H/f, W/f], mean then log-variance.
    [[nodiscard]] TensorT encode_moments(const TensorT& x) const {
        check(x.rank() == 4 && x.size(1) == c_.in_channels && x.size(2) % c_.factor() == 0 &&
                  x.size(3) % c_.factor() == 0,
              "autoencoder: encoder input ", x.shape(), " is not [N, ", c_.in_channels, ", H, W] with H and W multiples of ",
              c_.factor());
        TensorT h = enc_in_.forward(x);
        for (std::size_t i = 0; i < enc_levels_.size(); ++i) {
            for (const auto& block : enc_levels_[i]) h = block.forward(h);
            if (i < enc_down_.size()) h = enc_down_[i].forward(h);
            release_cached_memory<B>();  // each level's sizes recur at no later level
        }
        h = enc_mid_->forward(h);
        enc_norm_->apply(h, true);
        return quant_conv_->forward(enc_out_->forward(h));
    }

    // Images [N, out, H f, W f] of latents z [N, latent, H, W] (post_quant_conv included).
    [[nodiscard]] TensorT decode(const TensorT& z) const {
        check(z.rank() == 4 && z.size(1) == c_.latent_channels, "autoencoder: latents ", z.shape(), " are not [N, ",
              c_.latent_channels, ", H, W]");
        TensorT h = dec_in_->forward(post_quant_conv_->forward(z));
        h = dec_mid_->forward(h);
        for (std::size_t i = 0; i < dec_levels_.size(); ++i) {
            for (const auto& block : dec_levels_[i]) h = block.forward(h);
            if (i < dec_up_.size()) {
                TensorT up(Shape{h.size(0), h.size(1), 2 * h.size(2), 2 * h.size(3)});
                upsample_nearest2x(B{}, h, up);
                h = TensorT{};
                h = dec_up_[i].forward(up);
            }
            // Each level's activation sizes recur at no later level: a caching allocator would
            // otherwise hold every level's at once (2.1 GB instead of 1.45 GB RSS at 512x512).
            release_cached_memory<B>();
        }
        dec_norm_->apply(h, true);
        return dec_out_->forward(h);
    }

private:
    void load_encoder(WeightReader& r) {
        const auto& boc = c_.block_out_channels;
        enc_in_ = Conv<T, B>::load(r, "encoder.conv_in", c_.in_channels, boc[0], 3);
        int64_t ch = boc[0];
        for (std::size_t i = 0; i < boc.size(); ++i) {
            const std::string p = "encoder.down_blocks." + std::to_string(i);
            auto& level = enc_levels_.emplace_back();
            for (int64_t j = 0; j < c_.layers_per_block; ++j, ch = boc[i])
                level.push_back(Resnet<T, B>::load(r, p + ".resnets." + std::to_string(j), ch, boc[i], c_));
            if (i + 1 < boc.size()) {
                auto& down = enc_down_.emplace_back(Conv<T, B>::load(r, p + ".downsamplers.0.conv", ch, ch, 3));
                down.stride2 = true;
            }
        }
        enc_mid_ = MidBlock<T, B>::load(r, "encoder.mid_block", ch, c_);
        enc_norm_ = GroupNorm<T, B>::load(r, "encoder.conv_norm_out", ch, c_);
        enc_out_ = Conv<T, B>::load(r, "encoder.conv_out", ch, 2 * c_.latent_channels, 3);
        quant_conv_ = Conv<T, B>::load(r, "quant_conv", 2 * c_.latent_channels, 2 * c_.latent_channels, 1);
    }

    void load_decoder(WeightReader& r) {
        const std::vector<int64_t> boc(c_.block_out_channels.rbegin(), c_.block_out_channels.rend());
        post_quant_conv_ = Conv<T, B>::load(r, "post_quant_conv", c_.latent_channels, c_.latent_channels, 1);
        dec_in_ = Conv<T, B>::load(r, "decoder.conv_in", c_.latent_channels, boc[0], 3);
        dec_mid_ = MidBlock<T, B>::load(r, "decoder.mid_block", boc[0], c_);
        int64_t ch = boc[0];
        for (std::size_t i = 0; i < boc.size(); ++i) {
            const std::string p = "decoder.up_blocks." + std::to_string(i);
            auto& level = dec_levels_.emplace_back();
            for (int64_t j = 0; j <= c_.layers_per_block; ++j, ch = boc[i])
                level.push_back(Resnet<T, B>::load(r, p + ".resnets." + std::to_string(j), ch, boc[i], c_));
            if (i + 1 < boc.size()) dec_up_.push_back(Conv<T, B>::load(r, p + ".upsamplers.0.conv", ch, ch, 3));
        }
        dec_norm_ = GroupNorm<T, B>::load(r, "decoder.conv_norm_out", ch, c_);
        dec_out_ = Conv<T, B>::load(r, "decoder.conv_out", ch, c_.out_channels, 3);
    }

    AutoencoderConfig c_;
    Conv<T, B> enc_in_;
    std::vector<std::vector<Resnet<T, B>>> enc_levels_, dec_levels_;
    std::vector<Conv<T, B>> enc_down_, dec_up_;
    std::optional<MidBlock<T, B>> enc_mid_, dec_mid_;
    std::optional<GroupNorm<T, B>> enc_norm_, dec_norm_;
    std::optional<Conv<T, B>> enc_out_, quant_conv_, post_quant_conv_, dec_in_, dec_out_;
};

}  // namespace mpnet::vae
