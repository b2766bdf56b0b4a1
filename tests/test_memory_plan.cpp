// Planned memory: the placement of blocks from their lifetimes, and the CPU pool's plans that
// record a phase once and serve it from one arena afterwards. What must hold: blocks alive at
// the same time never share a byte (checked by filling each block with its own pattern and
// reading it back before it is freed), a run that departs from the plan is still served
// correctly, and a network computes bit for bit what it computes without a plan.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "golden.hpp"
#include "mpnet/core/lifetime_plan.hpp"
#include "mpnet/nn/precond.hpp"
#include "mpnet/sample/denoiser.hpp"

using namespace mpnet;

namespace {

bool overlap(std::size_t a, std::size_t na, std::size_t b, std::size_t nb) { return a < b + nb && b < a + na; }

void check_plan(const std::vector<Lifetime>& blocks, const ArenaPlan& plan, std::size_t alignment) {
    REQUIRE(plan.offsets.size() == blocks.size());
    CHECK(plan.bytes >= live_peak(blocks));
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        CHECK(plan.offsets[i] % alignment == 0);
        CHECK(plan.offsets[i] + blocks[i].bytes <= plan.bytes);
        for (std::size_t j = 0; j < i; ++j)
            if (blocks[i].meets(blocks[j]))
                CHECK_FALSE(overlap(plan.offsets[i], blocks[i].bytes, plan.offsets[j], blocks[j].bytes));
    }
}

// A phase as a network runs one: blocks of a few sizes taken in order and freed in a mixed
// order, some kept past the end. Each block is filled with its own byte and checked before it
// is freed, so any two live blocks sharing memory show up.
struct Phase {
    std::vector<int64_t> sizes;  // elements
    std::vector<std::pair<int, int>> frees;  // free block .first after taking block .second
    std::vector<int> kept;  // blocks that outlive the phase

    static Phase random(uint64_t seed, int n) {
        std::mt19937_64 g(seed);
        Phase p;
        for (int i = 0; i < n; ++i) p.sizes.push_back(int64_t(1) << (4 + g() % 14));  // 64 B to 1 MiB
        for (int i = 0; i < n; ++i) {
            if (g() % 8 == 0) {
                p.kept.push_back(i);
                continue;
            }
            p.frees.emplace_back(i, std::min<int>(n - 1, i + 1 + int(g() % 6)));
        }
        return p;
    }
};

using Block = CpuTensor<float>;

void fill_with(Block& t, int id) { std::memset(t.data(), id % 251 + 1, t.bytes()); }
bool holds(const Block& t, int id) {
    const auto* b = reinterpret_cast<const unsigned char*>(t.data());
    for (std::size_t i = 0; i < t.bytes(); ++i)
        if (b[i] != id % 251 + 1) return false;
    return true;
}

// Runs the phase; the kept blocks are returned. Every block holds its pattern until freed.
std::vector<Block> run(const Phase& p, int& corrupted) {
    std::vector<Block> live(p.sizes.size());
    std::vector<Block> kept;
    for (int i = 0; i < int(p.sizes.size()); ++i) {
        live[size_t(i)] = Block(Shape{p.sizes[size_t(i)]});
        fill_with(live[size_t(i)], i);
        for (const auto& [block, after] : p.frees)
            if (after == i) {
                if (!holds(live[size_t(block)], block)) ++corrupted;
                live[size_t(block)] = Block();
            }
    }
    for (int i : p.kept) {
        if (!holds(live[size_t(i)], i)) ++corrupted;
        kept.push_back(live[size_t(i)]);
    }
    return kept;
}

// The phase run once inside a region of `plan`.
std::vector<Block> run_in(cpu::MemoryPlan& plan, const Phase& p, int& corrupted) {
    const cpu::MemoryPlan::Region region(plan);
    return run(p, corrupted);
}

}  // namespace

