// The Inception-v3 of FID: the network of TensorFlow's inception-2015-12-05 graph, as the
// EDM2 authors' metric code runs it (a TorchScript translation of the graph) and as
// pytorch-fid defines it (FIDInceptionV3, torchvision's Inception3 with the graph's
// pooling), forward only, up to the 2048-d pool3 features.
//
// Architecture (torchvision's block names, which the weights file uses):
//   Conv2d_1a_3x3 (stride 2), 2a_3x3, 2b_3x3 (pad 1), max pool 3/2, 3b_1x1, 4a_3x3, max pool
//   3/2, Mixed_5b..5d (A), 6a (B), 6b..6e (C), 7a (D), 7b, 7c (E), global average pool.
//   Each conv: no bias, batch norm (eps 0.001, inference statistics), ReLU; the batch norm
//   is folded into the conv's weight and bias when the weights are loaded.
//   The graph's pooling, where it differs from torchvision: the average pools of A, C and
//   7b leave the padding out of the mean; 7c's pool branch takes a 3x3 maximum.
// Preprocessing (inception_input in metrics/preprocess.hpp): pixels 0..255 resized to
// 299 x 299 by TensorFlow's legacy bilinear resize, then (x - 128) / 128.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/backend/feature_kernels.hpp"
#include "mpnet/core/concepts.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/io/weight_reader.hpp"
#include "mpnet/ops/feature_checks.hpp"

namespace mpnet::metrics {

inline constexpr int64_t inception_size = 299;       // input side
inline constexpr int64_t inception_features = 2048;  // pool3

namespace inception {

// A conv with its batch norm folded in, followed by ReLU.
template <Scalar T, FeatureKernels B>
struct ConvBnRelu {
    Tensor<T, B> weight, bias;
    ops::Conv2dStep step;

    static ConvBnRelu load(io::WeightReader& r, const std::string& name, int64_t in, int64_t out, int64_t kh,
                           int64_t kw, ops::Conv2dStep step = {}) {
        auto w = r.read_host<double>({name + ".conv.weight"}, Shape{out, in, kh, kw});
        const auto gamma = r.read_host<double>({name + ".bn.weight"}, Shape{out});
        const auto beta = r.read_host<double>({name + ".bn.bias"}, Shape{out});
        const auto mean = r.read_host<double>({name + ".bn.running_mean"}, Shape{out});
        const auto var = r.read_host<double>({name + ".bn.running_var"}, Shape{out});
        if (r.has(name + ".bn.num_batches_tracked")) (void)r.read_host<double>({name + ".bn.num_batches_tracked"}, Shape{});
        constexpr double eps = 0.001;
        const int64_t per = in * kh * kw;
        std::vector<T> wf(w.size()), bf(static_cast<std::size_t>(out));
        for (int64_t o = 0; o < out; ++o) {
            const double s = gamma[std::size_t(o)] / std::sqrt(var[std::size_t(o)] + eps);
            for (int64_t i = 0; i < per; ++i) wf[std::size_t(o * per + i)] = T(w[std::size_t(o * per + i)] * s);
            bf[std::size_t(o)] = T(beta[std::size_t(o)] - mean[std::size_t(o)] * s);
        }
        return {Tensor<T, B>::from_host(Shape{out, in, kh, kw}, wf), Tensor<T, B>::from_host(Shape{out}, bf), step};
    }

