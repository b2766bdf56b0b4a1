// The float 3x3 convolution as Winograd's F(2x2, 3x3): 16 multiply-adds per input channel
// for a 2x2 tile of outputs, where the direct product takes 36.
//
// One-dimensional F(2, 3) computes two outputs of a 3-tap correlation from 4 inputs d with
// 4 products: y = A^T [(G g) . (B^T d)], where . is the elementwise product and
//
//   B^T = | 1  0 -1  0 |    G = | 1    0    0   |    A^T = | 1  1  1  0 |
//         | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//         | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |        | 0    0    1   |
//
// Nested in two dimensions, output tile t (rows 2ty, 2ty + 1, columns 2tx, 2tx + 1) of
// output channel o is A^T M A with, for each of the 16 positions xi of the 4x4 transform,
//
//   M[xi][o, t] = sum_c U[xi][o, c] V[xi][c, t],   U_oc = G g_oc G^T,   V_ct = B^T d_ct B,
//
// d_ct the 4x4 window of channel c from row 2ty - 1 and column 2tx - 1 (zero outside). So
// the convolution becomes 16 products of depth c over the tiles, run on the same
// micro-kernel as the direct convolution, between two cheap transforms (additions only).
//
// The tiles are walked in chunks, each a few panels of the micro-kernel wide, handed to
// the threads first come first served. Per chunk a thread transforms the input windows of
// all 16 positions into V (packed as the kernel's panels), runs the 16 products into M and
// transforms M into the outputs. Every output is formed by the same operations in the
// same order whatever the chunk, the thread or the rest of the batch, so the results do
// not depend on them.
//
// The results differ from the direct sum by rounding only: the transforms add at most
// four terms, with coefficients 1 and 1/2 (exact in binary).
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mpnet/backend/cpu/conv_gemm.hpp"

#if MPNET_CPU_SIMD