TEST_CASE("lifetime plan: blocks that meet never overlap; nested lifetimes fit in their peak exactly") {
    std::mt19937_64 g(3);
    for (int trial = 0; trial < 20; ++trial) {
        std::vector<Lifetime> blocks;
        for (int i = 0; i < 200; ++i) {
            const int64_t first = int64_t(g() % 400);
            blocks.push_back({std::size_t(1 + g() % 5000), first, first + 1 + int64_t(g() % 60)});
        }
        const ArenaPlan plan = plan_arena(blocks, 64);
        check_plan(blocks, plan, 64);
        CHECK(plan.bytes <= 2 * live_peak(blocks) + 64 * blocks.size());
    }
    // Stack-like lifetimes (each freed before the one taken before it), as a chain of layers keeps them.
    std::vector<Lifetime> stack;
    for (int i = 0; i < 10; ++i) stack.push_back({std::size_t(64 * (10 - i)), i, 20 - i});
    const ArenaPlan nested = plan_arena(stack, 64);
    check_plan(stack, nested, 64);
    CHECK(nested.bytes == live_peak(stack));
    // Two blocks that never meet share their bytes.
    const std::vector<Lifetime> apart{{640, 0, 2}, {640, 2, 4}};
    CHECK(plan_arena(apart, 64).bytes == 640);
    CHECK(live_peak(apart) == 640);
}

TEST_CASE("memory plan: the first run is recorded, later runs come from the arena, no live blocks overlap") {
    auto& pool = cpu::MemoryPool::instance();
    const std::size_t before = pool.bytes_in_use();
    const Phase phase = Phase::random(11, 300);
    cpu::MemoryPlan plan;
    int corrupted = 0;
    for (int r = 0; r < 4; ++r) {
        const std::vector<Block> kept = run_in(plan, phase, corrupted);
        CAPTURE(r);
        CHECK(plan.times_planned() == 1);
        CHECK(plan.pool_blocks() + plan.arena_blocks() == int64_t(phase.sizes.size()));
        if (r == 0) CHECK(plan.arena_blocks() == 0);
        else CHECK(plan.pool_blocks() == int64_t(phase.kept.size()));  // only the blocks that outlive the region
        for (std::size_t k = 0; k < kept.size(); ++k) CHECK(holds(kept[k], phase.kept[k]));
    }
    CHECK(corrupted == 0);
    CHECK(plan.arena_bytes() >= plan.planned_live_peak());
    CHECK(plan.arena_bytes() <= plan.planned_live_peak() * 5 / 4);
    CHECK(pool.bytes_in_use() == before);
}

TEST_CASE("memory plan: a run that departs from the plan is served correctly and replaces it") {
    const Phase a = Phase::random(21, 200), b = Phase::random(22, 250);
    cpu::MemoryPlan plan;
    int corrupted = 0;
    run_in(plan, a, corrupted);
    run_in(plan, a, corrupted);
    CHECK(plan.times_planned() == 1);
    CHECK(plan.pool_blocks() == int64_t(a.kept.size()));
    run_in(plan, b, corrupted);  // other sizes: from the pool, then planned
    CHECK(plan.times_planned() == 2);
    run_in(plan, b, corrupted);
    CHECK(plan.times_planned() == 2);
    CHECK(plan.pool_blocks() == int64_t(b.kept.size()));
    CHECK(corrupted == 0);
}

TEST_CASE("memory plan: a block kept past its planned lifetime is never handed out again while alive") {
    const Phase p = Phase::random(31, 200);
    cpu::MemoryPlan plan;
    int corrupted = 0;
    run_in(plan, p, corrupted);
    // Now every block the plan expects freed inside the region is held beyond it.
    std::vector<Block> held;
    {
        const cpu::MemoryPlan::Region region(plan);
        std::vector<Block> live;
        for (int i = 0; i < int(p.sizes.size()); ++i) {
            live.emplace_back(Shape{p.sizes[size_t(i)]});
            fill_with(live.back(), i);
        }
        held = live;
    }
    run_in(plan, p, corrupted);  // must not land on the held blocks
    for (int i = 0; i < int(held.size()); ++i) CHECK(holds(held[size_t(i)], i));
    CHECK(corrupted == 0);
}

