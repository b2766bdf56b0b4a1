// Convolution operands as the micro-kernel reads them.
//
// A "same" k x k convolution sums over q = (c, ky, kx); the operand X(q, col) of output
// column col = (image n, pixel y W + x) is img[n, c, y + ky - k/2, x + kx - k/2], zero
// outside. The image rows a unit of columns needs are copied (streaming, so the
// prefetcher keeps up) into a staging buffer with a zero border, after which
// X(q, col) = staged[origin(col) + offset(q)]; for k = 1 the tensor itself mostly serves
// as the staged images. The operands are read through these two index tables, and
// nothing is unfolded. Only where a vector of columns is not
// contiguous in the staged images (rows narrower than a vector, a panel crossing an
// image) is a panel of X copied out.
//
// Images stored in 16 bits (float16, bfloat16) are always staged, widened to float on the
// way: the kernels then see exactly the float values a widened copy of the tensor would
// hold, without that copy.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mpnet/backend/cpu/gemm_kernel.hpp"
#include "mpnet/backend/cpu/half_chunks.hpp"
#include "mpnet/core/error.hpp"

#if MPNET_CPU_SIMD

namespace mpnet::cpu::conv {

// The batch: images [n, channels, h, w] of S (float, or a 16-bit storage type) and the
// square kernel size k (odd).
template <class S = float>
struct Images {
    const S* data;
    int64_t n, channels, h, w, k;
    [[nodiscard]] int64_t hw() const { return h * w; }
    [[nodiscard]] int64_t border() const { return k / 2; }
    [[nodiscard]] int64_t depth() const { return channels * k * k; }
    // Shifted copies per staged channel: k for narrow staging, else one.
    [[nodiscard]] int64_t k_copies(bool narrow) const { return narrow ? k : 1; }
};

// Images [first, ...] as the kernels read them: planes of rows of w + 2 border elements
// (float, or bf16 for the bf16 weight product), which start at padded row `first_row` for
// image `first` (a window of a large image) and at padded row 0 for the others.
template <class T = float>
struct Staged {
    const T* data;
    int64_t first, image, plane, row;
    int64_t first_row = 0;

    // Where column (n, pix) reads for window offset (0, 0) of channel 0.
    template <class S>
    [[nodiscard]] int64_t origin(const Images<S>& g, int64_t n, int64_t pix) const {
        return (n - first) * image + (pix / g.w - (n == first ? first_row : 0)) * row + pix % g.w;
    }
};

// How a product reads the images: copied into a staging buffer with a zero border
// (always for k > 1 and for 16-bit images), or in place (float images with k = 1, where
// the copy would be one more pass over memory that the kernel cannot overlap with its
// arithmetic).
//
// A unit of columns reads at most ceil(columns / w) + 1 rows of an image and their halo, so
// a copy's planes hold only that many rows: for a 512x512 image of 256 channels, a thread's
// buffer takes 2.6 MB instead of the whole padded image (270 MB).
//
// Rows narrower than a vector (8x8 images with 16-float vectors) would put two image rows
// in one vector, which a bordered row cannot serve in place. For products that read
// vectors of columns (`vectors`), such images are staged instead as k copies of each
// channel shifted by kx - k/2, each with a zero row border but no column border and rows
// of exactly w floats: X(q, col) = shifted[c, kx][y + ky][x] is then again
// staged[origin(col) + offset(q)], and a vector of columns is contiguous.
template <class S = float>
class Stager {
public:
    // `columns`: the most columns a unit passed to stage() holds.
    Stager(const Images<S>& g, int64_t columns, bool copy, bool vectors = false)
        : g_(g),
          copy_(copy || g.k > 1 || !std::is_same_v<S, float>),
          narrow_(vectors && g.k > 1 && g.w % simd::lanes != 0 && simd::lanes % g.w == 0),
          rows_(narrow_ || !copy_ ? g.h + 2 * g.border()  // in place: the tensor's own planes
                                  : std::min(g.h, (columns + g.w - 1) / g.w + 1) + 2 * g.border()) {}

    // Whether images are staged as shifted copies with rows of w floats (see above).
    [[nodiscard]] bool narrow() const { return narrow_; }

    // Floats from one staged row to the next.
    [[nodiscard]] int64_t row() const { return narrow_ ? g_.w : g_.w + 2 * g_.border(); }

    // Floats per staged channel. Copied planes whose stride would be a multiple of 1 KiB
    // get one more cache line, so that the rows a panel reads from successive channels
    // spread over the L1 sets.
    [[nodiscard]] int64_t plane() const {
        const int64_t plane = g_.k_copies(narrow_) * rows_ * row();
        return copy_ && plane % 256 == 0 ? plane + 16 : plane;
    }

    // Floats stage() needs for units of up to `columns` columns.
    [[nodiscard]] int64_t buffer_size(int64_t columns) const {
        return copy_ ? std::min(g_.n, columns / g_.hw() + 2) * g_.channels * plane() : 0;
    }