namespace mpnet::cpu::conv::winograd {

inline constexpr int positions = 16;  // of the 4x4 transform, xi = 4 i + j

// Tiles per chunk: 4 panels, 2 where the chunk's V and M (16 (c + m) floats per tile) would
// outgrow a few MiB and fall out of the cache between the transforms and the products.
inline int64_t chunk_tiles(int64_t c, int64_t m) {
    return positions * (c + m) * 4 * gemm::nr * int64_t(sizeof(float)) <= (int64_t(3) << 20) ? 4 * gemm::nr
                                                                                             : 2 * gemm::nr;
}

// The tiles of a batch: th x tw per image, numbered image by image, row by row.
struct Tiling {
    int64_t n, channels, h, w;
    [[nodiscard]] int64_t th() const { return (h + 1) / 2; }
    [[nodiscard]] int64_t tw() const { return (w + 1) / 2; }
    [[nodiscard]] int64_t hw() const { return h * w; }
    [[nodiscard]] int64_t per_image() const { return th() * tw(); }
    [[nodiscard]] int64_t total() const { return n * per_image(); }
};

// Tiles on one row of tiles: `count` of them from position `lane` of a vector of tiles on,
// the first of them tile (n, ty, tx). runs_of splits tiles [t, t + count) into such runs.
struct Run {
    int64_t lane, n, ty, tx, count;
};

inline Run tile_at(const Tiling& g, int64_t t) {
    const int64_t r = t % g.per_image();
    return {0, t / g.per_image(), r / g.tw(), r % g.tw(), 1};
}

inline int runs_of(const Tiling& g, int64_t t, int64_t count, Run* runs) {
    int made = 0;
    for (int64_t k = 0; k < count;) {
        Run run = tile_at(g, t + k);
        run.lane = k, run.count = std::min(count - k, g.tw() - run.tx);
        runs[made++] = run;
        k += run.count;
    }
    return made;
}

// u[xi][o][c] = (G g G^T)[xi] for the weight g[o][c][3][3].
inline std::vector<float> transformed_weight(const float* weight, int64_t m, int64_t c) {
    std::vector<float> u(size_t(positions * m * c));
    auto g_times = [](float a, float b, float d) { return std::array{a, 0.5f * (a + b + d), 0.5f * (a - b + d), d}; };
    for (int64_t o = 0; o < m; ++o)
        for (int64_t ci = 0; ci < c; ++ci) {
            const float* k = weight + (o * c + ci) * 9;
            const auto c0 = g_times(k[0], k[3], k[6]), c1 = g_times(k[1], k[4], k[7]), c2 = g_times(k[2], k[5], k[8]);
            for (int i = 0; i < 4; ++i) {
                const auto row = g_times(c0[size_t(i)], c1[size_t(i)], c2[size_t(i)]);
                for (int j = 0; j < 4; ++j) u[size_t(((4 * i + j) * m + o) * c + ci)] = row[size_t(j)];
            }
        }
    return u;
}

// V of a vector of tiles for one channel. Window row r of tile k holds its columns 2k ..
// 2k + 1 at even[r] + 2k and 2k + 2 .. 2k + 3 at shifted[r] + 2k: split into even and odd
// elements, they are the four columns B combines; then B^T combines the rows. The results
// go to position xi's panels at v + xi * stride.
inline void transform_input_vector(const float* const* even, const float* const* shifted, float* v, int64_t stride) {
    simd::vec h[4][4];
    for (int r = 0; r < 4; ++r) {
        simd::vec a0, a1, a2, a3;
        simd::deinterleave(simd::load(even[r]), simd::load(even[r] + simd::lanes), a0, a1);
        simd::deinterleave(simd::load(shifted[r]), simd::load(shifted[r] + simd::lanes), a2, a3);
        h[r][0] = simd::sub(a0, a2), h[r][1] = simd::add(a1, a2), h[r][2] = simd::sub(a2, a1),
        h[r][3] = simd::sub(a1, a3);
    }
    for (int j = 0; j < 4; ++j) {
        simd::store(v + (0 + j) * stride, simd::sub(h[0][j], h[2][j]));
        simd::store(v + (4 + j) * stride, simd::add(h[1][j], h[2][j]));
        simd::store(v + (8 + j) * stride, simd::sub(h[2][j], h[1][j]));
        simd::store(v + (12 + j) * stride, simd::sub(h[1][j], h[3][j]));
    }
}

// V [xi][panel][c][nr] of the chunk's tiles [t0, t1), from the images staged with a zero
// border, a vector of tiles at a time. Where the vector's tiles lie on one row of tiles,
// their windows are read in place; otherwise (images fewer than 2 lanes columns wide, or
// the vector crossing a row) their rows are gathered first. Lanes past t1 hold whatever
// the buffers held: their columns of the products are never transformed back.
template <class S>
void transform_inputs(const Tiling& g, const Images<S>& images, const Staged<>& staged, int64_t t0, int64_t t1,
                      int64_t panels, float* v) {
    constexpr int64_t L = simd::lanes;
    const int64_t c = g.channels, stride = panels * c * gemm::nr;
    Run runs[L];
    alignas(64) float gathered[4][2][2 * L] = {};
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        float* out = v + (k / gemm::nr) * c * gemm::nr + k % gemm::nr;
        auto window = [&](const Run& run) {
            return staged.data + staged.origin(images, run.n, 2 * run.ty * g.w + 2 * run.tx);
        };
        if (made == 1 && count == L) {
            const float* at = window(runs[0]);
            for (int64_t ch = 0; ch < c; ++ch, at += staged.plane) {
                const float* even[4] = {at, at + staged.row, at + 2 * staged.row, at + 3 * staged.row};
                const float* shifted[4] = {even[0] + 2, even[1] + 2, even[2] + 2, even[3] + 2};
                transform_input_vector(even, shifted, out + ch * gemm::nr, stride);
            }
            continue;
        }
        const float* even[4] = {gathered[0][0], gathered[1][0], gathered[2][0], gathered[3][0]};
        const float* shifted[4] = {gathered[0][1], gathered[1][1], gathered[2][1], gathered[3][1]};
        for (int64_t ch = 0; ch < c; ++ch) {
            for (int i = 0; i < made; ++i) {
                const float* at = window(runs[i]) + ch * staged.plane;
                for (int r = 0; r < 4; ++r) {
                    simd::copy(gathered[r][0] + 2 * runs[i].lane, at + r * staged.row, 2 * runs[i].count);
                    simd::copy(gathered[r][1] + 2 * runs[i].lane, at + r * staged.row + 2, 2 * runs[i].count);
                }
            }
            transform_input_vector(even, shifted, out + ch * gemm::nr, stride);
        }
    }
}

