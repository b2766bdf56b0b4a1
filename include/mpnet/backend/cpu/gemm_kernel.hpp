// The register-tile micro-kernel every fast float convolution product runs on:
//
//   C[i, v lanes + l] (+)= sum_p A_i[ai(p)] * B_v[bi(p) + l]     for rows i, vectors v
//
// Each row of A is its own pointer, read one element at a time and broadcast; each of the
// nv vectors of a B row is read from its own pointer. The index maps ai and bi are either
// strided (a packed panel, a plain row) or looked up in a table, which is how the
// convolution kernels read a zero-padded image in place instead of unfolding it: the
// window offset of sum index q, or the image position of column p, comes from the table.
//
// The mr x nr tile of C stays in registers for the whole sum. With AVX-512 an 8 x 32 tile
// is 16 accumulators fed by 2 vector loads and 8 broadcasts per step: enough independent
// FMAs to keep both FMA ports busy with the loads well within L1 bandwidth. With AVX2
// (16 registers) the tile is 6 x 16.
#pragma once
#include <cstdint>
#include <utility>

#include "mpnet/backend/cpu/simd.hpp"

#if MPNET_CPU_SIMD

namespace mpnet::cpu::gemm {

inline constexpr int nv = 2;  // vectors per tile row
inline constexpr int nr = nv * simd::lanes;
inline constexpr int mr = simd::lanes == 16 ? 8 : 6;

// index(p) = p * stride
template <int64_t stride>
struct Strided {
    int64_t operator()(int64_t p) const { return p * stride; }
};

// index(p) = table[p]
struct Table {
    const int32_t* table;
    int64_t operator()(int64_t p) const { return table[p]; }
};

// C rows i < rows of the tile at c (row stride ldc); accumulate adds to what is there.
// Kept out of line: inlined into a caller's loops, the row pointers no longer fit in the
// general registers and spill inside the sum loop.
template <int rows, class AIndex, class BIndex>
[[gnu::noinline]] void tile(int64_t depth, const float* const* a, AIndex ai, const float* const* b, BIndex bi, float* c,
                 int64_t ldc, bool accumulate) {
    simd::vec acc[rows][nv];
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[i][v] = simd::zero();
    const float* ar[rows];
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) ar[i] = a[i];
    const float* br[nv];
#pragma GCC unroll 4
    for (int v = 0; v < nv; ++v) br[v] = b[v];
#pragma GCC unroll 2
    for (int64_t p = 0; p < depth; ++p) {
        const int64_t bo = bi(p), ao = ai(p);
        simd::vec bv[nv];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) bv[v] = simd::load(br[v] + bo);
#pragma GCC unroll 16
        for (int i = 0; i < rows; ++i) {
            const simd::vec av = simd::broadcast(ar[i] + ao);
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) acc[i][v] = simd::fmadd(av, bv[v], acc[i][v]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) {
            float* out = c + i * ldc + v * simd::lanes;
            simd::store(out, accumulate ? simd::add(simd::load(out), acc[i][v]) : acc[i][v]);
        }
}

namespace detail {
template <class AIndex, class BIndex, int... R>
inline void tile_rows(std::integer_sequence<int, R...>, int rows, int64_t depth, const float* const* a, AIndex ai,
                      const float* const* b, BIndex bi, float* c, int64_t ldc, bool accumulate) {
    ((rows == R + 1 ? tile<R + 1>(depth, a, ai, b, bi, c, ldc, accumulate) : void()), ...);
}
}  // namespace detail

// Rows of the next tile when `remaining` rows are left. A lone short tile has too few
// independent accumulators to hide the FMA latency, so a remainder between mr and 2 mr
// is split into two tiles of about half each (32 rows with mr = 6: 6 6 6 6 4 4).
inline int next_rows(int64_t remaining) {
    if (remaining <= mr) return int(remaining);
    return remaining < 2 * mr ? int((remaining + 1) / 2) : mr;
}

// tile<rows> for a row count known only at run time (1 <= rows <= mr).
template <class AIndex, class BIndex>
inline void tile(int rows, int64_t depth, const float* const* a, AIndex ai, const float* const* b, BIndex bi,
                 float* c, int64_t ldc, bool accumulate) {
    if (rows == mr) return tile<mr>(depth, a, ai, b, bi, c, ldc, accumulate);
    detail::tile_rows(std::make_integer_sequence<int, mr - 1>{}, rows, depth, a, ai, b, bi, c, ldc, accumulate);
}

}  // namespace mpnet::cpu::gemm

#endif
