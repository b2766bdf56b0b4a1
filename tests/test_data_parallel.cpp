// The pieces of data parallelism that need no launcher (docs/distributed.md): the tree order
// of gradient sums, its accumulation as chunks arrive, and the loader's shards. The programs
// under mpirun are tested in test_mpi.cpp.
#include <cstring>
#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include <doctest/doctest.h>

#include "bars_data.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/data/loader.hpp"
#include "mpnet/dist/communicator.hpp"
#include "mpnet/dist/tree_order.hpp"

using namespace mpnet;

namespace {

// Values of wildly different magnitudes, so that every grouping of a sum rounds differently.
std::vector<std::vector<float>> chunks(int n, int length) {
    std::vector<std::vector<float>> out{size_t(n), std::vector<float>(size_t(length))};
    for (int c = 0; c < n; ++c)
        for (int i = 0; i < length; ++i)
            out[size_t(c)][size_t(i)] = float((rng::uniform(3, uint64_t(c * length + i)) - 0.5) *
                                              std::pow(10.0, (c * 7 + i) % 9 - 4));
    return out;
}

// The left-complete tree written out by its definition, as the reference for everything else.
float by_definition(const std::vector<std::vector<float>>& c, size_t lo, size_t hi, size_t i) {
    if (hi - lo == 1) return c[lo][i];
    size_t p = 1;
    while (p * 2 < hi - lo) p *= 2;
    return by_definition(c, lo, lo + p, i) + by_definition(c, lo + p, hi, i);
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

std::vector<float> accumulate(const std::vector<std::vector<float>>& c, size_t lo, size_t hi) {
    dist::GradientTree<float, CpuBackend> tree;
    const Shape shape{int64_t(c[0].size())};
    for (size_t k = lo; k < hi; ++k) tree.add(CpuTensor<float>::from_host(shape, c[k]));
    CpuTensor<float> out(shape);
    tree.finish(out);
    return out.to_host();
}

}  // namespace

TEST_CASE("tree order: the split points, and (a+b)+c for three chunks, (a+b)+(c+d) for four") {
    CHECK(dist::tree_split(2) == 1);
    CHECK(dist::tree_split(3) == 2);
    CHECK(dist::tree_split(4) == 2);
    CHECK(dist::tree_split(5) == 4);
    CHECK(dist::tree_split(8) == 4);
    CHECK(dist::tree_split(9) == 8);
    const auto c = chunks(4, 64);
    for (size_t i = 0; i < 64; ++i) {
        CHECK(by_definition(c, 0, 3, i) == (c[0][i] + c[1][i]) + c[2][i]);
        CHECK(by_definition(c, 0, 4, i) == (c[0][i] + c[1][i]) + (c[2][i] + c[3][i]));
    }
}

TEST_CASE("tree order: tree_sum and the accumulating GradientTree give the definition's bits for 1 to 13 chunks") {
    const int length = 257;
    for (int n = 1; n <= 13; ++n) {
        CAPTURE(n);
        const auto c = chunks(n, length);
        std::vector<float> want(length);
        for (size_t i = 0; i < size_t(length); ++i) want[i] = by_definition(c, 0, size_t(n), i);
        std::vector<const float*> parts;
        for (const auto& v : c) parts.push_back(v.data());
        std::vector<float> summed(length);
        dist::tree_sum(std::span<const float* const>(parts), std::span<float>(summed));
        CHECK(same_bits(summed, want));
        CHECK(same_bits(accumulate(c, 0, size_t(n)), want));
    }
}

TEST_CASE("tree order: K processes of a power-of-two number of chunks each reproduce one process bit for bit") {
    const int length = 129;
    for (const auto& [per_rank, ranks] : std::vector<std::pair<int, int>>{{1, 2}, {1, 3}, {2, 2}, {2, 3}, {4, 3}, {2, 5}, {8, 2}}) {
        CAPTURE(per_rank);
        CAPTURE(ranks);
        const int n = per_rank * ranks;
        const auto c = chunks(n, length);
        const auto one_process = accumulate(c, 0, size_t(n));
        std::vector<std::vector<float>> partial;  // each rank's own accumulation
        for (int r = 0; r < ranks; ++r) partial.push_back(accumulate(c, size_t(r * per_rank), size_t((r + 1) * per_rank)));
        std::vector<const float*> parts;
        for (const auto& v : partial) parts.push_back(v.data());
        std::vector<float> across(length);  // what the gradient sum over ranks computes
        dist::tree_sum(std::span<const float* const>(parts), std::span<float>(across));
        CHECK(same_bits(across, one_process));
    }
}

TEST_CASE("tree order: a GradientTree reused across steps starts each step afresh") {
    const auto a = chunks(5, 33), b = chunks(3, 33);
    dist::GradientTree<float, CpuBackend> tree;
    CpuTensor<float> out(Shape{33});
    for (const auto& v : a) tree.add(CpuTensor<float>::from_host(Shape{33}, v));
    tree.finish(out);
    for (const auto& v : b) tree.add(CpuTensor<float>::from_host(Shape{33}, v));
    tree.finish(out);
    CHECK(same_bits(out.to_host(), accumulate(b, 0, 3)));
    CHECK_THROWS_WITH_AS(tree.finish(out), doctest::Contains("no chunks"), Error);
}

TEST_CASE("loader shards: K ranks together hand out one loader's batches, each its consecutive share, also after seek") {
    const auto ds = testing::bars_dataset();
    const int64_t batch_gpu = 3, per_rank = 2, ranks = 3, per_step = per_rank * ranks;
    data::Loader whole(ds, batch_gpu, 5, true);
    std::vector<std::unique_ptr<data::Loader>> shards;
    for (int64_t r = 0; r < ranks; ++r)
        shards.push_back(std::make_unique<data::Loader>(ds, batch_gpu, 5, true, 2,
                                                        data::Shard{r * per_rank, (r + 1) * per_rank, per_step}));
    auto check_steps = [&](int steps) {
        for (int s = 0; s < steps; ++s)
            for (int64_t r = 0; r < ranks; ++r)
                for (int64_t k = 0; k < per_rank; ++k) {
                    const auto want = whole.next(), got = shards[size_t(r)]->next();
                    CHECK(got.images == want.images);
                    CHECK(got.labels_onehot == want.labels_onehot);
                }
    };
    check_steps(5);  // 90 images: across an epoch boundary of the 64
    const uint64_t at = uint64_t(7 * per_step * batch_gpu);
    whole.seek(at);
    for (auto& s : shards) s->seek(at);
    check_steps(2);
    CHECK_THROWS_WITH_AS(shards[0]->seek(at + 1), doctest::Contains("not at a batch boundary"), Error);
    CHECK_THROWS_WITH_AS(data::Loader(ds, 2, 0, false, 2, data::Shard{2, 2, 4}), doctest::Contains("shard"), Error);
}

TEST_CASE("communicator: a single process is a group of one") {
    auto& one = dist::SingleProcess::instance();
    CHECK(one.rank() == 0);
    CHECK(one.size() == 1);
    std::vector<float> v{1, 2, 3};
    one.sum(std::span<float>(v));
    CHECK(v == std::vector<float>{1, 2, 3});
    CHECK(one.broadcast(std::string("text")) == "text");
    CHECK(!one.any(false));
    CHECK(one.any(true));
    CHECK(one.gather_strings_to_root("x") == std::vector<std::string>{"x"});
    CHECK(one.gather_floats_to_root(std::span<const float>(v)) == v);
}
