// Turning positions of the data order into a training batch.
//
// Pixels become floats by x / 127.5 - 1 (uint8 [0, 255] to [-1, 1], as the reference does),
// NCHW; a latent dataset's samples are drawn from their posteriors and normalised
// (latents.hpp); labels become one-hot rows. A batch is a pure function of the dataset, the seed, the
// flip setting and the first position, which is what makes resuming exact.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "mpnet/data/dataset.hpp"
#include "mpnet/data/latents.hpp"
#include "mpnet/data/order.hpp"

namespace mpnet::data {

struct Batch {
    std::vector<float> images;         // [n, channels, resolution, resolution] in [-1, 1]
    std::vector<float> labels_onehot;  // [n, num_classes], empty for an unlabelled dataset
    int64_t n = 0;
    std::vector<int64_t> indices;  // the dataset index of each image (after --skip-bad's replacements)
};

// The n images at positions [first, first + n) of `order`, mirrored left-right where
// `xflip` is on and the order says so. A streamed dataset's images are decoded by `threads`
// threads (each image is independent, so the batch does not depend on their number).
inline Batch make_batch(const Dataset& ds, DataOrder& order, bool xflip, uint64_t first, int64_t n, int threads = 1) {
    const auto image = static_cast<int64_t>(ds.image_bytes());
    Batch b;
    b.n = n;
    b.images.resize(static_cast<std::size_t>(n * image));
    b.labels_onehot.assign(static_cast<std::size_t>(n * ds.num_classes), 0.0f);
    b.indices.resize(static_cast<std::size_t>(n));
    std::vector<char> flips(static_cast<std::size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
        const uint64_t position = first + static_cast<uint64_t>(k);
        b.indices[static_cast<std::size_t>(k)] = order.index_at(position);
        flips[static_cast<std::size_t>(k)] = xflip && order.flip(position);
    }
    const LatentNormalization norm = ds.latent ? stability_vae_normalization() : LatentNormalization{};
    const uint64_t latent_stream = order.latent_stream();
    // A latent: drawn from its stored posterior with noise indexed by position and element.
    auto fill_latent = [&](int64_t k, std::vector<float>& scratch) {
        const int64_t res = ds.resolution, plane = res * res;
        int64_t& index = b.indices[static_cast<std::size_t>(k)];
        index = ds.read_substituting(index, [&](int64_t j) { ds.read_latent(j, scratch.data()); });
        const bool flip = flips[static_cast<std::size_t>(k)] != 0;
        const uint64_t base = (first + static_cast<uint64_t>(k)) * static_cast<uint64_t>(image);
        float* dst = b.images.data() + k * image;
        for (int64_t c = 0; c < ds.channels; ++c)
            for (int64_t y = 0; y < res; ++y)
                for (int64_t x = 0; x < res; ++x) {
                    const int64_t out = c * plane + y * res + x, from = c * plane + y * res + (flip ? res - 1 - x : x);
                    const auto noise = static_cast<float>(rng::normal(latent_stream, base + static_cast<uint64_t>(out)));
                    dst[out] = final_latent(scratch[static_cast<std::size_t>(from)],
                                            scratch[static_cast<std::size_t>(image + from)], noise,
                                            norm.scale[static_cast<std::size_t>(c)], norm.bias[static_cast<std::size_t>(c)]);
                }
    };
    auto fill = [&](int64_t k, std::vector<uint8_t>& scratch) {
        const int64_t res = ds.resolution;
        int64_t& index = b.indices[static_cast<std::size_t>(k)];
        const uint8_t* src = scratch.data();
        if (ds.streamed()) index = ds.read_substituting(index, [&](int64_t j) { ds.read_image(j, scratch.data()); });
        else src = ds.image(index);
        const bool flip = flips[static_cast<std::size_t>(k)] != 0;
        float* dst = b.images.data() + k * image;
        for (int64_t row = 0; row < image / res; ++row)
            for (int64_t x = 0; x < res; ++x) {
                const int64_t from = flip ? res - 1 - x : x;
                dst[row * res + x] = static_cast<float>(src[row * res + from]) / 127.5f - 1.0f;
            }
    };
    const bool parallel = ds.streamed() || ds.latent;  // work worth more threads than the loader's own
    const int workers = parallel ? static_cast<int>(std::clamp<int64_t>(threads, 1, n)) : 1;
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
    auto work = [&](int w) {
        try {
            if (ds.latent) {
                std::vector<float> scratch(ds.latent_floats());
                for (int64_t k = w; k < n; k += workers) fill_latent(k, scratch);
                return;
            }
            std::vector<uint8_t> scratch(ds.streamed() ? ds.image_bytes() : 0);
            for (int64_t k = w; k < n; k += workers) fill(k, scratch);
        } catch (...) {
            errors[static_cast<std::size_t>(w)] = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; ++w) pool.emplace_back(work, w);
    work(0);
    for (auto& t : pool) t.join();
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
    // Labels last: with --skip-bad a slot may hold another sample than the order named.
    for (int64_t k = 0; k < n && ds.num_classes > 0; ++k)
        b.labels_onehot[static_cast<std::size_t>(
            k * ds.num_classes + ds.labels[static_cast<std::size_t>(b.indices[static_cast<std::size_t>(k)])])] = 1.0f;
    return b;
}

}  // namespace mpnet::data
