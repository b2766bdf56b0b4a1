// Decoding a JPEG file to RGB as Pillow's Image.open(f).convert('RGB') does: through libjpeg
// (Debian's libjpeg62-turbo, the library Pillow uses) with its defaults (accurate integer
// IDCT, smooth chroma upsampling), gray replicated, and CMYK files read as Adobe's inverted
// CMYK and mixed to RGB with Pillow's formula. ImageNet is JPEG; the dataset tool's crops of
// it need these exact pixels.
#pragma once
#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <jpeglib.h>
#include <jerror.h>

#include "mpnet/core/error.hpp"
#include "mpnet/io/png.hpp"

namespace mpnet::data {

namespace detail {

// libjpeg reports a fatal error by calling error_exit, which must not return: it jumps back
// to the decoder. Only plain-C objects live between setjmp and longjmp.
struct JpegErrors {
    jpeg_error_mgr mgr;
    std::jmp_buf jump;
    bool truncated;
    char message[JMSG_LENGTH_MAX];
};

extern "C" inline void mpnet_jpeg_error_exit(j_common_ptr info) {
    auto* e = reinterpret_cast<JpegErrors*>(info->err);
    (*info->err->format_message)(info, e->message);
    std::longjmp(e->jump, 1);
}

// Warnings are ignored, as Pillow ignores them (ImageNet has files with stray bytes), except a
// premature end of the data: Pillow refuses a truncated file.
extern "C" inline void mpnet_jpeg_message(j_common_ptr info, int level) {
    auto* e = reinterpret_cast<JpegErrors*>(info->err);
    if (level == -1 && info->err->msg_code == JWRN_JPEG_EOF) e->truncated = true;
}

// Fills rows (w*h*c bytes) with the decoded samples in `space`; false with `message` on error.
inline bool jpeg_decode(const uint8_t* data, std::size_t size, J_COLOR_SPACE space, std::vector<uint8_t>& rows,
                        int& width, int& height, int& components, bool& is_cmyk, char* message) {
    jpeg_decompress_struct info;
    JpegErrors errors;
    info.err = jpeg_std_error(&errors.mgr);
    errors.mgr.error_exit = mpnet_jpeg_error_exit;
    errors.mgr.emit_message = mpnet_jpeg_message;
    errors.truncated = false;
    errors.message[0] = '\0';
    if (setjmp(errors.jump)) {
        jpeg_destroy_decompress(&info);
        std::snprintf(message, JMSG_LENGTH_MAX, "%s", errors.message);
        return false;
    }
    jpeg_create_decompress(&info);
    jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
    jpeg_read_header(&info, TRUE);
    is_cmyk = info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK;
    info.out_color_space = is_cmyk ? JCS_CMYK : space;
    jpeg_start_decompress(&info);
    width = int(info.output_width), height = int(info.output_height), components = info.output_components;
    rows.resize(std::size_t(width) * std::size_t(height) * std::size_t(components));
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = rows.data() + std::size_t(info.output_scanline) * std::size_t(width) * std::size_t(components);
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    if (errors.truncated) {
        std::snprintf(message, JMSG_LENGTH_MAX, "truncated JPEG file (premature end of data)");
        return false;
    }
    return true;
}

}  // namespace detail

inline io::Image read_jpeg_rgb(const std::vector<uint8_t>& bytes, const std::string& where) {
    check(!bytes.empty(), where, ": empty file");
    std::vector<uint8_t> rows;
    int w = 0, h = 0, c = 0;
    bool cmyk = false;
    char message[JMSG_LENGTH_MAX];
    if (!detail::jpeg_decode(bytes.data(), bytes.size(), JCS_RGB, rows, w, h, c, cmyk, message))
        fail(where, ": corrupt JPEG (", message, ")");
    io::Image img(w, h, 3);
    if (!cmyk) {
        check(c == 3, where, ": JPEG decoded to ", c, " channels");
        img.pixels = std::move(rows);
        return img;
    }
    // Pillow reads CMYK JPEG as Adobe's inverted CMYK, then r = 255-k - (255-c)(255-k)/255 with
    // its rounding (MULDIV255).
    for (std::size_t p = 0; p < std::size_t(w) * std::size_t(h); ++p) {
        const int k = 255 - rows[p * 4 + 3], nk = 255 - k;
        for (int ch = 0; ch < 3; ++ch) {
            const int v = 255 - rows[p * 4 + std::size_t(ch)];
            const int t = v * nk + 128;
            img.pixels[p * 3 + std::size_t(ch)] = uint8_t(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
        }
    }
    return img;
}

}  // namespace mpnet::data
