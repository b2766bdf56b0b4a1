// The "same" 3x3 convolution's output products (the forward, and the input gradient as the
// convolution of dy with the flipped weight) as Winograd's F(T x T, 3x3): (T + 2)^2
// multiply-adds per input channel for a T x T tile of outputs, where the direct product
// takes 9 T^2. F(2x2, 3x3) takes 16 for 4 outputs (2.25x fewer), F(4x4, 3x3) 36 for 16 (4x
// fewer).
//
// One-dimensional F(T, 3) computes T outputs of a 3-tap correlation from T + 2 inputs d with
// T + 2 products: y = A^T [(G g) . (B^T d)], where . is the elementwise product. For T = 2
// (interpolation points 0, 1, -1, infinity):
//
//   B^T = | 1  0 -1  0 |    G = | 1    0    0   |    A^T = | 1  1  1  0 |
//         | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//         | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |        | 0    0    1   |
//
// and for T = 4 (points 0, 1, -1, 2, -2, infinity):
//
//   B^T = | 4  0 -5  0  1  0 |    G = |  1/4    0     0   |    A^T = | 1  1  1  1  1  0 |
//         | 0 -4 -4  1  1  0 |        | -1/6  -1/6  -1/6  |          | 0  1 -1  2 -2  0 |
//         | 0  4 -4 -1  1  0 |        | -1/6   1/6  -1/6  |          | 0  1  1  4  4  0 |
//         | 0 -2 -1  2  1  0 |        |  1/24  1/12  1/6  |          | 0  1 -1  8 -8  1 |
//         | 0  2 -1 -2  1  0 |        |  1/24 -1/12  1/6  |
//         | 0  4  0 -5  0  1 |        |  0     0     1    |
//
// Nested in two dimensions, output tile t (rows T ty .. T ty + T - 1, columns likewise) of
// output channel o is A^T M A with, for each of the (T + 2)^2 positions xi of the transform,
//
//   M[xi][o, t] = sum_c U[xi][o, c] V[xi][c, t],   U_oc = G g_oc G^T,   V_ct = B^T d_ct B,
//
// d_ct the (T + 2) x (T + 2) window of channel c from row T ty - 1 and column T tx - 1 (zero
// outside). So the convolution becomes (T + 2)^2 products of depth c over the tiles, run on
// the same micro-kernel as the direct convolution, between two cheap transforms.
//
// The tiles are walked in chunks, each a few panels of the micro-kernel wide, handed to
// the threads first come first served. Per chunk a thread transforms the input windows of
// all positions into V (packed as the kernel's panels), runs the products into M and
// transforms M into the outputs. Every output is formed by the same operations in the
// same order whatever the chunk, the thread or the rest of the batch, so the results do
// not depend on them.
//
// The results differ from the direct sum by rounding. F(2x2)'s coefficients (1, 1/2, 1/4)
// are exact in binary, and its first output of a row does not read the window's last input,
// so at an odd edge the input read past the image never reaches a kept output. F(4x4)'s
// weight transform rounds (1/6, 1/24: U is formed in double and rounded once) and its
// products carry terms up to 5^2 and 8^2 times an input, so its error is 10-35x the direct
// sum's (measured in docs/performance-conv.md); every output mixes the whole window, so
// F(4x4) takes only images whose sides are multiples of 4. Where an input holds an
// infinity, its terms can cancel in the transforms and give NaN where the direct sum gives
// the infinity.
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

// Outputs per tile side T, the window side and the positions of the transform,
// xi = (T + 2) i + j.
template <int T>
inline constexpr int window = T + 2;
template <int T>
inline constexpr int positions = window<T> * window<T>;

// Tiles per chunk: 4 panels, 2 where the chunk's V and M (positions (c + m) floats per
// tile) would outgrow a few MiB and fall out of the cache between the transforms and the
// products.
template <int T>
int64_t chunk_tiles(int64_t c, int64_t m) {
    return positions<T> * (c + m) * 4 * gemm::nr * int64_t(sizeof(float)) <= (int64_t(3) << 20) ? 4 * gemm::nr
                                                                                                : 2 * gemm::nr;
}

