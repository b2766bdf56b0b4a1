// Contact sheets of equally sized images: a plain near-square grid, or rows with a text
// label each (drawn with the stb_easy_font bitmap font).
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include <stb/stb_easy_font.h>

#include "mpnet/io/png.hpp"

namespace mpnet::io {

struct GridStyle {
    int gap = 2;                // pixels around and between cells
    uint8_t background = 32;
    uint8_t text = 255;
};

struct GridRow {
    std::string label;
    std::vector<Image> images;
};

namespace detail {

// The font's printable ASCII; anything else would index past its tables.
inline std::string printable(std::string_view text) {
    std::string s(text);
    for (char& ch : s)
        if (ch < 32 || ch > 126) ch = '?';
    return s;
}

// Integer scale of the 12-pixel font so that labels are about half a cell high.
inline int text_scale(int cell_height) { return std::max(1, cell_height / 16); }

inline int text_width(std::string_view text, int scale) {
    std::string s = printable(text);
    return stb_easy_font_width(s.data()) * scale;
}

inline void check_cells(const std::vector<const Image*>& cells) {
    check(!cells.empty(), "image grid: no images");
    for (const Image* img : cells)
        check(img->width == cells[0]->width && img->height == cells[0]->height && img->channels == cells[0]->channels,
              "image grid: images differ in size (", img->width, "x", img->height, "x", img->channels, " vs ",
              cells[0]->width, "x", cells[0]->height, "x", cells[0]->channels, ")");
}

inline void blit(Image& dst, const Image& src, int x0, int y0) {
    for (int y = 0; y < src.height; ++y)
        std::copy_n(&src.pixels[std::size_t(y) * std::size_t(src.width) * std::size_t(src.channels)],
                    std::size_t(src.width) * std::size_t(src.channels), &dst.at(x0, y0 + y, 0));
}

}  // namespace detail

// Draws text with its top-left corner at (x, y), each font pixel a scale x scale square;
// whatever falls outside the image is clipped.
inline void draw_text(Image& img, int x, int y, std::string_view text, int scale, uint8_t value) {
    std::string s = detail::printable(text);
    struct Vertex {
        float x, y, z;
        unsigned char color[4];
    };
    std::vector<Vertex> quads(s.size() * 64 + 64);  // the font's worst case is well below 64 quads per glyph
    const int count = stb_easy_font_print(0, 0, s.data(), nullptr, quads.data(), int(quads.size() * sizeof(Vertex)));
    for (int q = 0; q < count; ++q) {
        const Vertex* v = &quads[std::size_t(q) * 4];
        const int x0 = x + int(v[0].x) * scale, y0 = y + int(v[0].y) * scale;
        const int x1 = x + int(v[2].x) * scale, y1 = y + int(v[2].y) * scale;
        for (int py = std::max(y0, 0); py < std::min(y1, img.height); ++py)
            for (int px = std::max(x0, 0); px < std::min(x1, img.width); ++px)
                for (int c = 0; c < img.channels; ++c) img.at(px, py, c) = value;
    }
}

// ceil(sqrt(n)) columns, as many rows as needed, filled row by row.
inline Image square_grid(const std::vector<Image>& images, const GridStyle& style = {}) {
    std::vector<const Image*> cells;
    for (const Image& img : images) cells.push_back(&img);
    detail::check_cells(cells);
    const int n = int(images.size());
    const int cols = int(std::ceil(std::sqrt(double(n)))), rows = (n + cols - 1) / cols;
    const int w = images[0].width, h = images[0].height, g = style.gap;
    Image out(g + cols * (w + g), g + rows * (h + g), images[0].channels, style.background);
    for (int i = 0; i < n; ++i) detail::blit(out, images[std::size_t(i)], g + (i % cols) * (w + g), g + (i / cols) * (h + g));
    return out;
}

// One row per entry, its label left of its images; rows may differ in length. The label
// column is as wide as the widest label plus a gap (none when every label is empty).
inline Image labelled_grid(const std::vector<GridRow>& rows, const GridStyle& style = {}) {
    std::vector<const Image*> cells;
    for (const GridRow& r : rows)
        for (const Image& img : r.images) cells.push_back(&img);
    detail::check_cells(cells);
    const int w = cells[0]->width, h = cells[0]->height, g = style.gap, scale = detail::text_scale(h);
    int label_w = 0;
    std::size_t cols = 0;
    for (const GridRow& r : rows) {
        label_w = std::max(label_w, detail::text_width(r.label, scale));
        cols = std::max(cols, r.images.size());
    }
    if (label_w > 0) label_w += g;
    Image out(g + label_w + int(cols) * (w + g), g + int(rows.size()) * (h + g), cells[0]->channels, style.background);
    for (std::size_t r = 0; r < rows.size(); ++r) {
        const int y = g + int(r) * (h + g);
        draw_text(out, g, y + std::max(0, (h - 8 * scale) / 2), rows[r].label, scale, style.text);
        for (std::size_t i = 0; i < rows[r].images.size(); ++i)
            detail::blit(out, rows[r].images[i], g + label_w + int(i) * (w + g), y);
    }
    return out;
}

}  // namespace mpnet::io