    [[nodiscard]] int64_t out_channels() const { return weight.size(0); }

    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        Tensor<T, B> y(Shape{x.size(0), weight.size(0), ops::output_extent(x.size(2), weight.size(2), step.stride_h, step.pad_h),
                             ops::output_extent(x.size(3), weight.size(3), step.stride_w, step.pad_w)});
        conv2d_bias_forward(B{}, x, weight, bias, step, true, y);
        return y;
    }
};

template <Scalar T, FeatureKernels B>
Tensor<T, B> pool(const Tensor<T, B>& x, ops::PoolStep p) {
    Tensor<T, B> y(Shape{x.size(0), x.size(1), ops::output_extent(x.size(2), p.size, p.stride, p.pad),
                         ops::output_extent(x.size(3), p.size, p.stride, p.pad)});
    pool2d_forward(B{}, x, p, y);
    return y;
}

inline constexpr ops::PoolStep max_3x3_stride2{3, 2, 0, ops::Pooling::max};
inline constexpr ops::PoolStep max_3x3_same{3, 1, 1, ops::Pooling::max};
inline constexpr ops::PoolStep average_3x3_same{3, 1, 1, ops::Pooling::average_valid};

// The branches' outputs side by side along the channels.
template <Scalar T, FeatureKernels B>
Tensor<T, B> concat(const std::vector<Tensor<T, B>>& parts) {
    int64_t channels = 0;
    for (const auto& p : parts) channels += p.size(1);
    const auto& first = parts.front();
    Tensor<T, B> y(Shape{first.size(0), channels, first.size(2), first.size(3)});
    int64_t at = 0;
    for (const auto& p : parts) {
        check(p.size(2) == first.size(2) && p.size(3) == first.size(3), "inception: branches of sizes ", first.shape(),
              " and ", p.shape(), " cannot be concatenated");
        copy_window(B{}, p, ops::CopyWindow{0, 0, at, 0, p.size(1), p.size(2) * p.size(3)}, y);
        at += p.size(1);
    }
    return y;
}

inline ops::Conv2dStep pad(int64_t h, int64_t w) { return {1, 1, h, w}; }
inline constexpr ops::Conv2dStep stride2{2, 2, 0, 0};

// Mixed_5b..5d: 1x1 | 1x1, 5x5 | 1x1, 3x3, 3x3 | average pool, 1x1.
template <Scalar T, FeatureKernels B>
struct BlockA {
    ConvBnRelu<T, B> b1, b5_1, b5_2, d1, d2, d3, pool_conv;
    static BlockA load(io::WeightReader& r, const std::string& p, int64_t in, int64_t pool_features) {
        using C = ConvBnRelu<T, B>;
        return {C::load(r, p + ".branch1x1", in, 64, 1, 1),         C::load(r, p + ".branch5x5_1", in, 48, 1, 1),
                C::load(r, p + ".branch5x5_2", 48, 64, 5, 5, pad(2, 2)), C::load(r, p + ".branch3x3dbl_1", in, 64, 1, 1),
                C::load(r, p + ".branch3x3dbl_2", 64, 96, 3, 3, pad(1, 1)),
                C::load(r, p + ".branch3x3dbl_3", 96, 96, 3, 3, pad(1, 1)),
                C::load(r, p + ".branch_pool", in, pool_features, 1, 1)};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        return concat<T, B>({b1.forward(x), b5_2.forward(b5_1.forward(x)), d3.forward(d2.forward(d1.forward(x))),
                             pool_conv.forward(pool(x, average_3x3_same))});
    }
};

// Mixed_6a: 3x3 stride 2 | 1x1, 3x3, 3x3 stride 2 | max pool stride 2.
template <Scalar T, FeatureKernels B>
struct BlockB {
    ConvBnRelu<T, B> b3, d1, d2, d3;
    static BlockB load(io::WeightReader& r, const std::string& p, int64_t in) {
        using C = ConvBnRelu<T, B>;
        return {C::load(r, p + ".branch3x3", in, 384, 3, 3, stride2), C::load(r, p + ".branch3x3dbl_1", in, 64, 1, 1),
                C::load(r, p + ".branch3x3dbl_2", 64, 96, 3, 3, pad(1, 1)),
                C::load(r, p + ".branch3x3dbl_3", 96, 96, 3, 3, stride2)};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        return concat<T, B>({b3.forward(x), d3.forward(d2.forward(d1.forward(x))), pool(x, max_3x3_stride2)});
    }
};

// Mixed_6b..6e: 1x1 | 1x1, 1x7, 7x1 | 1x1, 7x1, 1x7, 7x1, 1x7 | average pool, 1x1.
template <Scalar T, FeatureKernels B>
struct BlockC {
    ConvBnRelu<T, B> b1, s1, s2, s3, d1, d2, d3, d4, d5, pool_conv;
    static BlockC load(io::WeightReader& r, const std::string& p, int64_t in, int64_t c7) {
        using C = ConvBnRelu<T, B>;
        return {C::load(r, p + ".branch1x1", in, 192, 1, 1),
                C::load(r, p + ".branch7x7_1", in, c7, 1, 1),
                C::load(r, p + ".branch7x7_2", c7, c7, 1, 7, pad(0, 3)),
                C::load(r, p + ".branch7x7_3", c7, 192, 7, 1, pad(3, 0)),
                C::load(r, p + ".branch7x7dbl_1", in, c7, 1, 1),
                C::load(r, p + ".branch7x7dbl_2", c7, c7, 7, 1, pad(3, 0)),
                C::load(r, p + ".branch7x7dbl_3", c7, c7, 1, 7, pad(0, 3)),
                C::load(r, p + ".branch7x7dbl_4", c7, c7, 7, 1, pad(3, 0)),
                C::load(r, p + ".branch7x7dbl_5", c7, 192, 1, 7, pad(0, 3)),
                C::load(r, p + ".branch_pool", in, 192, 1, 1)};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        return concat<T, B>({b1.forward(x), s3.forward(s2.forward(s1.forward(x))),
                             d5.forward(d4.forward(d3.forward(d2.forward(d1.forward(x))))),
                             pool_conv.forward(pool(x, average_3x3_same))});
    }
};

// Mixed_7a: 1x1, 3x3 stride 2 | 1x1, 1x7, 7x1, 3x3 stride 2 | max pool stride 2.
template <Scalar T, FeatureKernels B>
struct BlockD {
    ConvBnRelu<T, B> t1, t2, s1, s2, s3, s4;
    static BlockD load(io::WeightReader& r, const std::string& p, int64_t in) {
        using C = ConvBnRelu<T, B>;
        return {C::load(r, p + ".branch3x3_1", in, 192, 1, 1),
                C::load(r, p + ".branch3x3_2", 192, 320, 3, 3, stride2),
                C::load(r, p + ".branch7x7x3_1", in, 192, 1, 1),
                C::load(r, p + ".branch7x7x3_2", 192, 192, 1, 7, pad(0, 3)),
                C::load(r, p + ".branch7x7x3_3", 192, 192, 7, 1, pad(3, 0)),
                C::load(r, p + ".branch7x7x3_4", 192, 192, 3, 3, stride2)};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        return concat<T, B>({t2.forward(t1.forward(x)), s4.forward(s3.forward(s2.forward(s1.forward(x)))),
                             pool(x, max_3x3_stride2)});
    }
};

// Mixed_7b, 7c: 1x1 | 1x1, (1x3 | 3x1) | 1x1, 3x3, (1x3 | 3x1) | pool, 1x1. The pool is the
// padding-free average in 7b and a 3x3 maximum in 7c.
template <Scalar T, FeatureKernels B>
struct BlockE {
    ConvBnRelu<T, B> b1, t1, t2a, t2b, d1, d2, d3a, d3b, pool_conv;
    ops::PoolStep pool_step;
    static BlockE load(io::WeightReader& r, const std::string& p, int64_t in, ops::PoolStep pool_step) {
        using C = ConvBnRelu<T, B>;
        return {C::load(r, p + ".branch1x1", in, 320, 1, 1),
                C::load(r, p + ".branch3x3_1", in, 384, 1, 1),
                C::load(r, p + ".branch3x3_2a", 384, 384, 1, 3, pad(0, 1)),
                C::load(r, p + ".branch3x3_2b", 384, 384, 3, 1, pad(1, 0)),
                C::load(r, p + ".branch3x3dbl_1", in, 448, 1, 1),
                C::load(r, p + ".branch3x3dbl_2", 448, 384, 3, 3, pad(1, 1)),
                C::load(r, p + ".branch3x3dbl_3a", 384, 384, 1, 3, pad(0, 1)),
                C::load(r, p + ".branch3x3dbl_3b", 384, 384, 3, 1, pad(1, 0)),
                C::load(r, p + ".branch_pool", in, 192, 1, 1),
                pool_step};
    }
    [[nodiscard]] Tensor<T, B> forward(const Tensor<T, B>& x) const {
        const auto t = t1.forward(x), d = d2.forward(d1.forward(x));
        return concat<T, B>({b1.forward(x), t2a.forward(t), t2b.forward(t), d3a.forward(d), d3b.forward(d),
                             pool_conv.forward(pool(x, pool_step))});
    }
};

}  // namespace inception

