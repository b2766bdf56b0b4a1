// Per-image seeds: the "0-63,100" list syntax, and the noise and class label that belong to
// one seed. Image i depends only on seed i, so a batch may hold any subset of the seeds.
#pragma once
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/core/rng.hpp"
#include "mpnet/core/tensor.hpp"

namespace mpnet::sample {

// The substream purpose of a seed's random class label.
inline constexpr uint64_t label_purpose = 0x6c6162656cULL;  // "label"

namespace detail {
inline uint64_t parse_seed(const std::string& text, const std::string& whole) {
    uint64_t v = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    check(!text.empty() && r.ec == std::errc{} && r.ptr == text.data() + text.size(), "seeds '", whole,
          "': '", text, "' is not a non-negative integer");
    return v;
}
}  // namespace detail

// Parses a comma-separated list of seeds and inclusive ranges ("0-63,100"), in the order
// given; a seed listed twice is an error (it would name two images alike). Overlaps are
// found among the ranges, not the seeds, so a list of millions of seeds parses at once.
inline std::vector<uint64_t> parse_seeds(const std::string& text, std::size_t max_count = 10'000'000) {
    struct Range {
        uint64_t first, last;
    };
    std::vector<Range> ranges;
    std::size_t count = 0, begin = 0;
    while (begin <= text.size()) {
        const std::size_t end = std::min(text.find(',', begin), text.size());
        const std::string item = text.substr(begin, end - begin);
        const std::size_t dash = item.find('-');
        const uint64_t first = detail::parse_seed(item.substr(0, dash), text);
        const uint64_t last = dash == std::string::npos ? first : detail::parse_seed(item.substr(dash + 1), text);
        check(last >= first, "seeds '", text, "': range '", item, "' runs backwards");
        check(last - first < max_count - count, "seeds '", text, "': more than ", max_count, " seeds");
        count += std::size_t(last - first) + 1;
        ranges.push_back({first, last});
        begin = end + 1;
    }
    std::vector<Range> sorted = ranges;
    std::ranges::sort(sorted, {}, &Range::first);
    for (std::size_t i = 1; i < sorted.size(); ++i)
        check(sorted[i].first > sorted[i - 1].last, "seeds '", text, "': seed ", sorted[i].first, " is listed twice");
    std::vector<uint64_t> seeds;
    seeds.reserve(count);
    for (const Range& r : ranges)
        for (uint64_t s = r.first;; ++s) {
            seeds.push_back(s);
            if (s == r.last) break;
        }
    return seeds;
}

// Unit normal noise for a batch: image i is fill_normal(seeds[i], offset 0) over one image.
template <Scalar T, Backend B>
void fill_seed_noise(Tensor<T, B>& noise, std::span<const uint64_t> seeds) {
    check(noise.rank() >= 1 && seeds.size() == static_cast<std::size_t>(noise.size(0)), "fill_seed_noise: ",
          seeds.size(), " seeds for a batch of ", noise.shape());
    for (int64_t i = 0; i < noise.size(0); ++i) {
        Tensor<T, B> row = noise.slice(i, i + 1);
        fill_normal(B{}, row, seeds[static_cast<std::size_t>(i)], 0);
    }
}

// A class drawn uniformly from [0, label_dim) by the seed's own label stream.
inline int64_t seed_class(uint64_t seed, int64_t label_dim) {
    check(label_dim > 0, "seed_class: no classes");
    const auto k = static_cast<int64_t>(rng::uniform(rng::substream(seed, label_purpose), 0) * double(label_dim));
    return std::min(k, label_dim - 1);
}

// One-hot rows [N, label_dim] for the given classes.
template <Scalar T, Backend B>
Tensor<T, B> one_hot(std::span<const int64_t> classes, int64_t label_dim) {
    std::vector<T> v(classes.size() * static_cast<std::size_t>(label_dim), T(0));
    for (std::size_t i = 0; i < classes.size(); ++i) {
        check(0 <= classes[i] && classes[i] < label_dim, "class ", classes[i], " is outside [0, ", label_dim, ")");
        v[i * static_cast<std::size_t>(label_dim) + static_cast<std::size_t>(classes[i])] = T(1);
    }
    return Tensor<T, B>::from_host(Shape{static_cast<int64_t>(classes.size()), label_dim}, v);
}

}  // namespace mpnet::sample