TEST_CASE("memory plan: blocks freed on another thread, and regions cut short by an exception") {
    auto& pool = cpu::MemoryPool::instance();
    const std::size_t before = pool.bytes_in_use();
    const Phase p = Phase::random(41, 100);
    cpu::MemoryPlan plan;
    int corrupted = 0;
    for (int r = 0; r < 3; ++r) {
        std::vector<Block> kept = run_in(plan, p, corrupted);
        std::thread([k = std::move(kept)]() mutable { k.clear(); }).join();
    }
    CHECK(plan.times_planned() == 1);
    const int64_t planned = plan.times_planned();
    CHECK_THROWS_AS(([&] {
                        const cpu::MemoryPlan::Region region(plan);
                        Block half(Shape{p.sizes[0]});
                        throw std::runtime_error("cut short");
                    }()),
                    std::runtime_error);
    CHECK(plan.times_planned() == planned);  // a partial run does not replace the plan
    {
        const cpu::MemoryPlan::Region region(plan);
        CHECK_THROWS_AS(cpu::MemoryPlan::Region{plan}, std::logic_error);  // one region of a plan at a time
    }
    CHECK(corrupted == 0);
    CHECK(pool.bytes_in_use() == before);
}

TEST_CASE("memory plan: arena blocks freed on another thread during a run, and held past the plan") {
    auto& pool = cpu::MemoryPool::instance();
    const std::size_t in_use = pool.bytes_in_use();
    pool.release_cached();
    const std::size_t held = pool.bytes_held();
    const Phase p = Phase::random(51, 80);
    std::atomic<int> corrupted = 0;
    std::vector<Block> kept;
    {
        cpu::MemoryPlan plan;
        // Two waves of 40 blocks. The first is freed before the second is taken: by this
        // thread, or by a worker while this thread takes the second wave from the same arena.
        const auto two_waves = [&](bool worker_frees, bool keep_first) {
            const cpu::MemoryPlan::Region region(plan);
            std::vector<Block> first, second;
            for (int i = 0; i < 40; ++i) {
                first.emplace_back(Shape{p.sizes[size_t(i)]});
                fill_with(first.back(), i);
            }
            std::thread worker;
            if (keep_first) kept = std::move(first);
            else if (worker_frees)
                worker = std::thread([&corrupted, blocks = std::move(first)]() mutable {
                    for (int i = 0; i < 40; ++i) {
                        corrupted += !holds(blocks[size_t(i)], i);
                        blocks[size_t(i)] = Block();
                    }
                });
            else first.clear();
            for (int i = 40; i < 80; ++i) {
                second.emplace_back(Shape{p.sizes[size_t(i)]});
                fill_with(second.back(), i);
            }
            if (worker.joinable()) worker.join();
            for (int i = 40; i < 80; ++i) corrupted += !holds(second[size_t(i - 40)], i);
        };
        for (int round = 0; round < 3; ++round) {
            two_waves(false, false);
            two_waves(false, false);  // planned: both waves from the arena
            REQUIRE(plan.arena_blocks() == 80);
            two_waves(true, false);
            CHECK(plan.arena_blocks() >= 40);  // the worker gave arena blocks back
        }
        two_waves(false, false);
        two_waves(false, false);
        two_waves(false, true);  // arena blocks kept past the run, then past the plan
    }
    for (int i = 0; i < 40; ++i) CHECK(holds(kept[size_t(i)], i));
    CHECK(pool.bytes_held() > held);
    kept.clear();  // the last block back unmaps the arena
    CHECK(corrupted == 0);
    CHECK(pool.bytes_in_use() == in_use);
    pool.release_cached();
    CHECK(pool.bytes_held() == held);
}

TEST_CASE("memory plan: empty blocks have addresses of their own") {
    cpu::MemoryPlan plan;
    for (int r = 0; r < 3; ++r) {
        const cpu::MemoryPlan::Region region(plan);
        void* a = CpuBackend::allocate(0);
        void* b = CpuBackend::allocate(0);
        void* c = CpuBackend::allocate(64);
        CHECK(a != b);
        CHECK(a != c);
        CHECK(b != c);
        CpuBackend::deallocate(b, 0);
        CpuBackend::deallocate(a, 0);
        CpuBackend::deallocate(c, 64);
    }
}