// Outputs copied, or rounded once into a 16-bit y.
template <class Y>
void store_row(const float* sums, int64_t count, Y* out) {
    if constexpr (std::is_same_v<Y, float>) simd::copy(out, sums, count);
    else cpu::detail::narrow(sums, out, count);
}

// The outputs of the chunk's tiles [t0, t1) from M [xi][o][chunk], a vector of tiles at a
// time: A^T down the 4x4, A across, and each tile's 2x2 interleaved into the image's two
// rows, stored in place where the vector covers 2 lanes columns of one row, else by runs.
template <class Y>
void transform_outputs(const Tiling& g, int64_t m, int64_t chunk, int64_t t0, int64_t t1, const float* mp, Y* y) {
    constexpr int64_t L = simd::lanes;
    const int64_t stride = m * chunk;  // from one position xi to the next
    Run runs[L];
    alignas(64) float rows[2][2 * L];
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        const bool in_place = std::is_same_v<Y, float> && made == 1 && count == L && 2 * (runs[0].tx + L) <= g.w &&
                              2 * runs[0].ty + 1 < g.h;
        for (int64_t o = 0; o < m; ++o) {
            const float* at = mp + o * chunk + k;
            simd::vec e[4], f[4];
            for (int j = 0; j < 4; ++j) {
                const simd::vec m0 = simd::load(at + j * stride), m1 = simd::load(at + (4 + j) * stride);
                const simd::vec m2 = simd::load(at + (8 + j) * stride), m3 = simd::load(at + (12 + j) * stride);
                e[j] = simd::add(simd::add(m0, m1), m2), f[j] = simd::sub(simd::sub(m1, m2), m3);
            }
            simd::vec top[2], bottom[2];
            simd::interleave(simd::add(simd::add(e[0], e[1]), e[2]), simd::sub(simd::sub(e[1], e[2]), e[3]), top[0],
                             top[1]);
            simd::interleave(simd::add(simd::add(f[0], f[1]), f[2]), simd::sub(simd::sub(f[1], f[2]), f[3]), bottom[0],
                             bottom[1]);
            auto plane = [&](const Run& run) { return y + (run.n * m + o) * g.h * g.w + 2 * run.ty * g.w + 2 * run.tx; };
            if constexpr (std::is_same_v<Y, float>)
                if (in_place) {
                    float* out = plane(runs[0]);
                    simd::store(out, top[0]), simd::store(out + L, top[1]);
                    simd::store(out + g.w, bottom[0]), simd::store(out + g.w + L, bottom[1]);
                    continue;
                }
            simd::store(rows[0], top[0]), simd::store(rows[0] + L, top[1]);
            simd::store(rows[1], bottom[0]), simd::store(rows[1] + L, bottom[1]);
            for (int i = 0; i < made; ++i) {
                const Run& run = runs[i];
                const int64_t cols = std::min(2 * run.count, g.w - 2 * run.tx);
                store_row(rows[0] + 2 * run.lane, cols, plane(run));
                if (2 * run.ty + 1 < g.h) store_row(rows[1] + 2 * run.lane, cols, plane(run) + g.w);
            }
        }
    }
}