    // offsets[q] = offset(q): c plane + ky row + kx. Offsets and origins are 32-bit,
    // which bounds the staging buffer of units of `columns` columns.
    [[nodiscard]] std::vector<int32_t> window_offsets(int64_t columns) const {
        const int64_t reach = copy_ ? buffer_size(columns) : g_.n * g_.channels * g_.hw();
        check(reach < (int64_t(1) << 31), "conv2d: ", g_.n, " images of ", g_.channels, " channels of ", g_.h, "x",
              g_.w, " are too large for 32-bit offsets");
        const int64_t shifted = (g_.h + 2 * g_.border()) * row();  // narrow: from one kx copy to the next
        std::vector<int32_t> offsets;
        for (int64_t c = 0; c < g_.channels; ++c)
            for (int64_t ky = 0; ky < g_.k; ++ky)
                for (int64_t kx = 0; kx < g_.k; ++kx)
                    offsets.push_back(int32_t(c * plane() + ky * row() + (narrow_ ? kx * shifted : kx)));
        return offsets;
    }

    // The images batch columns [begin, end) read. A copy holds only the rows of their
    // windows, zero on the border (other rows of buf are left as they are), so a unit of
    // a large image costs only its own rows and their halo. Staged as bf16 (T = uint16_t),
    // the images are always copied, rounded on the way.
    template <class T>
    Staged<T> stage(int64_t begin, int64_t end, T* buf) const {
        const int64_t first = begin / g_.hw(), last = (end - 1) / g_.hw();
        if constexpr (std::is_same_v<T, float>) {
            if constexpr (std::is_same_v<S, float>)
                if (!copy_) return {g_.data + first * g_.channels * g_.hw(), first, g_.channels * g_.hw(), g_.hw(), g_.w};
            if (narrow_) return stage_shifted(first, last, buf);
        } else {
            static_assert(std::is_same_v<S, float>, "bf16 pairs are staged from float images");
            check(copy_ && !narrow_, "conv2d: bf16 staging needs a bordered copy");
        }
        const int64_t p = g_.border(), wp = g_.w + 2 * p;
        const Staged<T> s{buf, first, g_.channels * plane(), plane(), wp,
                          rows_ < g_.h + 2 * p ? begin % g_.hw() / g_.w : 0};
        for (int64_t n = first; n <= last; ++n) {
            const int64_t pa = n == first ? begin % g_.hw() : 0, pb = n == last ? (end - 1) % g_.hw() + 1 : g_.hw();
            const int64_t row0 = n == first ? s.first_row : 0;
            for (int64_t c = 0; c < g_.channels; ++c) {
                const S* src = g_.data + (n * g_.channels + c) * g_.hw();
                T* plane = buf + (n - first) * s.image + c * s.plane;
                for (int64_t r = pa / g_.w; r <= (pb - 1) / g_.w + 2 * p; ++r) {  // padded rows
                    T* row = plane + (r - row0) * wp;
                    if (r < p || r >= g_.h + p) {
                        std::fill(row, row + wp, T(0));
                        continue;
                    }
                    std::fill(row, row + p, T(0));
                    if constexpr (!std::is_same_v<T, float>) bf16::narrow(src + (r - p) * g_.w, g_.w, row + p);
                    else if constexpr (std::is_same_v<S, float>) simd::copy(row + p, src + (r - p) * g_.w, g_.w);
                    else cpu::detail::widen(src + (r - p) * g_.w, row + p, g_.w);
                    std::fill(row + p + g_.w, row + wp, T(0));
                }
            }
        }
        return s;
    }

private:
    // Narrow staging of whole images [first, last]: per channel, for each kx, the image
    // shifted left by kx - border with zeros shifted in, below and above `border` zero rows.
    Staged<float> stage_shifted(int64_t first, int64_t last, float* buf) const {
        const int64_t p = g_.border(), w = g_.w, rows = g_.h + 2 * p, shifted = rows * w;
        const Staged<float> s{buf, first, g_.channels * plane(), plane(), w};
        for (int64_t n = first; n <= last; ++n)
            for (int64_t c = 0; c < g_.channels; ++c) {
                const S* src = g_.data + (n * g_.channels + c) * g_.hw();
                float* plane = buf + (n - first) * s.image + c * s.plane;
                for (int64_t kx = 0; kx < g_.k; ++kx) {
                    float* out = plane + kx * shifted;
                    std::fill(out, out + p * w, 0.0f);
                    std::fill(out + (g_.h + p) * w, out + rows * w, 0.0f);
                    for (int64_t y = 0; y < g_.h; ++y)
                        for (int64_t x = 0; x < w; ++x) {
                            const int64_t sx = x + kx - p;
                            out[(y + p) * w + x] = sx >= 0 && sx < w ? widened(src[y * w + sx]) : 0.0f;
                        }
                }
            }
        return s;
    }

