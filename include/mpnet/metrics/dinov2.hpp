// DINOv2's vision transformer (facebookresearch/dinov2, ViT-L/14 for FD_DINOv2), forward
// only, up to the normalised class token: the 1024-d features the EDM2 authors' metric uses.
//
//   tokens: the class token, then the image's 14 x 14 patches (a stride-14 conv), plus the
//           position embedding, bicubically resampled from the pretraining grid (37 x 37)
//           to the image's (16 x 16 at 224 px) as dinov2's interpolate_pos_encoding does:
//           torch's bicubic (a = -0.75, no antialiasing) with scale factor (g + 0.1) / M.
//   block:  x + ls1 * proj(attention(qkv(norm1(x)))), then x + ls2 * fc2(gelu(fc1(norm2(x))));
//           layer norms with eps 1e-6, heads of 64 channels, exact GELU. The layer scales
//           are folded into proj and fc2 when the weights are loaded.
//   output: norm(x) at the class token.
// Tokens are stored channel-major, [N, C, 1, T], so that the linear layers are 1x1
// convolutions and each head's queries, keys and values are contiguous.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mpnet/backend/feature_kernels.hpp"
#include "mpnet/core/concepts.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/io/weight_reader.hpp"
#include "mpnet/ops/feature_checks.hpp"

namespace mpnet::metrics {

namespace dinov2 {

inline constexpr int64_t head_channels = 64;  // every DINOv2 size: S/6, B/12, L/16, g/24 heads
inline constexpr double norm_eps = 1e-6;
inline constexpr double interpolate_offset = 0.1;

// torch's bicubic weights (a = -0.75) for a fractional offset t in [0, 1).
inline void cubic_weights(double t, double w[4]) {
    constexpr double a = -0.75;
    auto near = [&](double x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };
    auto far = [&](double x) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; };
    w[0] = far(t + 1), w[1] = near(t), w[2] = near(1 - t), w[3] = far(2 - t);
}

// The patch position embeddings [M * M, C] (row-major grid) resampled to g x g, channel-major
// [C, g * g]: torch.nn.functional.interpolate(mode='bicubic', scale_factor=(g + 0.1) / M),
// whose source coordinate is (dst + 0.5) / scale - 0.5, neighbours clamped to the grid.
inline std::vector<double> resample_positions(const std::vector<double>& pos, int64_t m, int64_t channels, int64_t g) {
    const double scale = (double(g) + interpolate_offset) / double(m);
    check(int64_t(std::floor(double(m) * scale)) == g, "DINOv2: the position grid ", m, " does not resample to ", g);
    std::vector<int64_t> first(static_cast<std::size_t>(g));
    std::vector<double> w(std::size_t(4 * g));
    for (int64_t i = 0; i < g; ++i) {
        const double src = (double(i) + 0.5) / scale - 0.5, fl = std::floor(src);
        first[std::size_t(i)] = int64_t(fl) - 1;
        cubic_weights(src - fl, &w[std::size_t(4 * i)]);
    }
    auto clamp = [&](int64_t v) { return std::min(std::max<int64_t>(v, 0), m - 1); };
    std::vector<double> out(std::size_t(channels * g * g));
    for (int64_t y = 0; y < g; ++y)
        for (int64_t x = 0; x < g; ++x)
            for (int64_t c = 0; c < channels; ++c) {
                double s = 0;
                for (int64_t a = 0; a < 4; ++a) {
                    double row = 0;
                    for (int64_t b = 0; b < 4; ++b)
                        row += w[std::size_t(4 * x + b)] *
                               pos[std::size_t((clamp(first[std::size_t(y)] + a) * m + clamp(first[std::size_t(x)] + b)) * channels + c)];
                    s += w[std::size_t(4 * y + a)] * row;
                }
                out[std::size_t(c * g * g + y * g + x)] = s;
            }
    return out;
}

template <Scalar T, FeatureKernels B>
struct Linear {
    Tensor<T, B> weight, bias;  // [out, in, 1, 1], [out]