// Where F(2x2, 3x3) is faster than the direct product of conv_gemm.hpp. Measured on AVX2
// (Zen 3, 2 threads) over the fmnist-s and edm2-img64-xs shapes: 1.3-1.9x from 32 input
// and output channels up at 8x8 to 64x64; 1.02x at 16 -> 32 channels, 0.74x at 32 -> 8,
// 0.56-0.63x for the input layers (2 or 4 channels), whose transforms cost more than the
// few multiply-adds they save.
template <class S>
bool pays(const Images<S>& g, int64_t m) {
    return g.k == 3 && g.channels >= 32 && m >= 32;
}

// y[n, m, h, w] = the "same" 3x3 correlation of the images g (k = 3) with weight[m, c, 3, 3],
// copied, or rounded once into a 16-bit y.
template <class S, class Y>
void forward(const Images<S>& images, const float* weight, int64_t m, Y* y) {
    const Tiling g{images.n, images.channels, images.h, images.w};
    const int64_t c = g.channels, total = g.total(), chunk = chunk_tiles(c, m), panels = chunk / gemm::nr;
    const int64_t chunks = (total + chunk - 1) / chunk;
    const std::vector<float> u = transformed_weight(weight, m, c);
    const int64_t block = depth_block(c);
    // The chunk's tiles lie on at most chunk / tw + 2 rows of tiles: its pixel columns.
    const Stager stager(images, 2 * g.w * (chunk / g.tw() + 2), /*copy=*/true);
    // Vectors of a window row reach 2 lanes + 2 floats past its start, beyond the staged rows
    // at the end (their values are then those of discarded outputs only).
    const int64_t staging = stager.buffer_size(2 * g.w * (chunk / g.tw() + 2)) + 2 * stager.row() + 4 * simd::lanes;
    const int threads = positions * m * c * total < parallel_work ? 1 : int(std::min<int64_t>(omp_get_max_threads(), chunks));
#pragma omp parallel num_threads(threads)
    {
        ScratchCarver scratch(staging + positions * chunk * (c + m));
        float* staged_rows = scratch.take(staging);
        float* v = scratch.take(positions * chunk * c);  // [xi][panel][c][nr]
        float* mp = scratch.take(positions * chunk * m);  // [xi][o][chunk]
#pragma omp for schedule(dynamic)
        for (int64_t i = 0; i < chunks; ++i) {
            const int64_t t0 = i * chunk, t1 = std::min(total, t0 + chunk);
            // The pixels of the rows of tiles from t0's to (t1 - 1)'s.
            const Run first = tile_at(g, t0), last = tile_at(g, t1 - 1);
            const int64_t p0 = first.n * g.hw() + 2 * first.ty * g.w;
            const int64_t p1 = last.n * g.hw() + std::min(g.h, 2 * last.ty + 2) * g.w;
            const Staged s = stager.stage(p0, p1, staged_rows);
            transform_inputs(g, images, s, t0, t1, panels, v);
            const int64_t used = (t1 - t0 + gemm::nr - 1) / gemm::nr;
            for (int xi = 0; xi < positions; ++xi)
                for (int64_t q = 0; q < c; q += block) {
                    const int64_t q1 = std::min(c, q + block);
                    for (int64_t p = 0; p < used; ++p) {
                        const float* panel = v + ((xi * panels + p) * c + q) * gemm::nr;
                        const float* vectors[gemm::nv];
                        for (int j = 0; j < gemm::nv; ++j) vectors[j] = panel + j * simd::lanes;
                        multiply_panel<gemm::Float32>(u.data() + xi * m * c + q, c, m, q1 - q, vectors,
                                                      gemm::Strided<gemm::nr>{}, mp + xi * m * chunk + p * gemm::nr,
                                                      chunk, q > 0);
                    }
                }
            transform_outputs(g, m, chunk, t0, t1, mp, y);
        }
    }
}

}  // namespace mpnet::cpu::conv::winograd

#endif
