// PNG output of the sampler: pixel conversion, encoding (read back with stb_image) and grids.
#include <doctest/doctest.h>

#include <stb/stb_image.h>

#include <cmath>
#include <limits>

#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/io/image_grid.hpp"
#include "mpnet/io/png.hpp"

using namespace mpnet;

namespace {

io::Image decode(const std::vector<std::byte>& png) {
    int w = 0, h = 0, c = 0;
    unsigned char* p = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()), int(png.size()), &w,
                                             &h, &c, 0);
    REQUIRE(p != nullptr);
    io::Image img(w, h, c);
    std::copy_n(p, img.pixels.size(), img.pixels.begin());
    stbi_image_free(p);
    return img;
}

io::Image patterned(int w, int h, int c, int salt) {
    io::Image img(w, h, c);
    for (std::size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = uint8_t((i * 37 + std::size_t(salt) * 11) % 256);
    return img;
}

}  // namespace

TEST_CASE("png: pixels are uint8(clip(x * 127.5 + 128, 0, 255)) as in the reference") {
    CHECK(io::to_pixel(-1.0f) == 0);
    CHECK(io::to_pixel(0.0f) == 128);
    CHECK(io::to_pixel(1.0) == 255);
    CHECK(io::to_pixel(0.5) == 191);  // 191.75 truncated
    CHECK(io::to_pixel(-5.0f) == 0);
    CHECK(io::to_pixel(7.0f) == 255);
    CHECK(io::to_pixel(std::numeric_limits<float>::quiet_NaN()) == 0);

    // [N, C, H, W] planes -> interleaved pixels
    std::vector<float> v(2 * 3 * 2 * 2);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = float(i) / 24.0f;
    const auto images = io::images_from_batch(CpuTensor<float>::from_host(Shape{2, 3, 2, 2}, v));
    REQUIRE(images.size() == 2);
    CHECK(images[1].width == 2);
    CHECK(images[1].channels == 3);
    CHECK(images[1].at(1, 0, 2) == io::to_pixel(v[12 + 2 * 4 + 1]));
    CHECK_THROWS_AS(io::images_from_batch(CpuTensor<float>::zeros(Shape{1, 2, 2, 2})), Error);
}

TEST_CASE("png: encoded grayscale and RGB images decode to the same pixels") {
    for (int c : {1, 3}) {
        CAPTURE(c);
        const io::Image img = patterned(13, 7, c, c);
        const io::Image back = decode(io::encode_png(img));
        CHECK(back.width == 13);
        CHECK(back.height == 7);
        CHECK(back.channels == c);
        CHECK(back.pixels == img.pixels);
    }
    CHECK_THROWS_AS(io::encode_png(io::Image(4, 4, 2)), Error);
    io::Image broken(4, 4, 1);
    broken.pixels.pop_back();
    CHECK_THROWS_AS(io::encode_png(broken), Error);
}

TEST_CASE("grid: near-square layout with gaps, cells copied in order") {
    std::vector<io::Image> cells;
    for (int i = 0; i < 5; ++i) cells.push_back(patterned(8, 6, 1, i));
    const io::Image g = io::square_grid(cells, {.gap = 2, .background = 9});
    CHECK(g.width == 2 + 3 * (8 + 2));  // ceil(sqrt(5)) = 3 columns
    CHECK(g.height == 2 + 2 * (6 + 2));
    CHECK(g.at(0, 0, 0) == 9);
    CHECK(g.at(2 + 10 + 3, 2 + 8 + 4, 0) == cells[4].at(3, 4, 0));  // row 1, column 1
    CHECK(g.at(2 + 20 + 3, 2 + 8 + 4, 0) == 9);                     // the empty sixth cell
    cells.push_back(patterned(8, 7, 1, 0));
    CHECK_THROWS_AS(io::square_grid(cells), Error);
}

TEST_CASE("grid: labelled rows have a text column and rows of any length") {
    const io::GridStyle style{.gap = 2, .background = 0, .text = 255};
    std::vector<io::GridRow> rows{{"0 T-shirt", {patterned(32, 32, 3, 1)}},
                                  {"7", {patterned(32, 32, 3, 2), patterned(32, 32, 3, 3)}}};
    const io::Image g = io::labelled_grid(rows, style);
    const int label_w = io::detail::text_width("0 T-shirt", 2) + 2;  // 32-pixel cells: font scale 2
    CHECK(label_w > 40);
    CHECK(g.width == 2 + label_w + 2 * (32 + 2));
    CHECK(g.height == 2 + 2 * (32 + 2));
    CHECK(g.channels == 3);
    int lit = 0;
    for (int y = 2; y < 2 + 32; ++y)
        for (int x = 2; x < label_w; ++x) lit += g.at(x, y, 0) == 255;
    CHECK(lit > 50);  // the label is drawn
    CHECK(g.at(2 + label_w + 34 + 5, 2 + 34 + 6, 1) == rows[1].images[1].at(5, 6, 1));
    CHECK(g.at(2 + label_w + 34 + 5, 2 + 6, 1) == 0);  // row 0 has one image

    const io::Image unlabelled = io::labelled_grid({{"", {patterned(4, 4, 1, 0)}}}, style);
    CHECK(unlabelled.width == 2 + 4 + 2);
    io::Image small(3, 3, 1);
    io::draw_text(small, -5, -5, "clipped \x01 text", 3, 200);  // off the edges and unprintable: no crash
}