    // `scale` (the layer scale that follows, if any) multiplies each output.
    static Linear load(io::WeightReader& r, const std::string& p, int64_t in, int64_t out,
                       const std::vector<double>& scale = {}) {
        auto w = r.read_host<double>({p + ".weight"}, Shape{out, in, 1, 1});
        auto b = r.read_host<double>({p + ".bias"}, Shape{out});
        std::vector<T> wf(w.size()), bf(b.size());
        for (int64_t o = 0; o < out; ++o) {
            const double s = scale.empty() ? 1.0 : scale[std::size_t(o)];
            for (int64_t i = 0; i < in; ++i) wf[std::size_t(o * in + i)] = T(w[std::size_t(o * in + i)] * s);
            bf[std::size_t(o)] = T(b[std::size_t(o)] * s);
        }
        return {Tensor<T, B>::from_host(Shape{out, in, 1, 1}, wf), Tensor<T, B>::from_host(Shape{out}, bf)};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        Tensor<T, B> y(Shape{x.size(0), weight.size(0), x.size(2), x.size(3)});
        conv2d_bias_forward(B{}, x, weight, bias, ops::Conv2dStep{}, false, y);
        return y;
    }
};

template <Scalar T, FeatureKernels B>
struct LayerNorm {
    Tensor<T, B> gamma, beta;
    static LayerNorm load(io::WeightReader& r, const std::string& p, int64_t c) {
        return {r.read<T, B>({p + ".weight"}, Shape{c}), r.read<T, B>({p + ".bias"}, Shape{c})};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        Tensor<T, B> y(x.shape());
        layer_norm_channels_forward(B{}, x, norm_eps, gamma, beta, y);
        return y;
    }
};

template <Scalar T, FeatureKernels B>
struct Block {
    LayerNorm<T, B> norm1, norm2;
    Linear<T, B> qkv, proj, fc1, fc2;

    static Block load(io::WeightReader& r, const std::string& p, int64_t c, int64_t hidden) {
        const auto ls1 = r.read_host<double>({p + ".ls1.gamma"}, Shape{c});
        const auto ls2 = r.read_host<double>({p + ".ls2.gamma"}, Shape{c});
        return {LayerNorm<T, B>::load(r, p + ".norm1", c), LayerNorm<T, B>::load(r, p + ".norm2", c),
                Linear<T, B>::load(r, p + ".attn.qkv", c, 3 * c), Linear<T, B>::load(r, p + ".attn.proj", c, c, ls1),
                Linear<T, B>::load(r, p + ".mlp.fc1", c, hidden), Linear<T, B>::load(r, p + ".mlp.fc2", hidden, c, ls2)};
    }

    // x [N, C, 1, T] updated in place.
    void forward(Tensor<T, B>& x) const {
        const int64_t n = x.size(0), c = x.size(1), t = x.size(3), heads = c / head_channels;
        const auto q3 = qkv.forward(norm1.forward(x));  // [N, 3C, 1, T]: q, k, v, each head's 64 channels together
        Tensor<T, B> attended(x.shape());
        for (int64_t i = 0; i < n; ++i) {
            const auto parts = q3.slice(i, i + 1).view(Shape{3 * heads, head_channels, 1, t});
            auto out = attended.slice(i, i + 1).view(Shape{heads, head_channels, 1, t});
            softmax_attention_forward(B{}, parts.slice(0, heads), parts.slice(heads, 2 * heads),
                                      parts.slice(2 * heads, 3 * heads), out);
        }
        axpby(B{}, T(1), proj.forward(attended), T(1), x);
        auto h = fc1.forward(norm2.forward(x));
        gelu_forward(B{}, h, h);
        axpby(B{}, T(1), fc2.forward(h), T(1), x);
    }
};

}  // namespace dinov2

