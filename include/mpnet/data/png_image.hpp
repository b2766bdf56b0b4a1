// Decoding one PNG image held in memory, with Debian's stb_image (libstb, linked via pkg-config).
//
// stb_image checks neither chunk CRCs nor that the file is complete, so a flipped bit in the
// compressed data would decode to silently wrong pixels. The chunk structure is therefore
// verified first: signature, chunk lengths within the file, every CRC, and a final IEND.
// 16-bit images are reduced to 8 bits by stb_image.
#pragma once
#include <stb_image.h>
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/data/big_endian.hpp"

namespace mpnet::data {

struct ImageInfo {
    int64_t width = 0, height = 0, channels = 0;  // channels as stored: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
};

// Throws unless `bytes` is a structurally complete PNG file with intact chunk CRCs.
inline void verify_png_chunks(std::span<const uint8_t> bytes, const std::string& source) {
    static constexpr uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    check(bytes.size() >= 8 && std::equal(signature, signature + 8, bytes.begin()), source,
          ": not a PNG file (bad signature)");
    std::size_t at = 8;
    for (;;) {
        check(bytes.size() - at >= 12, source, ": truncated PNG (chunk header at byte ", at, " is cut off)");
        const uint8_t* p = bytes.data() + at;
        const std::size_t length = read_be32(p);
        check(length <= bytes.size() - at - 12, source, ": truncated PNG (chunk at byte ", at, " runs past the end)");
        const uint32_t stored = read_be32(p + 8 + length);
        const auto computed = static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), p + 4, static_cast<uInt>(length + 4)));
        check(stored == computed, source, ": corrupt PNG (CRC mismatch in the chunk at byte ", at, ")");
        at += 12 + length;
        if (std::equal(p + 4, p + 8, "IEND")) return;
    }
}

// Verifies the chunks and reads the header, so shapes can be checked before anything is decoded.
inline ImageInfo png_info(std::span<const uint8_t> bytes, const std::string& source) {
    check(bytes.size() <= static_cast<std::size_t>(INT_MAX), source, ": image file too large (", bytes.size(),
          " bytes)");
    verify_png_chunks(bytes, source);
    int w = 0, h = 0, c = 0;
    if (stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &c) == 0)
        fail(source, ": unreadable PNG header (", stbi_failure_reason(), ")");
    return {w, h, c};
}

// Decodes to `info.channels` channels and returns the pixels in CHW order.
inline std::vector<uint8_t> decode_png_chw(std::span<const uint8_t> bytes, const ImageInfo& info,
                                           const std::string& source) {
    // The flip flag is process-wide in stb_image; pin it for this thread so other code cannot
    // turn the images upside down.
    stbi_set_flip_vertically_on_load_thread(0);
    int w = 0, h = 0, c = 0;
    const int want = static_cast<int>(info.channels);
    std::unique_ptr<stbi_uc, decltype(&stbi_image_free)> hwc(
        stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &c, want), &stbi_image_free);
    if (!hwc) fail(source, ": corrupt PNG (", stbi_failure_reason(), ")");
    check(w == info.width && h == info.height, source, ": decoded size ", w, "x", h, " differs from the header");

    const std::size_t plane = static_cast<std::size_t>(w) * static_cast<std::size_t>(h);
    std::vector<uint8_t> chw(plane * static_cast<std::size_t>(want));
    for (std::size_t i = 0; i < plane; ++i)
        for (int ch = 0; ch < want; ++ch) chw[static_cast<std::size_t>(ch) * plane + i] = hwc.get()[i * want + ch];
    return chw;
}

}  // namespace mpnet::data
