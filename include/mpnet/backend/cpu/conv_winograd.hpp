// The "same" 3x3 convolution's output products (the forward, and the input gradient as the
// convolution of dy with the flipped weight) as Winograd's F(2x2, 3x3): 16 multiply-adds per
// input channel for a 2x2 tile of outputs, where the direct product takes 36.
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
// The results differ from the direct sum by rounding only: the transforms' coefficients (1,
// 1/2, 1/4) are exact in binary. Where an input holds an infinity, its terms can cancel in
// the transforms and give NaN where the direct sum gives the infinity.
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
struct TileRun {
    int64_t lane, n, ty, tx, count;
};

inline TileRun tile_at(const Tiling& g, int64_t t) {
    const int64_t r = t % g.per_image();
    return {0, t / g.per_image(), r / g.tw(), r % g.tw(), 1};
}

inline int runs_of(const Tiling& g, int64_t t, int64_t count, TileRun* runs) {
    int made = 0;
    for (int64_t k = 0; k < count;) {
        TileRun run = tile_at(g, t + k);
        run.lane = k, run.count = std::min(count - k, g.tw() - run.tx);
        runs[made++] = run;
        k += run.count;
    }
    return made;
}

// u[xi][o][c] = (G g G^T)[xi] for the weight g[o][c][3][3], from the pool like the direct
// input gradient's flipped weight.
inline CpuTensor<float> transformed_weight(const float* weight, int64_t m, int64_t c) {
    CpuTensor<float> u(Shape{positions, m, c});
    auto g_times = [](float a, float b, float d) { return std::array{a, 0.5f * (a + b + d), 0.5f * (a - b + d), d}; };
    for (int64_t o = 0; o < m; ++o)
        for (int64_t ci = 0; ci < c; ++ci) {
            const float* k = weight + (o * c + ci) * 9;
            const auto c0 = g_times(k[0], k[3], k[6]), c1 = g_times(k[1], k[4], k[7]), c2 = g_times(k[2], k[5], k[8]);
            for (int i = 0; i < 4; ++i) {
                const auto row = g_times(c0[size_t(i)], c1[size_t(i)], c2[size_t(i)]);
                for (int j = 0; j < 4; ++j) u.data()[((4 * i + j) * m + o) * c + ci] = row[size_t(j)];
            }
        }
    return u;
}

// V of a vector of tiles for one channel. Window row r of tile k holds its columns 2k ..
// 2k + 1 at even[r] + 2k and 2k + 2 .. 2k + 3 at shifted[r] + 2k: split into even and odd
// elements, they are the four columns B combines; then B^T combines the rows. Position
// xi's vector goes to v + xi * stride.
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

// The image rows a chunk of tiles reads, staged with a zero border (conv_pack.hpp's Stager,
// which widens 16-bit images on the way).
template <class S>
class ChunkStager {
public:
    ChunkStager(const Tiling& g, const Images<S>& images, int64_t chunk)
        : g_(g), stager_(images, columns(g, chunk), /*copy=*/true), columns_(columns(g, chunk)) {}

    // Vectors of a window row reach 2 lanes + 2 floats past its start. At an odd edge the
    // windows read one row and column past the zero border (into what only discarded outputs
    // use), at most row() + 1 floats past the last plane: the slack covers it twice.
    [[nodiscard]] int64_t buffer_size() const {
        return stager_.buffer_size(columns_) + 2 * stager_.row() + 4 * simd::lanes;
    }

    // The pixels of the rows of tiles from t0's to (t1 - 1)'s, into buf.
    Staged<> stage(int64_t t0, int64_t t1, float* buf) const {
        const TileRun first = tile_at(g_, t0), last = tile_at(g_, t1 - 1);
        return stager_.stage(first.n * g_.hw() + 2 * first.ty * g_.w,
                             last.n * g_.hw() + std::min(g_.h, 2 * last.ty + 2) * g_.w, buf);
    }

private:
    // A chunk's tiles lie on at most chunk / tw + 2 rows of tiles.
    static int64_t columns(const Tiling& g, int64_t chunk) { return 2 * g.w * (chunk / g.tw() + 2); }

    const Tiling& g_;
    Stager<S> stager_;
    int64_t columns_;
};

// Where V of a chunk goes: as the kernel's panels [xi][panel][c][nr] (the vector side of the
// output products), or as rows [xi][c][chunk] (the broadcast side of the weight gradient's).
struct VLayout {
    float* v;
    int64_t c, chunk;
    bool panels;
    // The vector of tiles from chunk-local k (a multiple of lanes) of channel ch, position 0;
    // position xi lies xi * stride() further.
    [[nodiscard]] float* at(int64_t ch, int64_t k) const {
        return panels ? v + (k / gemm::nr * c + ch) * gemm::nr + k % gemm::nr : v + ch * chunk + k;
    }
    [[nodiscard]] int64_t stride() const { return c * chunk; }
};