    const Images<S>& g_;
    bool copy_, narrow_;
    int64_t rows_;  // padded rows per staged plane
};

// Columns [col, col + len) of a chunk that lie on one image row, never crossing a panel of nr.
struct Run {
    int64_t n, pix;
    int32_t col, len;
};

// The runs covering batch columns [begin, end) (column = n hw + pix), col relative to begin.
template <class S>
void column_runs(const Images<S>& g, int64_t begin, int64_t end, std::vector<Run>& runs) {
    runs.clear();
    for (int64_t j = begin; j < end;) {
        const int64_t n = j / g.hw(), pix = j % g.hw(), col = j - begin;
        const int64_t len = std::min({g.w - pix % g.w, end - j, gemm::nr - col % gemm::nr});
        runs.push_back({n, pix, int32_t(col), int32_t(len)});
        j += len;
    }
}

// origins[i] = origin of batch column begin + i step, for begin + i step < end.
template <class S, class T>
void column_origins(const Images<S>& g, const Staged<T>& s, int64_t begin, int64_t end,
                           std::vector<int32_t>& origins, int64_t step = 1) {
    origins.resize(size_t((end - begin + step - 1) / step));
    for (int64_t j = begin; j < end; j += step)
        origins[size_t((j - begin) / step)] = int32_t(s.origin(g, j / g.hw(), j % g.hw()));
}

// Whether the nr columns from batch column j can be read in place: in one image, each
// vector on one staged row (for k = 1, and for narrow staging, the rows of a plane follow
// each other unpadded).
template <class S>
bool contiguous_panel(const Images<S>& g, int64_t j, bool narrow) {
    const int64_t pix = j % g.hw();
    return pix + gemm::nr <= g.hw() && (g.k == 1 || narrow || (g.w % simd::lanes == 0 && pix % simd::lanes == 0));
}

// Rows [q0, q1) of X for the `width` (<= nr) batch columns from j as one packed panel:
// X(q, j + i) at out[(q - q0) nr + i], zero for i >= width.
template <class S>
void pack_panel(const Images<S>& g, const Staged<>& s, const std::vector<int32_t>& offsets, int64_t j,
                       int64_t width, int64_t q0, int64_t q1, std::vector<Run>& runs, float* out) {
    if (width < gemm::nr) std::fill(out, out + (q1 - q0) * gemm::nr, 0.0f);
    column_runs(g, j, j + width, runs);
    for (int64_t q = q0; q < q1; ++q)
        for (const Run& r : runs)
            simd::copy(out + (q - q0) * gemm::nr + r.col, s.data + s.origin(g, r.n, r.pix) + offsets[size_t(q)], r.len);
}

// The chunk's columns of dy [n, channels, hw] transposed into panels of nr channels:
// panel P holds dy[n, P nr + i, pix] of chunk column col at out[(P columns + col) nr + i],
// zero for channels past the last. Blocks of lanes x lanes go through registers. A 16-bit
// dy is widened on the way, lanes elements at a time.
template <class D>
void pack_transposed(const D* dy, int64_t channels, int64_t hw, const std::vector<Run>& runs,
                            int64_t columns, float* out) {
    constexpr int lanes = simd::lanes;
    simd::vec block[lanes];
    for (int64_t c0 = 0; c0 < channels; c0 += lanes) {
        float* panel = out + c0 / gemm::nr * columns * gemm::nr + c0 % gemm::nr;
        const int64_t height = std::min<int64_t>(lanes, channels - c0);
        for (const Run& r : runs)
            for (int64_t t = 0; t < r.len; t += lanes) {
                const int width = int(std::min<int64_t>(lanes, r.len - t));
                const D* src = dy + (r.n * channels + c0) * hw + r.pix + t;
                for (int64_t i = 0; i < lanes; ++i) {
                    if (i >= height) {
                        block[i] = simd::zero();
                    } else if constexpr (std::is_same_v<D, float>) {
                        block[i] = simd::load_first(src + i * hw, width);
                    } else {
                        float wide[lanes];
                        cpu::detail::widen(src + i * hw, wide, width);
                        block[i] = simd::load_first(wide, width);
                    }
                }
                simd::transpose(block);
                for (int i = 0; i < width; ++i) simd::store(panel + (r.col + t + i) * gemm::nr, block[i]);
            }
    }
    for (int64_t c0 = (channels + lanes - 1) / lanes * lanes; c0 % gemm::nr; c0 += lanes) {
        float* panel = out + c0 / gemm::nr * columns * gemm::nr + c0 % gemm::nr;
        for (int64_t col = 0; col < columns; ++col) simd::store(panel + col * gemm::nr, simd::zero());
    }
}

}  // namespace mpnet::cpu::conv

#endif
