// The feature networks on the GPU: each feature kernel against the CPU kernel on the same
// inputs, and Inception-v3 and DINOv2 (depth 2) against the reference code's features
// (tests/data/metrics_golden.safetensors, scripts/metrics_golden.py).
#include <doctest/doctest.h>

#include "cuda_test.cuh"
#include "formula_weights.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/metrics/dinov2.hpp"
#include "mpnet/metrics/inception_v3.hpp"
#include "mpnet/metrics/preprocess.hpp"

using namespace mpnet;

TEST_CASE_TEMPLATE("cuda feature kernels: conv with bias, pooling, window copies, layer norm, GELU", T, float, double) {
    const Shape shape{2, 6, 11, 9};
    const std::vector<CpuTensor<T>> inputs{test::random_cpu<T>(shape, 1),           test::random_cpu<T>(Shape{5, 6, 3, 3}, 2, 0.3),
                                           test::random_cpu<T>(Shape{5}, 3),        test::random_cpu<T>(Shape{5, 6, 1, 7}, 4, 0.3),
                                           test::random_cpu<T>(Shape{6}, 5),        test::random_cpu<T>(Shape{6}, 6)};
    test::compare_backends<T>(
        [&](auto tag, const auto& in) {
            using Tn = std::decay_t<decltype(in[0])>;
            std::vector<Tn> out;
            Tn strided(Shape{2, 5, 5, 4});
            conv2d_bias_forward(tag, in[0], in[1], in[2], ops::Conv2dStep{2, 2, 0, 0}, true, strided);
            out.push_back(strided);
            Tn same(Shape{2, 5, 11, 9});
            conv2d_bias_forward(tag, in[0], in[1], in[2], ops::Conv2dStep{1, 1, 1, 1}, false, same);
            out.push_back(same);
            Tn wide(Shape{2, 5, 11, 9});
            conv2d_bias_forward(tag, in[0], in[3], in[2], ops::Conv2dStep{1, 1, 0, 3}, true, wide);
            out.push_back(wide);
            for (const ops::PoolStep p : {ops::PoolStep{3, 2, 0, ops::Pooling::max}, ops::PoolStep{3, 1, 1, ops::Pooling::max},
                                          ops::PoolStep{3, 1, 1, ops::Pooling::average_valid}}) {
                Tn pooled(Shape{2, 6, ops::output_extent(11, 3, p.stride, p.pad), ops::output_extent(9, 3, p.stride, p.pad)});
                pool2d_forward(tag, in[0], p, pooled);
                out.push_back(pooled);
            }
            Tn window(Shape{2, 8, 1, 120});
            fill(tag, window, T(0));
            copy_window(tag, in[0], ops::CopyWindow{1, 2, 3, 5, 4, 90}, window);
            out.push_back(window);
            Tn normed(shape), activated(shape);
            layer_norm_channels_forward(tag, in[0], 1e-6, in[4], in[5], normed);
            gelu_forward(tag, in[0], activated);
            out.push_back(normed);
            out.push_back(activated);
            return out;
        },
        test::gpu_fwd_tol<T>, inputs);
}

TEST_CASE("cuda metrics: Inception-v3 and DINOv2 features match the reference networks") {
    const auto golden = io::SafetensorsFile::open(test::test_data_dir() + "/metrics_golden.safetensors");
    const auto pixels = golden.read<uint8_t>("images");
    const metrics::ImageBatch images{pixels, 2, 3, 37, 45};
    // The CPU networks' tolerance (test_metrics.cpp): summation orders only.
    const auto inception = metrics::InceptionV3<float, CudaBackend>::load(test::formula_weights(golden, "inception"));
    const auto x = CudaTensor<float>::from_host(Shape{2, 3, 299, 299}, metrics::inception_input(images));
    MPNET_CHECK_GPU(inception.features(x), test::load<float>(golden, "inception.features"), 1e-5);
    const auto dino = metrics::DinoV2<float, CudaBackend>::load(test::formula_weights(golden, "dinov2"), 224);
    const auto y = CudaTensor<float>::from_host(Shape{2, 3, 224, 224}, metrics::dinov2_input(images));
    MPNET_CHECK_GPU(dino.features(y), test::load<float>(golden, "dinov2.features"), 1e-5);
}