#ifdef MPNET_HAVE_MMAP
namespace {
// Whether [p, p + bytes) is mapped in full (mincore fails with ENOMEM on any unmapped page).
bool mapped(const void* p, std::size_t bytes) {
    std::vector<unsigned char> pages(bytes / std::size_t(sysconf(_SC_PAGESIZE)) + 1);
    if (mincore(const_cast<void*>(p), bytes, pages.data()) == 0) return true;
    REQUIRE(errno == ENOMEM);
    return false;
}
// The VmFlags line of the mapping holding p in /proc/self/smaps ("" when not found).
std::string vm_flags(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        std::uintptr_t lo = 0, hi = 0;
        char dash = 0;
        if (std::istringstream(line) >> std::hex >> lo >> dash >> hi && dash == '-') inside = lo <= at && at < hi;
        else if (inside && line.rfind("VmFlags:", 0) == 0) return line;
    }
    return "";
}
}  // namespace

TEST_CASE("system memory: blocks of 2 MiB or more are huge-page aligned and advised, and unmapped whole") {
    const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    const bool thp = std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good();
    for (const std::size_t bytes : {cpu::huge_page, cpu::huge_page + 64, 5 * cpu::huge_page + page + 192}) {
        CAPTURE(bytes);
        void* p = cpu::system_allocate(bytes);
        REQUIRE(p != nullptr);
        CHECK(reinterpret_cast<std::uintptr_t>(p) % cpu::huge_page == 0);
        std::memset(p, 0x5a, bytes);
        const std::size_t length = (bytes + page - 1) / page * page;
        CHECK(mapped(p, length));
        // What was mapped beyond the aligned range is gone: the page after it is unmapped.
        CHECK_FALSE(mapped(static_cast<std::byte*>(p) + length, page));
        if (thp) CHECK(vm_flags(p).find(" hg") != std::string::npos);
        cpu::system_free(p, bytes);
        CHECK_FALSE(mapped(p, length));
    }
    // Below 2 MiB nothing changes: mapped (from a megabyte) or from malloc, 64-byte aligned.
    for (const std::size_t bytes : {std::size_t(64), cpu::mapped_threshold, cpu::huge_page - 64}) {
        void* p = cpu::system_allocate(bytes);
        REQUIRE(p != nullptr);
        CHECK(reinterpret_cast<std::uintptr_t>(p) % cpu::memory_alignment == 0);
        std::memset(p, 0x5a, bytes);
        cpu::system_free(p, bytes);
    }
}
#endif

TEST_CASE("memory plan: a network's training step and its evaluations are bit-identical with a plan") {
    using Net = nn::Precond<float, CpuBackend>;
    Net net(test::golden_unet_config(), 5);
    const int64_t n = 3;
    CpuTensor<float> x(Shape{n, 2, 16, 16}), sigma(Shape{n}), labels = CpuTensor<float>::zeros(Shape{n, 4});
    fill_normal(CpuBackend{}, x, 7, 0);
    fill(CpuBackend{}, sigma, 1.3f);
    for (int64_t i = 0; i < n; ++i) labels.data()[i * 4 + i] = 1;

    net.force_normalize();  // once: normalising again would move the weights by an ulp
    const auto step = [&] {
        net.zero_grad();
        Net::Context ctx;
        const auto out = net.forward(x, sigma, labels, {true, 9, true}, true, &ctx);
        net.backward(out.D, out.logvar, ctx);
        return std::vector<float>(net.flat_grads().data(), net.flat_grads().data() + net.flat_grads().numel());
    };
    const std::vector<float> unplanned = step();
    cpu::MemoryPlan plan;
    for (int r = 0; r < 3; ++r) {
        const cpu::MemoryPlan::Region region(plan);
        CHECK(step() == unplanned);
    }
    CHECK(plan.times_planned() == 1);
    CHECK(plan.arena_blocks() > 100);
    // Greedy placement of a real step's blocks comes close to the least possible.
    CHECK(plan.arena_bytes() <= plan.planned_live_peak() * 11 / 10);

    const auto reference = net.forward(x, sigma, labels, {}, false).D;
    sample::NetworkDenoiser<float, CpuBackend> denoiser(net);
    for (int r = 0; r < 3; ++r) {
        const auto D = denoiser(x, 1.3, labels);
        CHECK(std::memcmp(D.data(), reference.data(), D.bytes()) == 0);
    }
}