// The network: images [N, 3, H, W] already preprocessed (inception_input) to [N, 2048].
template <Scalar T, FeatureKernels B>
class InceptionV3 {
public:
    // Weights in pytorch-fid's naming (FIDInceptionV3's state_dict; the fc layer, if
    // present, is read and ignored: the features come before it).
    static InceptionV3 load(const io::SafetensorsFile& file) {
        io::WeightReader r(file);
        using C = inception::ConvBnRelu<T, B>;
        using namespace inception;
        InceptionV3 n{
            C::load(r, "Conv2d_1a_3x3", 3, 32, 3, 3, stride2),
            C::load(r, "Conv2d_2a_3x3", 32, 32, 3, 3),
            C::load(r, "Conv2d_2b_3x3", 32, 64, 3, 3, pad(1, 1)),
            C::load(r, "Conv2d_3b_1x1", 64, 80, 1, 1),
            C::load(r, "Conv2d_4a_3x3", 80, 192, 3, 3),
            {BlockA<T, B>::load(r, "Mixed_5b", 192, 32), BlockA<T, B>::load(r, "Mixed_5c", 256, 64),
             BlockA<T, B>::load(r, "Mixed_5d", 288, 64)},
            BlockB<T, B>::load(r, "Mixed_6a", 288),
            {BlockC<T, B>::load(r, "Mixed_6b", 768, 128), BlockC<T, B>::load(r, "Mixed_6c", 768, 160),
             BlockC<T, B>::load(r, "Mixed_6d", 768, 160), BlockC<T, B>::load(r, "Mixed_6e", 768, 192)},
            BlockD<T, B>::load(r, "Mixed_7a", 768),
            BlockE<T, B>::load(r, "Mixed_7b", 1280, average_3x3_same),
            BlockE<T, B>::load(r, "Mixed_7c", 2048, max_3x3_same)};
        for (const char* extra : {"fc.weight", "fc.bias"})
            if (r.has(extra)) (void)r.read_host<float>({extra}, Shape(std::span<const int64_t>(r.shape(extra))));
        r.check_all_used("Inception-v3");
        return n;
    }

