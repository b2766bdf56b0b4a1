// The float convolution products, blocked for the caches around the micro-kernel.
//
// Output product (forward, and the input gradient as a convolution of dy with the
// flipped, transposed weight):  Y[n, m, pix] = sum_q A[m, q] X(q, (n, pix)).
// The columns (n, pix) of the whole batch are split evenly between the threads and
// walked in chunks of staged images; X is the vector side, read in place through the
// window offsets, A the broadcast side, read from the weight rows.
//
// Either product reads images and dy stored as float or in 16 bits (staged and transposed
// into float as they are read), and the output product writes float or 16-bit outputs (its
// sums finished in a float buffer, then copied or rounded once).
//
// Weight product (weight gradient):  dW[m, q] = sum_cols dY[m, col] X(q, col).
// Here the columns are the sum, so each thread sums its own columns into a private
// dW^T and the threads' parts are added at the end. Per chunk, dY is transposed into
// panels of nr output channels (the vector side) and X is the broadcast side, read in
// place through the column origins.
#pragma once
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "mpnet/backend/cpu/backend.hpp"
#include "mpnet/backend/cpu/conv_pack.hpp"

#if MPNET_CPU_SIMD

namespace mpnet::cpu::conv {

// Output product: columns per chunk and at most this many sum indices per block. The
// chunk's output rows and a block of A (m x 256 floats) stay in L2 while the chunk's
// panels pass; the staged rows one panel reads for a block (or its packed copy) stay in
// L1 while every row tile of A passes over them.
inline constexpr int64_t out_chunk = 16 * gemm::nr;
inline constexpr int64_t out_depth = 256;

// Equal blocks of at most out_depth: a short last block would pay the C tile's load and
// store for little work.
inline int64_t depth_block(int64_t depth) {
    const int64_t blocks = (depth + out_depth - 1) / out_depth;
    return (depth + blocks - 1) / blocks;
}

// Weight product: columns summed per chunk, the kernel's depth; one panel of transposed
// dy (16 KiB) stays in L1 while every row tile of X passes.
inline constexpr int64_t weight_chunk = 4096 / gemm::nr;

// Columns are handed to the threads in units, first come first served, so that a thread
// slowed down by other work on the machine does not hold the others up: at least four
// units per thread, of at most this many columns (a 32x32 image).
inline constexpr int64_t max_unit = 1024;

// Below this many multiply-adds one thread does the whole product.
inline constexpr int64_t parallel_work = int64_t(1) << 22;

// 64-byte aligned regions of the calling thread's scratch, carved in order.
class ScratchCarver {
public:
    explicit ScratchCarver(int64_t floats)
        : next_(align(detail::thread_scratch<float>(size_t(floats + 16 * slots)))) {}
    float* take(int64_t floats) {
        float* p = next_;
        next_ = align(next_ + floats);
        return p;
    }
    static constexpr int64_t slots = 4;  // regions taken at most, each losing < 16 floats to alignment

private:
    static float* align(float* p) {
        return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
    }
    float* next_;
};

struct Units {
    int64_t size, count;
};

inline Units units_of(int64_t columns) {
    const int64_t wanted = (columns + 4 * omp_get_max_threads() - 1) / (4 * omp_get_max_threads());
    const int64_t size = std::min(max_unit, (wanted + gemm::nr - 1) / gemm::nr * gemm::nr);
    return {size, (columns + size - 1) / size};
}

inline int threads_for(int64_t multiply_adds, const Units& units) {
    if (multiply_adds < parallel_work) return 1;
    return int(std::min<int64_t>(omp_get_max_threads(), units.count));
}

// Rows [q0, q0 + depth) of the sum for one panel of nr columns, read through b and bi,
// against every row tile of A; c (+)= the result, rows ldc apart. A's rows are lda
// elements apart, each sum index Ops::a_step elements. A short last panel is packed with
// zeros past its width, so its whole tile is written: the columns past the chunk's end
// stay within c's rows and are never stored.
template <class Ops, class BIndex>
inline void multiply_panel(const typename Ops::a_type* a, int64_t lda, int64_t m, int64_t depth, const float* const* b,
                           BIndex bi, float* c, int64_t ldc, bool accumulate) {
    const typename Ops::a_type* rows_of_a[gemm::mr];
    constexpr gemm::Strided<Ops::a_step> ai{};
    for (int64_t i = 0; i < m;) {
        const int rows = gemm::next_rows(m - i);
        for (int r = 0; r < rows; ++r) rows_of_a[r] = a + (i + r) * lda;
        gemm::tile<Ops>(rows, depth, rows_of_a, ai, b, bi, c + i * ldc, ldc, accumulate);
        i += rows;
    }
}

// The rows an in-place panel at batch column j reads for `depth` window offsets, fetched
// while an earlier panel computes: the hardware prefetcher does not follow the offset table.
template <class S>
void prefetch_panel(const Staged<>& s, const Images<S>& g, int64_t j, const int32_t* offsets, int64_t depth) {
    const float* origin = s.data + s.origin(g, j / g.hw(), j % g.hw());
    for (int64_t t = 0; t < depth; ++t) simd::prefetch(origin + offsets[t]);
}

// Y[n, m, pix] = the float sums at buf (m rows, ldb apart) for batch columns [j0, j1),
// copied, or rounded once into a 16-bit Y.
template <class S, class Y>
void store_chunk(const float* buf, int64_t ldb, const Images<S>& g, int64_t j0, int64_t j1, int64_t m, Y* y) {
    for (int64_t j = j0; j < j1;) {
        const int64_t n = j / g.hw(), pix = j % g.hw(), len = std::min(j1 - j, g.hw() - pix);
        for (int64_t r = 0; r < m; ++r) {
            const float* sums = buf + r * ldb + (j - j0);
            Y* out = y + (n * m + r) * g.hw() + pix;
            if constexpr (std::is_same_v<Y, float>) simd::copy(out, sums, len);
            else cpu::detail::narrow(sums, out, len);
        }
        j += len;
    }
}

// y[n, m, h, w] = sum_q a[m, q] X(q, .) over the images g; a has rows of g.depth() sum
// indices. With Bf16Pairs, g holds pair words (a channel of g is two channels, see
// bf16::channel_pairs) and a the matching bf16 pairs, two elements per sum index.
//
// Each chunk's sums build up over the depth blocks in a per-thread float buffer of
// m x out_chunk, as a one-image y of out_chunk columns, and are stored when complete (rounded
// once for a 16-bit y). In y itself the tile rows would lie h w floats apart, 4 KiB at 32x32,
// all in the same L1 sets, and the chunk's rows spread over m planes. Measured on AVX2
// (Zen 3), the buffer made 3x3 products at 32x32 and 64x64 of 32 to 640 channels 1-13 %
// faster (medians), with the same bits: every sum is formed in the same order.
template <class Ops = gemm::Float32, class S = float, class Y = float>
void output_product(const Images<S>& g, const typename Ops::a_type* a, int64_t m, Y* y) {
    const int64_t depth = g.depth(), total = g.n * g.hw();
    const Units units = units_of(total);
    // In place, planes a multiple of 4 KiB apart would put all rows of a panel into the
    // same L1 sets.
    const Stager stager(g, units.size, g.hw() % 1024 == 0, /*vectors=*/true);
    const std::vector<int32_t> offsets = stager.window_offsets(units.size);
#pragma omp parallel num_threads(threads_for(total * m * depth, units))
    {
        const int64_t chunk_sums = m * out_chunk;
        ScratchCarver scratch(stager.buffer_size(units.size) + out_depth * gemm::nr + chunk_sums);
        float* staging = scratch.take(stager.buffer_size(units.size));
        float* packed = scratch.take(out_depth * gemm::nr);
        float* sums = scratch.take(chunk_sums);
        std::vector<Run> runs;
        const float* packed_rows[gemm::nv];
        for (int v = 0; v < gemm::nv; ++v) packed_rows[v] = packed + v * simd::lanes;
        const int64_t block = depth_block(depth);
#pragma omp for schedule(dynamic)
        for (int64_t u = 0; u < units.count; ++u) {
            const int64_t end = std::min(total, (u + 1) * units.size);
            const Staged s = stager.stage(u * units.size, end, staging);
            for (int64_t j0 = u * units.size; j0 < end; j0 += out_chunk) {
                const int64_t j1 = std::min(end, j0 + out_chunk);
                for (int64_t q = 0; q < depth; q += block) {
                    const int64_t q1 = std::min(depth, q + block);
                    for (int64_t j = j0; j < j1; j += gemm::nr) {
                        const int64_t width = std::min<int64_t>(gemm::nr, j1 - j);
                        if (j + 2 * gemm::nr < end && contiguous_panel(g, j + 2 * gemm::nr, stager.narrow()))
                            prefetch_panel(s, g, j + 2 * gemm::nr, offsets.data() + q, q1 - q);
                        if (width == gemm::nr && contiguous_panel(g, j, stager.narrow())) {
                            const float* in_place[gemm::nv];
                            for (int v = 0; v < gemm::nv; ++v)
                                in_place[v] = s.data + s.origin(g, j / g.hw(), j % g.hw() + v * simd::lanes);
                            multiply_panel<Ops>(a + q * Ops::a_step, depth * Ops::a_step, m, q1 - q, in_place,
                                                gemm::Table{offsets.data() + q}, sums + (j - j0), out_chunk, q > 0);
                        } else {
                            pack_panel(g, s, offsets, j, width, q, q1, runs, packed);
                            multiply_panel<Ops>(a + q * Ops::a_step, depth * Ops::a_step, m, q1 - q, packed_rows,
                                                gemm::Strided<gemm::nr>{}, sums + (j - j0), out_chunk, q > 0);
                        }
                    }
                }
                store_chunk(sums, out_chunk, g, j0, j1, m, y);
            }
        }
    }
}

// The weight gradient sums over all columns. For results that do not depend on the thread
// count or on which thread took which columns (training must resume bit for bit), the
// columns are cut into a fixed number of groups by the shape alone; each group is summed
// in order into its own dW^T, the groups are handed out first come first served, and
// their sums are added in group order at the end. At most 8 groups (enough to balance two
// to four threads), fewer where their sums would take more than 16 MiB, never fewer than 2.
struct Groups {
    int64_t count, total;
    [[nodiscard]] int64_t begin(int64_t i) const {
        return std::min(total, (total * i / count + weight_chunk - 1) / weight_chunk * weight_chunk);
    }
};

inline Groups weight_groups(int64_t total, int64_t sum_floats) {
    const int64_t by_memory = std::max<int64_t>(2, (int64_t(1) << 22) / sum_floats);
    const int64_t chunks = (total + weight_chunk - 1) / weight_chunk;
    return {std::max<int64_t>(1, std::min({int64_t(8), by_memory, chunks})), total};
}

// dweight[o, q] = sum over groups i, in order, of partial[i, q, o]: added and transposed a
// block of output channels at a time so that reads and writes both stream.
inline void add_transposed(const float* partial, int64_t groups, int64_t depth, int64_t m, int64_t padded_m,
                           float* dweight) {
    constexpr int64_t block = 16;
#pragma omp parallel for schedule(static) if (depth * m >= parallel_grain)
    for (int64_t o0 = 0; o0 < m; o0 += block)
        for (int64_t q = 0; q < depth; ++q)
            for (int64_t o = o0; o < std::min(m, o0 + block); ++o) {
                float total = 0;
                for (int64_t i = 0; i < groups; ++i) total += partial[(i * depth + q) * padded_m + o];
                dweight[o * depth + q] = total;
            }
}

#if defined(__AVX512F__)
// The chunk's transposed dy panels (pack_transposed) as pair words over columns: word
// (col pair t, channel i) of panel P at out[(P columns/2 + t) nr + i] holds the columns
// 2t and 2t + 1.
inline void pair_columns(const float* panels, int64_t padded_m, int64_t columns, float* out) {
    for (int64_t P = 0; P < padded_m / gemm::nr; ++P)
        for (int64_t t = 0; t < columns / 2; ++t) {
            const float* even = panels + (P * columns + 2 * t) * gemm::nr;
            float* dst = out + (P * (columns / 2) + t) * gemm::nr;
            for (int v = 0; v < gemm::nv; ++v)
                simd::store(dst + v * simd::lanes,
                            bf16::pairs(simd::load(even + v * simd::lanes), simd::load(even + gemm::nr + v * simd::lanes)));
        }
}
#endif

// dweight[m, q] = sum over columns of dy[n, m, pix] X(q, (n, pix)).
//
// With Bf16Pairs the columns are summed in pairs: the images are staged as bf16 (two
// neighbouring columns of one row are then one pair word at their origin, so w must be
// even) and dy's panels are paired over columns.
template <class Ops = gemm::Float32, class S = float, class D = float>
void weight_product(const Images<S>& g, const D* dy, int64_t m, float* dweight) {
    using T = typename Ops::a_type;
    constexpr int64_t step = Ops::a_step;  // columns per sum index
    check(g.w % step == 0, "conv2d: bf16 weight gradient of images ", g.w, " wide (needs an even width)");
    const int64_t depth = g.depth(), total = g.n * g.hw();
    const int64_t padded_m = (m + gemm::nr - 1) / gemm::nr * gemm::nr;
    const Groups groups = weight_groups(total, depth * padded_m);
    const int threads =
        total * m * depth < parallel_work ? 1 : int(std::min<int64_t>(omp_get_max_threads(), groups.count));
    // X is the broadcast side here: its rows stream. As bf16 it is always a rounded copy.
    const Stager stager(g, max_unit, /*copy=*/step == 2);
    const std::vector<int32_t> offsets = stager.window_offsets(max_unit);
    CpuTensor<float> partial(Shape{groups.count, depth, padded_m});
#pragma omp parallel num_threads(threads)
    {
        // Float staging is carved from the thread's float scratch, bf16 staging has its own.
        const int64_t float_staging = std::is_same_v<T, float> ? stager.buffer_size(max_unit) : 0;
        const int64_t paired_size = step == 2 ? padded_m * weight_chunk / 2 : 0;
        ScratchCarver scratch(float_staging + padded_m * weight_chunk + paired_size);
        T* staging;
        if constexpr (std::is_same_v<T, float>) staging = scratch.take(float_staging);
        else staging = detail::thread_scratch<T>(size_t(stager.buffer_size(max_unit)));
        float* dy_panels = scratch.take(padded_m * weight_chunk);
        float* paired = step == 2 ? scratch.take(paired_size) : dy_panels;
        std::vector<Run> runs;
        std::vector<int32_t> origins;
        const T* rows_of_x[gemm::mr];
#pragma omp for schedule(dynamic)
        for (int64_t group = 0; group < groups.count; ++group) {
            float* sum = partial.data() + group * depth * padded_m;
            if (groups.begin(group) == groups.begin(group + 1)) std::fill(sum, sum + depth * padded_m, 0.0f);
            for (int64_t u = groups.begin(group); u < groups.begin(group + 1); u += max_unit) {
                const int64_t end = std::min(groups.begin(group + 1), u + max_unit);
                const Staged<T> s = stager.stage(u, end, staging);
                for (int64_t j = u; j < end; j += weight_chunk) {
                    const int64_t columns = std::min(weight_chunk, end - j);
                    column_runs(g, j, j + columns, runs);
                    column_origins(g, s, j, j + columns, origins, step);
                    pack_transposed(dy, m, g.hw(), runs, columns, dy_panels);
#if defined(__AVX512F__)
                    if constexpr (step == 2) pair_columns(dy_panels, padded_m, columns, paired);
#endif
                    for (int64_t c = 0; c < m; c += gemm::nr) {
                        const float* panel[gemm::nv];
                        for (int v = 0; v < gemm::nv; ++v) panel[v] = paired + c * columns / step + v * simd::lanes;
                        for (int64_t i = 0; i < depth;) {
                            const int rows = gemm::next_rows(depth - i);
                            for (int r = 0; r < rows; ++r) rows_of_x[r] = s.data + offsets[size_t(i + r)];
                            gemm::tile<Ops>(rows, columns / step, rows_of_x, gemm::Table{origins.data()}, panel,
                                            gemm::Strided<gemm::nr>{}, sum + i * padded_m + c, padded_m,
                                            j != groups.begin(group));
                            i += rows;
                        }
                    }
                }
            }
        }
    }
    add_transposed(partial.data(), groups.count, depth, m, padded_m, dweight);
}

}  // namespace mpnet::cpu::conv

#endif