// The tiles of a batch: th x tw per image of tiles of side `tile`, numbered image by image,
// row by row.
struct Tiling {
    int64_t n, channels, h, w, tile;
    [[nodiscard]] int64_t th() const { return (h + tile - 1) / tile; }
    [[nodiscard]] int64_t tw() const { return (w + tile - 1) / tile; }
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

// G g for one 3-tap filter (a, b, d), in double.
template <int T>
std::array<double, window<T>> filter_transform(double a, double b, double d) {
    if constexpr (T == 2) {
        return {a, 0.5 * (a + b + d), 0.5 * (a - b + d), d};
    } else {
        return {a / 4, -(a + b + d) / 6, -(a - b + d) / 6, a / 24 + b / 12 + d / 6, a / 24 - b / 12 + d / 6, d};
    }
}

// u[xi][o][c] = (G g G^T)[xi] for the weight g[o][c][3][3], formed in double and rounded
// once, from the pool like the direct input gradient's flipped weight.
template <int T>
CpuTensor<float> transformed_weight(const float* weight, int64_t m, int64_t c) {
    constexpr int W = window<T>;
    CpuTensor<float> u(Shape{positions<T>, m, c});
    for (int64_t o = 0; o < m; ++o)
        for (int64_t ci = 0; ci < c; ++ci) {
            const float* k = weight + (o * c + ci) * 9;
            std::array<std::array<double, W>, 3> columns;  // G applied down each of the 3 columns
            for (int kx = 0; kx < 3; ++kx) columns[size_t(kx)] = filter_transform<T>(k[kx], k[3 + kx], k[6 + kx]);
            for (int i = 0; i < W; ++i) {
                const auto row = filter_transform<T>(columns[0][size_t(i)], columns[1][size_t(i)], columns[2][size_t(i)]);
                for (int j = 0; j < W; ++j) u.data()[((W * i + j) * m + o) * c + ci] = float(row[size_t(j)]);
            }
        }
    return u;
}

// B^T d of T + 2 vectors.
template <int T>
void input_transform(const simd::vec* d, simd::vec* out) {
    using namespace simd;
    if constexpr (T == 2) {
        out[0] = sub(d[0], d[2]), out[1] = add(d[1], d[2]), out[2] = sub(d[2], d[1]), out[3] = sub(d[1], d[3]);
    } else {
        const vec two = broadcast_value(2), four = broadcast_value(4), minus_two = broadcast_value(-2),
                  minus_four = broadcast_value(-4), minus_five = broadcast_value(-5);
        const vec t0 = fmadd(minus_four, d[2], d[4]), t1 = fmadd(minus_four, d[1], d[3]);  // d4 - 4 d2, d3 - 4 d1
        const vec t2 = sub(d[4], d[2]), t3 = sub(d[3], d[1]);
        out[0] = fmadd(four, d[0], fmadd(minus_five, d[2], d[4]));
        out[1] = add(t0, t1), out[2] = sub(t0, t1);
        out[3] = fmadd(two, t3, t2), out[4] = fmadd(minus_two, t3, t2);
        out[5] = fmadd(four, d[1], fmadd(minus_five, d[3], d[5]));
    }
}

// A^T m of T + 2 vectors.
template <int T>
void output_transform(const simd::vec* m, simd::vec* y) {
    using namespace simd;
    if constexpr (T == 2) {
        y[0] = add(add(m[0], m[1]), m[2]), y[1] = sub(sub(m[1], m[2]), m[3]);
    } else {
        const vec s12 = add(m[1], m[2]), d12 = sub(m[1], m[2]), s34 = add(m[3], m[4]), d34 = sub(m[3], m[4]);
        y[0] = add(add(m[0], s12), s34);
        y[1] = fmadd(broadcast_value(2), d34, d12);
        y[2] = fmadd(broadcast_value(4), s34, s12);
        y[3] = fmadd(broadcast_value(8), d34, add(d12, m[5]));
    }
}

// The T vectors p[0, T lanes) split by element index mod T: a[j] holds elements j, T + j, ...
template <int T>
void deinterleave(const float* p, simd::vec* a) {
    using simd::lanes;
    if constexpr (T == 2) {
        simd::deinterleave(simd::load(p), simd::load(p + lanes), a[0], a[1]);
    } else {
        simd::vec even[2], odd[2];
        simd::deinterleave(simd::load(p), simd::load(p + lanes), even[0], odd[0]);
        simd::deinterleave(simd::load(p + 2 * lanes), simd::load(p + 3 * lanes), even[1], odd[1]);
        simd::deinterleave(even[0], even[1], a[0], a[2]);
        simd::deinterleave(odd[0], odd[1], a[1], a[3]);
    }
}

// The inverse: y[0], y[1], ... element by element, as T vectors into out.
template <int T>
void interleave(const simd::vec* y, simd::vec* out) {
    if constexpr (T == 2) {
        simd::interleave(y[0], y[1], out[0], out[1]);
    } else {
        simd::vec e[2], f[2];  // y0 y2 ..., y1 y3 ...
        simd::interleave(y[0], y[2], e[0], e[1]);
        simd::interleave(y[1], y[3], f[0], f[1]);
        simd::interleave(e[0], f[0], out[0], out[1]);
        simd::interleave(e[1], f[1], out[2], out[3]);
    }
}

// V of a vector of tiles for one channel. Window row r of tile k holds its columns T k ..
// T k + T - 1 at base[r] + T k and T k + T, T k + T + 1 at shifted[r] + T k: split by
// element index mod T, they are the columns B combines; then B^T combines the rows.
// Position xi's vector goes to v + xi * stride.
template <int T>
void transform_input_vector(const float* const* base, const float* const* shifted, float* v, int64_t stride) {
    constexpr int W = window<T>;
    simd::vec h[W][W];
    for (int r = 0; r < W; ++r) {
        simd::vec d[2 * T];  // the window row's columns, and two more past it
        deinterleave<T>(base[r], d);
        deinterleave<T>(shifted[r], d + T);
        input_transform<T>(d, h[r]);
    }
    for (int j = 0; j < W; ++j) {
        simd::vec column[W], out[W];
        for (int r = 0; r < W; ++r) column[r] = h[r][j];
        input_transform<T>(column, out);
        for (int i = 0; i < W; ++i) simd::store(v + (W * i + j) * stride, out[i]);
    }
}

// The image rows a chunk of tiles reads, staged with a zero border (conv_pack.hpp's Stager,
// which widens 16-bit images on the way).
template <class S>
class ChunkStager {
public:
    ChunkStager(const Tiling& g, const Images<S>& images, int64_t chunk)
        : g_(g), stager_(images, columns(g, chunk), /*copy=*/true), columns_(columns(g, chunk)) {}