template <Scalar T, FeatureKernels B>
class DinoV2 {
public:
    // Weights in dinov2's naming (the hub checkpoint's state_dict: cls_token, pos_embed,
    // patch_embed.proj, blocks.<i>.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1,
    // mlp.fc2, ls2}, norm; mask_token is read and ignored). `image_size` fixes the patch
    // grid, whose position embedding is resampled once here.
    static DinoV2 load(const io::SafetensorsFile& file, int64_t image_size) {
        io::WeightReader r(file);
        check(r.has("cls_token") && r.has("pos_embed") && r.has("patch_embed.proj.weight"), file.label(),
              ": not a DINOv2 vision transformer (cls_token, pos_embed or patch_embed.proj.weight missing)");
        const int64_t c = r.dim("cls_token", 2), patch = r.dim("patch_embed.proj.weight", 2);
        const int64_t positions = r.dim("pos_embed", 1) - 1, m = int64_t(std::llround(std::sqrt(double(positions))));
        check(c % dinov2::head_channels == 0 && m * m == positions && patch > 0 && image_size % patch == 0, file.label(),
              ": ", c, " channels, ", positions, " positions and patch ", patch, " do not make a DINOv2 ViT for ",
              image_size, " px images");
        int64_t depth = 0;
        while (r.has("blocks." + std::to_string(depth) + ".norm1.weight")) ++depth;
        check(depth > 0, file.label(), ": no transformer blocks (blocks.0.norm1.weight)");
        const int64_t g = image_size / patch, hidden = r.dim("blocks.0.mlp.fc1.weight", 0);

        DinoV2 net;
        net.patch_ = patch;
        net.image_size_ = image_size;
        net.patch_embed_ = dinov2::Linear<T, B>{r.read<T, B>({"patch_embed.proj.weight"}, Shape{c, 3, patch, patch}),
                                                r.read<T, B>({"patch_embed.proj.bias"}, Shape{c})};
        // Start tokens [1, C, 1, 1 + g^2]: class token + its position, then the patch positions.
        const auto cls = r.read_host<double>({"cls_token"}, Shape{1, 1, c});
        const auto pos = r.read_host<double>({"pos_embed"}, Shape{1, positions + 1, c});
        const std::vector<double> patch_pos(pos.begin() + c, pos.end());
        const auto grid = dinov2::resample_positions(patch_pos, m, c, g);
        const int64_t t = 1 + g * g;
        std::vector<T> start(std::size_t(c * t));
        for (int64_t ch = 0; ch < c; ++ch) {
            start[std::size_t(ch * t)] = T(cls[std::size_t(ch)] + pos[std::size_t(ch)]);
            for (int64_t j = 0; j < g * g; ++j) start[std::size_t(ch * t + 1 + j)] = T(grid[std::size_t(ch * g * g + j)]);
        }
        net.start_ = Tensor<T, B>::from_host(Shape{1, c, 1, t}, start);
        for (int64_t i = 0; i < depth; ++i)
            net.blocks_.push_back(dinov2::Block<T, B>::load(r, "blocks." + std::to_string(i), c, hidden));
        net.norm_ = dinov2::LayerNorm<T, B>::load(r, "norm", c);
        if (r.has("mask_token")) (void)r.read_host<double>({"mask_token"}, Shape{1, c});
        r.check_all_used("a DINOv2 vision transformer");
        return net;
    }

    [[nodiscard]] int64_t channels() const { return start_.size(1); }
    [[nodiscard]] int64_t depth() const { return int64_t(blocks_.size()); }
    [[nodiscard]] int64_t image_size() const { return image_size_; }

    // Features [N, C] of preprocessed images [N, 3, S, S] (S the size given to load).
    [[nodiscard]] Tensor<T, B> features(const Tensor<T, B>& images) const {
        check(images.rank() == 4 && images.size(1) == 3 && images.size(2) == image_size_ && images.size(3) == image_size_,
              "DINOv2: input ", images.shape(), " is not [N, 3, ", image_size_, ", ", image_size_, "]");
        const int64_t n = images.size(0), c = channels(), t = start_.size(3), g = image_size_ / patch_;
        Tensor<T, B> patches(Shape{n, c, g, g});
        conv2d_bias_forward(B{}, images, patch_embed_.weight, patch_embed_.bias, ops::Conv2dStep{patch_, patch_, 0, 0},
                            false, patches);
        Tensor<T, B> x(Shape{n, c, 1, t});
        fill(B{}, x, T(0));
        copy_window(B{}, patches, ops::CopyWindow{0, 0, 0, 1, c, g * g}, x);
        for (int64_t i = 0; i < n; ++i) {
            auto xi = x.slice(i, i + 1);
            axpby(B{}, T(1), start_, T(1), xi);
        }
        for (const auto& b : blocks_) b.forward(x);
        Tensor<T, B> cls(Shape{n, c, 1, 1});
        copy_window(B{}, x, ops::CopyWindow{0, 0, 0, 0, c, 1}, cls);
        return norm_.forward(cls).view(Shape{n, c});
    }

private:
    int64_t patch_ = 14, image_size_ = 224;
    dinov2::Linear<T, B> patch_embed_;
    Tensor<T, B> start_;
    std::vector<dinov2::Block<T, B>> blocks_;
    dinov2::LayerNorm<T, B> norm_;
};

}  // namespace mpnet::metrics
