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
//
// The operands are float32 (Float32), or bf16 pairs (Bf16Pairs, bf16.hpp): there each sum
// index p stands for two, A_i[ai(p)] is two adjacent bf16 broadcast as one 32-bit word, a
// B vector holds 16 pair words, and one vdpbf16ps does the work of two FMAs. The tiling
// and the index maps are the same; only the element A is read as and the step differ.
#pragma once
#include <cstdint>
#include <cstring>
#include <utility>

#include "mpnet/backend/cpu/bf16.hpp"
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

// float32 operands: A and B hold one element per sum index.
struct Float32 {
    using a_type = float;
    static constexpr int a_step = 1;  // elements of A per sum index
    static simd::vec broadcast(const float* p) { return simd::broadcast(p); }
    static simd::vec madd(simd::vec a, simd::vec b, simd::vec acc) { return simd::fmadd(a, b, acc); }
};

#if defined(__AVX512F__)
// bf16 pair operands: A is read as bf16, two per sum index, and B as pair words (in a
// float buffer, by their bits). Call only where bf16::cpu_supported().
struct Bf16Pairs {
    using a_type = uint16_t;
    static constexpr int a_step = 2;
    static simd::vec broadcast(const uint16_t* p) {
        uint32_t word;
        std::memcpy(&word, p, sizeof word);
        return _mm512_castsi512_ps(_mm512_set1_epi32(int(word)));
    }
    static simd::vec madd(simd::vec a, simd::vec b, simd::vec acc) { return bf16::dot_pairs(acc, a, b); }
};
#endif

// One step p of the sum into acc: the vector-side row p times each row's element p.
template <class Ops, int rows, class AIndex, class BIndex>
inline void step(int64_t p, const typename Ops::a_type* const* ar, AIndex ai, const float* const* br, BIndex bi,
                 simd::vec (&acc)[rows][nv]) {
    const int64_t bo = bi(p), ao = ai(p);
    simd::vec bv[nv];
#pragma GCC unroll 4
    for (int v = 0; v < nv; ++v) bv[v] = simd::load(br[v] + bo);
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) {
        const simd::vec av = Ops::broadcast(ar[i] + ao);
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[i][v] = Ops::madd(av, bv[v], acc[i][v]);
    }
}

// C rows i < rows of the tile at c (row stride ldc); accumulate adds to what is there.
// Kept out of line: inlined into a caller's loops, the row pointers no longer fit in the
// general registers and spill inside the sum loop.
//
// Hiding the FMA latency takes about 8 independent accumulators; a tile of fewer rows
// keeps `chains` sets of them, set u summing the steps p = u mod chains, added in order
// at the end.
template <class Ops, int rows, class AIndex, class BIndex>
[[gnu::noinline]] void tile_of(int64_t depth, const typename Ops::a_type* const* a, AIndex ai, const float* const* b,
                               BIndex bi, float* c, int64_t ldc, bool accumulate) {
    constexpr int chains = rows * nv >= 8 ? 1 : 8 / (rows * nv);
    simd::vec acc[chains][rows][nv];
#pragma GCC unroll 8
    for (int u = 0; u < chains; ++u)
#pragma GCC unroll 16
        for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) acc[u][i][v] = simd::zero();
    const typename Ops::a_type* ar[rows];
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) ar[i] = a[i];
    const float* br[nv];
#pragma GCC unroll 4
    for (int v = 0; v < nv; ++v) br[v] = b[v];
    int64_t p = 0;
#pragma GCC unroll 2
    for (; p + chains <= depth; p += chains)
#pragma GCC unroll 8
        for (int u = 0; u < chains; ++u) step<Ops, rows>(p + u, ar, ai, br, bi, acc[u]);
    for (; p < depth; ++p) step<Ops, rows>(p, ar, ai, br, bi, acc[0]);
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) {
            simd::vec sum = acc[0][i][v];
#pragma GCC unroll 8
            for (int u = 1; u < chains; ++u) sum = simd::add(sum, acc[u][i][v]);
            float* out = c + i * ldc + v * simd::lanes;
            simd::store(out, accumulate ? simd::add(simd::load(out), sum) : sum);
        }
}

namespace detail {
template <class Ops, class AIndex, class BIndex, int... R>
inline void tile_rows(std::integer_sequence<int, R...>, int rows, int64_t depth, const typename Ops::a_type* const* a,
                      AIndex ai, const float* const* b, BIndex bi, float* c, int64_t ldc, bool accumulate) {
    ((rows == R + 1 ? tile_of<Ops, R + 1>(depth, a, ai, b, bi, c, ldc, accumulate) : void()), ...);
}
}  // namespace detail

// Rows of the next tile when `remaining` rows are left. A lone short tile has too few
// independent accumulators to hide the FMA latency, so a remainder between mr and 2 mr
// is split into two tiles of about half each (32 rows with mr = 6: 6 6 6 6 4 4).
inline int next_rows(int64_t remaining) {
    if (remaining <= mr) return int(remaining);
    return remaining < 2 * mr ? int((remaining + 1) / 2) : mr;
}

// tile_of<Ops, rows> for a row count known only at run time (1 <= rows <= mr).
template <class Ops = Float32, class AIndex, class BIndex>
inline void tile(int rows, int64_t depth, const typename Ops::a_type* const* a, AIndex ai, const float* const* b,
                 BIndex bi, float* c, int64_t ldc, bool accumulate) {
    if (rows == mr) return tile_of<Ops, mr>(depth, a, ai, b, bi, c, ldc, accumulate);
    detail::tile_rows<Ops>(std::make_integer_sequence<int, mr - 1>{}, rows, depth, a, ai, b, bi, c, ldc, accumulate);
}

}  // namespace mpnet::cpu::gemm

#endif