    // Vectors of a window row reach T lanes + T floats past its start. At an odd edge
    // F(2x2)'s windows read one row and column past the zero border (into what only
    // discarded outputs use), at most row() + 1 floats past the last plane; F(4x4)'s, on
    // images of sides a multiple of 4, two floats past their last row. The slack covers both.
    [[nodiscard]] int64_t buffer_size() const {
        return stager_.buffer_size(columns_) + 2 * stager_.row() + 4 * simd::lanes;
    }

    // The pixels of the rows of tiles from t0's to (t1 - 1)'s, into buf.
    Staged<> stage(int64_t t0, int64_t t1, float* buf) const {
        const TileRun first = tile_at(g_, t0), last = tile_at(g_, t1 - 1);
        return stager_.stage(first.n * g_.hw() + g_.tile * first.ty * g_.w,
                             last.n * g_.hw() + std::min(g_.h, g_.tile * (last.ty + 1)) * g_.w, buf);
    }

private:
    // A chunk's tiles lie on at most chunk / tw + 2 rows of tiles.
    static int64_t columns(const Tiling& g, int64_t chunk) { return g.tile * g.w * (chunk / g.tw() + 2); }

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
template <int T, class S>
void transform_inputs(const Tiling& g, const Images<S>& images, const Staged<>& staged, int64_t t0, int64_t t1,
                      const VLayout& out) {
    constexpr int64_t L = simd::lanes;
    constexpr int W = window<T>;
    const int64_t c = g.channels, stride = out.stride();
    TileRun runs[L];
    alignas(64) float gathered[W][2][T * L] = {};
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        auto window_of = [&](const TileRun& run) {
            return staged.data + staged.origin(images, run.n, T * (run.ty * g.w + run.tx));
        };
        const float* base[W];
        const float* shifted[W];
        if (made == 1 && count == L) {
            const float* at = window_of(runs[0]);
            for (int64_t ch = 0; ch < c; ++ch, at += staged.plane) {
                for (int r = 0; r < W; ++r) base[r] = at + r * staged.row, shifted[r] = base[r] + T;
                transform_input_vector<T>(base, shifted, out.at(ch, k), stride);
            }
            continue;
        }
        for (int r = 0; r < W; ++r) base[r] = gathered[r][0], shifted[r] = gathered[r][1];
        for (int64_t ch = 0; ch < c; ++ch) {
            for (int i = 0; i < made; ++i) {
                const float* at = window_of(runs[i]) + ch * staged.plane;
                for (int r = 0; r < W; ++r) {
                    simd::copy(gathered[r][0] + T * runs[i].lane, at + r * staged.row, T * runs[i].count);
                    simd::copy(gathered[r][1] + T * runs[i].lane, at + r * staged.row + T, T * runs[i].count);
                }
            }
            transform_input_vector<T>(base, shifted, out.at(ch, k), stride);
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
// time: A^T down the window, A across, and each tile's T x T interleaved into the image's T
// rows, stored in place where y is float and the vector's T lanes x T outputs all lie in
// the image on one row of tiles, else by runs (copied, or rounded into a 16-bit y).
template <int T, class Y>
void transform_outputs(const Tiling& g, int64_t m, int64_t chunk, int64_t t0, int64_t t1, const float* mp, Y* y) {
    constexpr int64_t L = simd::lanes;
    constexpr int W = window<T>;
    const int64_t stride = m * chunk;  // from one position xi to the next
    TileRun runs[L];
    alignas(64) float rows[T][T * L];
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        const bool in_place = made == 1 && count == L && T * (runs[0].tx + L) <= g.w && T * runs[0].ty + T <= g.h;
        for (int64_t o = 0; o < m; ++o) {
            const float* at = mp + o * chunk + k;
            simd::vec down[T][W];  // A^T down each column j
            for (int j = 0; j < W; ++j) {
                simd::vec column[W], out[T];
                for (int i = 0; i < W; ++i) column[i] = simd::load(at + (W * i + j) * stride);
                output_transform<T>(column, out);
                for (int a = 0; a < T; ++a) down[a][j] = out[a];
            }
            auto plane = [&](const TileRun& run) {
                return y + (run.n * m + o) * g.hw() + T * (run.ty * g.w + run.tx);
            };
            for (int a = 0; a < T; ++a) {
                simd::vec across[T], row[T];
                output_transform<T>(down[a], across);
                interleave<T>(across, row);
                float* out = rows[a];
                if constexpr (std::is_same_v<Y, float>)
                    if (in_place) out = plane(runs[0]) + a * g.w;
                for (int b = 0; b < T; ++b) simd::store(out + b * L, row[b]);
            }
            if (std::is_same_v<Y, float> && in_place) continue;
            for (int i = 0; i < made; ++i) {
                const TileRun& run = runs[i];
                const int64_t cols = std::min(T * run.count, g.w - T * run.tx);
                for (int a = 0; a < T && T * run.ty + a < g.h; ++a)
                    store_row(rows[a] + T * run.lane, cols, plane(run) + a * g.w);
            }
        }
    }
}

// Where Winograd is faster than the direct product of conv_gemm.hpp: 0 where it is not,
// else the tile side T. Measured on AVX2 (Zen 3, 2 threads) over the fmnist-s and
// edm2-img64-xs shapes: F(2x2) 1.3-1.9x from 32 input and output channels up at 8x8 to
// 64x64; 1.02x at 16 -> 32 channels, 0.74x at 32 -> 8, 0.56-0.63x for the input layers (2
// or 4 channels), whose transforms cost more than the few multiply-adds they save. F(4x4)
// against F(2x2), forward: 1.23-1.48x where a row of tiles fills a vector (32x32 with
// 8-float vectors), so that the windows are read in place; 0.83-1.02x at 16x16 and
// 0.64-0.83x at 8x8, where they are gathered.
template <class S>
int tile_that_pays(const Images<S>& g, int64_t m) {
    if (g.k != 3 || g.channels < 32 || m < 32) return 0;
    return g.h % 4 == 0 && g.w % 4 == 0 && g.w >= 4 * simd::lanes ? 4 : 2;
}

template <class S>
bool pays(const Images<S>& g, int64_t m) {
    return tile_that_pays(g, m) != 0;
}

// y[n, m, h, w] = the "same" 3x3 correlation of the images g (k = 3) with weight[m, c, 3, 3]
// as F(T x T, 3x3) (T = 4: h and w multiples of 4), copied, or rounded once into a 16-bit y.
template <int T, class S, class Y>
void forward(const Images<S>& images, const float* weight, int64_t m, Y* y) {
    constexpr int P = positions<T>;
    const Tiling g{images.n, images.channels, images.h, images.w, T};
    const int64_t c = g.channels, total = g.total(), chunk = chunk_tiles<T>(c, m), panels = chunk / gemm::nr;
    const int64_t chunks = (total + chunk - 1) / chunk;
    const CpuTensor<float> u = transformed_weight<T>(weight, m, c);
    const int64_t block = depth_block(c);
    const ChunkStager stager(g, images, chunk);
    const int64_t staging = stager.buffer_size();
    const int threads = P * m * c * total < parallel_work ? 1 : int(std::min<int64_t>(omp_get_max_threads(), chunks));
#pragma omp parallel num_threads(threads)
    {
        ScratchCarver scratch(staging + P * chunk * (c + m));
        float* staged_rows = scratch.take(staging);
        float* v = scratch.take(P * chunk * c);   // [xi][panel][c][nr]
        float* mp = scratch.take(P * chunk * m);  // [xi][o][chunk]
#pragma omp for schedule(dynamic)
        for (int64_t i = 0; i < chunks; ++i) {
            const int64_t t0 = i * chunk, t1 = std::min(total, t0 + chunk);
            const Staged s = stager.stage(t0, t1, staged_rows);
            transform_inputs<T>(g, images, s, t0, t1, VLayout{v, c, chunk, /*panels=*/true});
            const int64_t used = (t1 - t0 + gemm::nr - 1) / gemm::nr;
            for (int xi = 0; xi < P; ++xi)
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
            transform_outputs<T>(g, m, chunk, t0, t1, mp, y);
        }
    }
}

// The forward as the tile_that_pays.
template <class S, class Y>
void forward(const Images<S>& images, const float* weight, int64_t m, Y* y) {
    if (tile_that_pays(images, m) == 4) return forward<4>(images, weight, m, y);
    forward<2>(images, weight, m, y);
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
inline void transform_gradient_vector(const float* top, const float* bottom, simd::vec (&yhat)[positions<2>]) {
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
    simd::vec block[positions<2>][L];
    for (int64_t k = 0; k < t1 - t0; k += L) {
        const int64_t count = std::min(L, t1 - t0 - k);
        const int made = runs_of(g, t0 + k, count, runs);
        const bool in_place = std::is_same_v<D, float> && made == 1 && count == L;
        for (int64_t o0 = 0; o0 < padded_m; o0 += L) {
            for (int64_t i = 0; i < L; ++i) {
                const int64_t o = o0 + i;
                simd::vec column[positions<2>];
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
                for (int xi = 0; xi < positions<2>; ++xi) block[xi][i] = column[xi];
            }
            for (int xi = 0; xi < positions<2>; ++xi) {
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
    const int64_t per_group = positions<2> * c * padded_m;
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
            simd::vec z[positions<2>], down[4][3], w[9];
            for (int xi = 0; xi < positions<2>; ++xi) z[xi] = simd::load(partial + (xi * c + ci) * padded_m + o0);
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
    const Tiling g{images.n, images.channels, images.h, images.w, 2};
    const int64_t c = g.channels, total = g.total(), chunk = chunk_tiles<2>(c, m);
    const int64_t padded_m = (m + gemm::nr - 1) / gemm::nr * gemm::nr, panels = padded_m / gemm::nr;
    const int64_t chunks = (total + chunk - 1) / chunk, per_group = positions<2> * c * padded_m;
    const int64_t groups = std::max<int64_t>(1, std::min({int64_t(8), chunks, std::max<int64_t>(2, (int64_t(1) << 22) / per_group)}));
    const ChunkStager stager(g, images, chunk);
    const int64_t staging = stager.buffer_size();
    CpuTensor<float> partial(Shape{groups, positions<2>, c, padded_m});
    const int threads = positions<2> * m * c * total < parallel_work ? 1 : int(std::min<int64_t>(omp_get_max_threads(), groups));
#pragma omp parallel num_threads(threads)
    {
        ScratchCarver scratch(staging + positions<2> * chunk * (c + padded_m));
        float* staged_rows = scratch.take(staging);
        float* v = scratch.take(positions<2> * chunk * c);            // [xi][c][chunk]
        float* yhat = scratch.take(positions<2> * chunk * padded_m);  // [xi][panel][chunk][nr]
        const float* rows_of_v[gemm::mr];
#pragma omp for schedule(dynamic)
        for (int64_t group = 0; group < groups; ++group) {
            float* z = partial.data() + group * per_group;
            for (int64_t i = chunks * group / groups; i < chunks * (group + 1) / groups; ++i) {
                const int64_t t0 = i * chunk, t1 = std::min(total, t0 + chunk);
                const Staged s = stager.stage(t0, t1, staged_rows);
                transform_inputs<2>(g, images, s, t0, t1, VLayout{v, c, chunk, /*panels=*/false});
                transform_gradients(g, dy, m, padded_m, chunk, t0, t1, yhat);
                const bool accumulate = i != chunks * group / groups;
                for (int xi = 0; xi < positions<2>; ++xi)
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