    // Features [N, 2048] of preprocessed images [N, 3, 299, 299].
    [[nodiscard]] Tensor<T, B> features(const Tensor<T, B>& x) const {
        check(x.rank() == 4 && x.size(1) == 3 && x.size(2) == inception_size && x.size(3) == inception_size,
              "Inception-v3: input ", x.shape(), " is not [N, 3, 299, 299]");
        using namespace inception;
        auto h = pool(c4a.forward(c3b.forward(pool(c2b.forward(c2a.forward(c1a.forward(x))), max_3x3_stride2))),
                      max_3x3_stride2);
        for (const auto& b : mixed5) h = b.forward(h);
        h = mixed6a.forward(h);
        for (const auto& b : mixed6) h = b.forward(h);
        h = mixed7c.forward(mixed7b.forward(mixed7a.forward(h)));
        const auto pooled = pool(h, ops::PoolStep{h.size(2), 1, 0, ops::Pooling::average_valid});
        return pooled.view(Shape{x.size(0), inception_features});
    }

    inception::ConvBnRelu<T, B> c1a, c2a, c2b, c3b, c4a;
    std::vector<inception::BlockA<T, B>> mixed5;
    inception::BlockB<T, B> mixed6a;
    std::vector<inception::BlockC<T, B>> mixed6;
    inception::BlockD<T, B> mixed7a;
    inception::BlockE<T, B> mixed7b, mixed7c;
};

}  // namespace mpnet::metrics