// V of the chunk's tiles [t0, t1), from the images staged with a zero
// border, a vector of tiles at a time. Where the vector's tiles lie on one row of tiles,
// their windows are read in place; otherwise (rows of fewer tiles than a vector, a vector
// crossing a row, the short last vector) their rows are gathered first. Lanes past t1 hold whatever
// the buffers held: their columns of the products are never transformed back.
template <class S>
void transform_inputs(const Tiling& g, const Images<S>& images, const Staged<>& staged, int64_t t0, int64_t t1,
                      const VLayout& out) {
    constexpr int64_t L = simd::lanes;
    const int64_t c = g.channels, stride = out.stride();
    TileRun runs[L];
    alignas(64) float gathered[4][2][2 * L] = {};
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        auto window = [&](const TileRun& run) {
            return staged.data + staged.origin(images, run.n, 2 * run.ty * g.w + 2 * run.tx);
        };
        if (made == 1 && count == L) {
            const float* at = window(runs[0]);
            for (int64_t ch = 0; ch < c; ++ch, at += staged.plane) {
                const float* even[4] = {at, at + staged.row, at + 2 * staged.row, at + 3 * staged.row};
                const float* shifted[4] = {even[0] + 2, even[1] + 2, even[2] + 2, even[3] + 2};
                transform_input_vector(even, shifted, out.at(ch, k), stride);
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
            transform_input_vector(even, shifted, out.at(ch, k), stride);
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
// rows, stored in place where y is float and the vector's 2 lanes x 2 outputs all lie in
// the image on one row of tiles, else by runs (copied, or rounded into a 16-bit y).
template <class Y>
void transform_outputs(const Tiling& g, int64_t m, int64_t chunk, int64_t t0, int64_t t1, const float* mp, Y* y) {
    constexpr int64_t L = simd::lanes;
    const int64_t stride = m * chunk;  // from one position xi to the next
    TileRun runs[L];
    alignas(64) float rows[2][2 * L];
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        const bool in_place = made == 1 && count == L && 2 * (runs[0].tx + L) <= g.w && 2 * runs[0].ty + 1 < g.h;
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
            auto plane = [&](const TileRun& run) { return y + (run.n * m + o) * g.h * g.w + 2 * run.ty * g.w + 2 * run.tx; };
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
                const TileRun& run = runs[i];
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
    const CpuTensor<float> u = transformed_weight(weight, m, c);
    const int64_t block = depth_block(c);
    const ChunkStager stager(g, images, chunk);
    const int64_t staging = stager.buffer_size();
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
            const Staged s = stager.stage(t0, t1, staged_rows);
            transform_inputs(g, images, s, t0, t1, VLayout{v, c, chunk, /*panels=*/true});
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

// ---- the weight gradient ---------------------------------------------------------------
//
// F(2x2, 3x3) turned around: with y = A^T [U . V] A for each tile, the gradient of U is
// (A dY A^T) . V, and that of the weight g is G^T [sum over tiles of (A dY A^T) . V] G. So
//
//   Z[xi][c, o] = sum_t V[xi][c, t] Yhat[xi][o, t],   Yhat = A dY A^T (dY the tile's 2x2),
//   dweight[o, c] = G^T Z[.][c, o] G,
//
// 16 products of c x m summed over the tiles, which are the sum index here: V is the
// broadcast side (rows of tiles) and Yhat the vector side (panels of nr output channels per
// tile, transposed in registers). Images of odd size would need the tiles past the edge
// read as zeros; the direct weight product takes them.

// Measured as pays() (Zen 3, 2 threads): 1.08-1.3x at 32x32 with 32-64 channels, 1.5-1.9x
// from 64 channels at 8x8 and 16x16 and on the edm2-img64-xs shapes.
template <class S>
bool weight_pays(const Images<S>& g, int64_t m) {
    return pays(g, m) && g.h % 2 == 0 && g.w % 2 == 0;
}

// Yhat = A dY A^T of a vector of tiles for one output channel: the tiles' two rows of dY at
// top and bottom (columns 2k, 2k + 1 of tile k), into yhat[xi].
inline void transform_gradient_vector(const float* top, const float* bottom, simd::vec (&yhat)[positions]) {
    simd::vec r[2][4];
    const float* rows[2] = {top, bottom};
    for (int a = 0; a < 2; ++a) {  // A across: d0, d0 + d1, d0 - d1, -d1
        simd::vec d0, d1;
        simd::deinterleave(simd::load(rows[a]), simd::load(rows[a] + simd::lanes), d0, d1);
        r[a][0] = d0, r[a][1] = simd::add(d0, d1), r[a][2] = simd::sub(d0, d1), r[a][3] = simd::sub(simd::zero(), d1);
    }
    for (int j = 0; j < 4; ++j) {  // A down
        yhat[j] = r[0][j];
        yhat[4 + j] = simd::add(r[0][j], r[1][j]);
        yhat[8 + j] = simd::sub(r[0][j], r[1][j]);
        yhat[12 + j] = simd::sub(simd::zero(), r[1][j]);
    }
}

// Yhat [xi][panel][chunk][nr] of the chunk's tiles [t0, t1) (h and w even, so every tile
// lies in the image), lanes output channels by lanes tiles at a time, transposed so that a
// tile's output channels are contiguous; zero for channels past m. A 16-bit dy is widened
// as its rows are gathered.
template <class D>
void transform_gradients(const Tiling& g, const D* dy, int64_t m, int64_t padded_m, int64_t chunk, int64_t t0,
                         int64_t t1, float* yhat) {
    constexpr int64_t L = simd::lanes;
    const int64_t stride = padded_m * chunk;  // from one position xi to the next
    TileRun runs[L];
    alignas(64) float gathered[2][2 * L] = {};
    simd::vec block[positions][L];
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        const bool in_place = std::is_same_v<D, float> && made == 1 && count == L;
        for (int64_t o0 = 0; o0 < padded_m; o0 += L) {
            for (int64_t i = 0; i < L; ++i) {
                const int64_t o = o0 + i;
                simd::vec column[positions];
                if (o >= m) {
                    for (auto& v : column) v = simd::zero();
                } else if (in_place) {
                    const D* top = dy + (runs[0].n * m + o) * g.hw() + 2 * runs[0].ty * g.w + 2 * runs[0].tx;
                    if constexpr (std::is_same_v<D, float>) transform_gradient_vector(top, top + g.w, column);
                } else {
                    for (int r = 0; r < made; ++r) {
                        const D* top = dy + (runs[r].n * m + o) * g.hw() + 2 * runs[r].ty * g.w + 2 * runs[r].tx;
                        for (int a = 0; a < 2; ++a) {
                            if constexpr (std::is_same_v<D, float>)
                                simd::copy(gathered[a] + 2 * runs[r].lane, top + a * g.w, 2 * runs[r].count);
                            else
                                cpu::detail::widen(top + a * g.w, gathered[a] + 2 * runs[r].lane, 2 * runs[r].count);
                        }
                    }
                    transform_gradient_vector(gathered[0], gathered[1], column);
                }
                for (int xi = 0; xi < positions; ++xi) block[xi][i] = column[xi];
            }
            for (int xi = 0; xi < positions; ++xi) {
                simd::transpose(block[xi]);
                float* out = yhat + xi * stride + (o0 / gemm::nr * chunk + k) * gemm::nr + o0 % gemm::nr;
                for (int64_t t = 0; t < count; ++t) simd::store(out + t * gemm::nr, block[xi][t]);
            }
        }
    }
}

// dweight[o, c, 3, 3] = G^T Z[.][c, o] G with Z the sum of the groups' partial sums
// [group][xi][c][padded_m], added in group order into the first group's (a streaming pass),
// then transformed lanes output channels at a time.
inline void finish_weight(float* partial, int64_t groups, int64_t c, int64_t m, int64_t padded_m, float* dweight) {
    const int64_t per_group = positions * c * padded_m;
#pragma omp parallel for schedule(static) if (per_group * groups >= parallel_grain)
    for (int64_t j = 0; j < per_group; j += simd::lanes) {
        simd::vec total = simd::load(partial + j);
        for (int64_t i = 1; i < groups; ++i) total = simd::add(total, simd::load(partial + i * per_group + j));
        simd::store(partial + j, total);
    }
    const simd::vec half = simd::broadcast_value(0.5f);
    // G^T's rows: (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1).
    auto gt = [half](simd::vec a, simd::vec b, simd::vec d, simd::vec e, simd::vec (&out)[3]) {
        const simd::vec sum = simd::mul(half, simd::add(b, d));
        out[0] = simd::add(a, sum), out[1] = simd::mul(half, simd::sub(b, d)), out[2] = simd::add(sum, e);
    };
#pragma omp parallel for schedule(static) if (c * m >= parallel_grain)
    for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t o0 = 0; o0 < m; o0 += simd::lanes) {
            simd::vec z[positions], down[4][3], w[9];
            for (int xi = 0; xi < positions; ++xi) z[xi] = simd::load(partial + (xi * c + ci) * padded_m + o0);
            for (int j = 0; j < 4; ++j) gt(z[j], z[4 + j], z[8 + j], z[12 + j], down[j]);
            for (int ky = 0; ky < 3; ++ky) {
                simd::vec row[3];
                gt(down[0][ky], down[1][ky], down[2][ky], down[3][ky], row);
                for (int kx = 0; kx < 3; ++kx) w[ky * 3 + kx] = row[kx];
            }
            alignas(64) float values[9][simd::lanes];
            for (int t = 0; t < 9; ++t) simd::store(values[t], w[t]);
            for (int64_t o = o0; o < std::min(m, o0 + simd::lanes); ++o)
                for (int t = 0; t < 9; ++t) dweight[(o * c + ci) * 9 + t] = values[t][o - o0];
        }
}

// dweight[m, c, 3, 3] = the weight gradient of the "same" 3x3 correlation of the images g
// (k = 3, even h and w) given dy[n, m, h, w]. As the direct weight product, the tiles are
// cut into a fixed number of groups by the shape alone, each summed in order into its own
// Z, and the groups added in order: the same bits whatever the thread count.
template <class S, class D>
void weight(const Images<S>& images, const D* dy, int64_t m, float* dweight) {
    const Tiling g{images.n, images.channels, images.h, images.w};
    const int64_t c = g.channels, total = g.total(), chunk = chunk_tiles(c, m);
    const int64_t padded_m = (m + gemm::nr - 1) / gemm::nr * gemm::nr, panels = padded_m / gemm::nr;
    const int64_t chunks = (total + chunk - 1) / chunk, per_group = positions * c * padded_m;
    const int64_t groups = std::max<int64_t>(1, std::min({int64_t(8), chunks, std::max<int64_t>(2, (int64_t(1) << 22) / per_group)}));
    const ChunkStager stager(g, images, chunk);
    const int64_t staging = stager.buffer_size();
    CpuTensor<float> partial(Shape{groups, positions, c, padded_m});
    const int threads = positions * m * c * total < parallel_work ? 1 : int(std::min<int64_t>(omp_get_max_threads(), groups));
#pragma omp parallel num_threads(threads)
    {
        ScratchCarver scratch(staging + positions * chunk * (c + padded_m));
        float* staged_rows = scratch.take(staging);
        float* v = scratch.take(positions * chunk * c);            // [xi][c][chunk]
        float* yhat = scratch.take(positions * chunk * padded_m);  // [xi][panel][chunk][nr]
        const float* rows_of_v[gemm::mr];
#pragma omp for schedule(dynamic)
        for (int64_t group = 0; group < groups; ++group) {
            float* z = partial.data() + group * per_group;
            for (int64_t i = chunks * group / groups; i < chunks * (group + 1) / groups; ++i) {
                const int64_t t0 = i * chunk, t1 = std::min(total, t0 + chunk);
                const Staged s = stager.stage(t0, t1, staged_rows);
                transform_inputs(g, images, s, t0, t1, VLayout{v, c, chunk, /*panels=*/false});
                transform_gradients(g, dy, m, padded_m, chunk, t0, t1, yhat);
                const bool accumulate = i != chunks * group / groups;
                for (int xi = 0; xi < positions; ++xi)
                    for (int64_t p = 0; p < panels; ++p) {
                        const float* panel = yhat + (xi * panels + p) * chunk * gemm::nr;
                        const float* vectors[gemm::nv];
                        for (int j = 0; j < gemm::nv; ++j) vectors[j] = panel + j * simd::lanes;
                        for (int64_t ci = 0; ci < c;) {
                            const int rows = gemm::next_rows(c - ci);
                            for (int r = 0; r < rows; ++r) rows_of_v[r] = v + (xi * c + ci + r) * chunk;
                            gemm::tile(rows, t1 - t0, rows_of_v, gemm::Strided<1>{}, vectors, gemm::Strided<gemm::nr>{},
                                       z + (xi * c + ci) * padded_m + p * gemm::nr, padded_m, accumulate);
                            ci += rows;
                        }
                    }
            }
        }
    }
    finish_weight(partial.data(), groups, c, m, padded_m, dweight);
}

}  // namespace mpnet::cpu::conv::winograd

#endif
