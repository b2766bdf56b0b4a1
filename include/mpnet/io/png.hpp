// 8-bit images: conversion from network output, and PNG encoding with stb_image_write
// (link libstb, or compile stb_image_write's implementation into one translation unit).
#pragma once
#include <zlib.h>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include <stb/stb_image_write.h>

#include "mpnet/core/tensor.hpp"
#include "mpnet/io/atomic_file.hpp"

namespace mpnet::io {

// Interleaved (height, width, channels) bytes: 1 channel is grayscale, 3 are RGB.
struct Image {
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> pixels;

    Image() = default;
    Image(int w, int h, int c, uint8_t fill = 0)
        : width(w), height(h), channels(c), pixels(std::size_t(w) * std::size_t(h) * std::size_t(c), fill) {}

    [[nodiscard]] uint8_t& at(int x, int y, int c) {
        return pixels[(std::size_t(y) * std::size_t(width) + std::size_t(x)) * std::size_t(channels) + std::size_t(c)];
    }
    [[nodiscard]] uint8_t at(int x, int y, int c) const {
        return pixels[(std::size_t(y) * std::size_t(width) + std::size_t(x)) * std::size_t(channels) + std::size_t(c)];
    }
};

// The reference's conversion: uint8(clip(x * 127.5 + 128, 0, 255)), truncating like a cast
// of the clipped float; NaN becomes 0.
template <Scalar T>
uint8_t to_pixel(T x) {
    const double v = double(x) * 127.5 + 128;
    return v >= 0 ? uint8_t(std::min(v, 255.0)) : uint8_t(0);
}

// Images [N, C, H, W] (C = 1 or 3) -> one Image each.
template <Scalar T, Backend B>
std::vector<Image> images_from_batch(const Tensor<T, B>& x) {
    check(x.rank() == 4, "images_from_batch: expected [N, C, H, W], got ", x.shape());
    const auto c = int(x.size(1)), h = int(x.size(2)), w = int(x.size(3));
    check(c == 1 || c == 3, "images with ", c, " channels cannot be written as PNG (need 1 or 3)");
    const std::vector<T> host = x.to_host();
    std::vector<Image> out;
    const std::size_t plane = std::size_t(h) * std::size_t(w);
    for (int64_t n = 0; n < x.size(0); ++n) {
        Image img(w, h, c);
        const T* src = host.data() + std::size_t(n) * plane * std::size_t(c);
        for (std::size_t p = 0; p < plane; ++p)
            for (int ch = 0; ch < c; ++ch) img.pixels[p * std::size_t(c) + std::size_t(ch)] = to_pixel(src[std::size_t(ch) * plane + p]);
        out.push_back(std::move(img));
    }
    return out;
}

// Images from uint8 pixels laid out [N, C, H, W] (C = 1 or 3).
inline std::vector<Image> images_from_pixels(std::span<const uint8_t> chw, int64_t n, int c, int h, int w) {
    check(c == 1 || c == 3, "images with ", c, " channels cannot be written as PNG (need 1 or 3)");
    const std::size_t plane = std::size_t(h) * std::size_t(w);
    check(chw.size() == std::size_t(n) * std::size_t(c) * plane, "images_from_pixels: ", chw.size(),
          " pixels are not ", n, "x", c, "x", h, "x", w);
    std::vector<Image> out;
    for (int64_t i = 0; i < n; ++i) {
        Image img(w, h, c);
        const uint8_t* src = chw.data() + std::size_t(i) * plane * std::size_t(c);
        for (std::size_t p = 0; p < plane; ++p)
            for (int ch = 0; ch < c; ++ch) img.pixels[p * std::size_t(c) + std::size_t(ch)] = src[std::size_t(ch) * plane + p];
        out.push_back(std::move(img));
    }
    return out;
}

// The PNG file's bytes.
inline std::vector<std::byte> encode_png(const Image& img) {
    check(img.channels == 1 || img.channels == 3 || img.channels == 4, "encode_png: ", img.channels,
          " channels are not supported");
    check(img.width > 0 && img.height > 0 && img.pixels.size() == std::size_t(img.width) * std::size_t(img.height) *
                                                                     std::size_t(img.channels),
          "encode_png: pixel buffer does not match ", img.width, "x", img.height, "x", img.channels);
    std::vector<std::byte> bytes;
    const auto append = [](void* ctx, void* data, int size) {
        auto* out = static_cast<std::vector<std::byte>*>(ctx);
        const auto* p = static_cast<const std::byte*>(data);
        out->insert(out->end(), p, p + size);
    };
    const int ok = stbi_write_png_to_func(append, &bytes, img.width, img.height, img.channels, img.pixels.data(),
                                          img.width * img.channels);
    check(ok != 0 && !bytes.empty(), "encode_png: stb_image_write failed on a ", img.width, "x", img.height,
          " image");
    return bytes;
}

// The PNG file's bytes with the pixel data stored, not compressed (zlib level 0, no row
// filters), as the reference dataset tool writes its datasets: decoding then costs a copy.
inline std::vector<std::byte> encode_png_uncompressed(const Image& img) {
    check(img.channels >= 1 && img.channels <= 4 && img.width > 0 && img.height > 0 &&
              img.pixels.size() == std::size_t(img.width) * std::size_t(img.height) * std::size_t(img.channels),
          "encode_png_uncompressed: pixel buffer does not match ", img.width, "x", img.height, "x", img.channels);
    const std::size_t row = std::size_t(img.width) * std::size_t(img.channels);
    std::vector<Bytef> raw((row + 1) * std::size_t(img.height));
    for (std::size_t y = 0; y < std::size_t(img.height); ++y) {
        raw[y * (row + 1)] = 0;  // filter: none
        std::copy_n(img.pixels.data() + y * row, row, raw.data() + y * (row + 1) + 1);
    }
    uLongf packed_size = compressBound(uLong(raw.size()));
    std::vector<Bytef> packed(packed_size);
    check(compress2(packed.data(), &packed_size, raw.data(), uLong(raw.size()), 0) == Z_OK,
          "encode_png_uncompressed: zlib failed");
    std::vector<std::byte> out;
    auto put = [&](const auto* p, std::size_t n) {
        const auto* b = reinterpret_cast<const std::byte*>(p);
        out.insert(out.end(), b, b + n);
    };
    auto put32 = [&](uint32_t v) {
        const uint8_t be[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
        put(be, 4);
    };
    auto chunk = [&](const char* type, const Bytef* data, std::size_t n) {
        put32(uint32_t(n));
        const std::size_t at = out.size();
        put(type, 4);
        if (n) put(data, n);
        put32(uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(out.data() + at), uInt(n + 4))));
    };
    static constexpr uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    put(signature, 8);
    static constexpr uint8_t color_type[5] = {0, 0, 4, 2, 6};  // gray, gray+alpha, RGB, RGBA
    const uint8_t header[13] = {uint8_t(img.width >> 24), uint8_t(img.width >> 16), uint8_t(img.width >> 8),
                                uint8_t(img.width),       uint8_t(img.height >> 24), uint8_t(img.height >> 16),
                                uint8_t(img.height >> 8), uint8_t(img.height),       8,
                                color_type[img.channels], 0, 0, 0};
    chunk("IHDR", header, 13);
    chunk("IDAT", packed.data(), packed_size);
    chunk("IEND", nullptr, 0);
    return out;
}

// Encodes in memory, then replaces `path` atomically: a failed run leaves no partial file.
inline void write_png(const std::filesystem::path& path, const Image& img) {
    const std::vector<std::byte> bytes = encode_png(img);
    write_file_atomic(path, std::span<const std::byte>(bytes));
}

}  // namespace mpnet::io
