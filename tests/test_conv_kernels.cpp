// The float convolution kernels against a direct convolution in double, on shapes that
// exercise every edge of the blocking: channel counts that are not multiples of the
// register tile, images smaller than a panel or not dividing one, depths beyond one
// block, several threads' columns, 1x1 inputs read in place and copied, kernels 1, 3
// and 5, batch 1 to 3; and 3x3 products of 32 or more channels, which run as Winograd's
// F(2x2, 3x3), on images of odd and even sizes, narrower than a vector of tiles or not.
#include "conv_reference.hpp"

using namespace mpnet;

namespace {

using namespace mpnet::test::conv;

constexpr double tol = 1e-5;
// F(4x4, 3x3) multiplies inputs by up to 5 x 5 in its input transform and outputs by up to
// 8 x 8 in its output transform, so it rounds more: measured 5e-6 to 1.3e-5 of scale at 32 to
// 1024 channels (against 2e-7 to 7e-7 for F(2x2) and 3e-7 to 4e-7 for the direct sum).
constexpr double f4x4_tol = 3e-5;

}  // namespace

TEST_CASE("conv kernels: float forward and backward match a direct convolution in double") {
    const Case cases[] = {
        {1, 3, 5, 4, 4, 3},     {3, 5, 7, 4, 4, 3},    {3, 13, 9, 8, 8, 3},   {1, 7, 11, 8, 8, 5},
        {3, 6, 10, 5, 7, 5},    {3, 37, 19, 8, 8, 1},  {1, 1, 3, 4, 4, 1},    {3, 70, 40, 16, 16, 3},
        {3, 300, 33, 8, 8, 1},  {1, 2, 64, 16, 16, 3}, {3, 64, 1, 8, 8, 3},   {1, 9, 17, 3, 11, 3},
        {2, 40, 64, 32, 32, 3}, {2, 20, 24, 32, 32, 1}, {2, 5, 6, 8, 4, 3},    {2, 3, 4, 16, 2, 5},
        // Images larger than a unit of columns, units starting mid-row: staged as windows of rows.
        {1, 6, 8, 37, 29, 3},   {2, 5, 7, 23, 41, 5},
        // One to four output channels (the network's output layer): summed row by row.
        {2, 32, 1, 32, 32, 3},  {3, 17, 3, 9, 13, 3},  {2, 12, 4, 16, 16, 1}, {1, 5, 2, 7, 5, 5},  {2, 3, 2, 1, 6, 3},
        // 3x3 direct with two depth blocks (270 sums); Winograd (all three products at even sizes):
        // two depth blocks (300 channels), 8x8 images (tiles gathered across rows and images),
        // odd sizes (tiles past the image), one row, chunks of 2 and 4 panels (and short ones).
        {2, 30, 40, 16, 16, 3}, {2, 300, 40, 8, 8, 3}, {3, 33, 35, 9, 13, 3}, {1, 32, 36, 37, 29, 3},
        {2, 40, 33, 1, 6, 3},   {3, 36, 32, 5, 5, 3},  {2, 200, 100, 12, 20, 3},
    };
    uint64_t seed = 100;
    for (const Case& c : cases) {
        INFO("n ", c.n, " cin ", c.cin, " cout ", c.cout, " h ", c.h, " w ", c.w, " k ", c.k);
        auto x = random_float({c.n, c.cin, c.h, c.w}, seed++), w = random_float({c.cout, c.cin, c.k, c.k}, seed++);
        auto dy = random_float({c.n, c.cout, c.h, c.w}, seed++);
        const Reference ref = direct_convolution(c, x, w, dy);

        CpuTensor<float> y(ref.y.shape()), dx(x.shape()), dw(w.shape()), dw_only(w.shape()), none;
        conv2d_forward(CpuBackend{}, x, w, y);
        conv2d_backward(CpuBackend{}, x, w, dy, dx, dw);
        conv2d_backward(CpuBackend{}, x, w, dy, none, dw_only);
        MPNET_CHECK_CLOSE(y, ref.y, tol);
        MPNET_CHECK_CLOSE(dx, ref.dx, tol);
        MPNET_CHECK_CLOSE(dw, ref.dw, tol);
        MPNET_CHECK_CLOSE(dw_only, ref.dw, tol);
    }
}

#if MPNET_CPU_SIMD
// The Winograd products alone, whatever their channel counts (conv2d takes them from 32 up),
// with each edge of their tiling: odd sizes, images narrower than a vector of tiles, one chunk
// or many, one group of tiles or several. F(4x4) takes images whose sides are multiples of 4,
// the weight gradient (F(2x2)) images of even size.
TEST_CASE("conv kernels: Winograd F(2x2, 3x3) and F(4x4, 3x3) match a direct convolution in double") {
    const Case cases[] = {{1, 1, 1, 2, 2, 3},   {2, 5, 7, 5, 7, 3},   {3, 13, 9, 9, 11, 3}, {2, 7, 9, 37, 29, 3},
                          {2, 7, 9, 2, 3, 3},   {4, 3, 2, 8, 8, 3},   {5, 8, 17, 16, 16, 3}, {1, 3, 4, 1, 1, 3},
                          {2, 2, 70, 64, 20, 3}, {9, 4, 6, 4, 4, 3},  {40, 3, 5, 8, 8, 3},  {3, 17, 40, 6, 10, 3},
                          {2, 7, 9, 12, 36, 3}, {3, 33, 35, 4, 8, 3}, {2, 96, 40, 16, 16, 3}};
    uint64_t seed = 500;
    for (const Case& c : cases) {
        INFO("n ", c.n, " cin ", c.cin, " cout ", c.cout, " h ", c.h, " w ", c.w);
        auto x = random_float({c.n, c.cin, c.h, c.w}, seed++), w = random_float({c.cout, c.cin, 3, 3}, seed++);
        const auto ref_dy = random_float({c.n, c.cout, c.h, c.w}, seed++);
        const Reference ref = direct_convolution(c, x, w, ref_dy);
        const cpu::conv::Images<float> images{x.data(), c.n, c.cin, c.h, c.w, 3};
        CpuTensor<float> y(ref.y.shape());
        cpu::conv::winograd::forward<2>(images, w.data(), c.cout, y.data());
        MPNET_CHECK_CLOSE(y, ref.y, tol);
        if (c.h % 4 == 0 && c.w % 4 == 0) {
            CpuTensor<float> y4(ref.y.shape());
            cpu::conv::winograd::forward<4>(images, w.data(), c.cout, y4.data());
            MPNET_CHECK_CLOSE(y4, ref.y, f4x4_tol);
        }
        if (c.h % 2 || c.w % 2) continue;
        CpuTensor<float> dw(w.shape());
        cpu::conv::winograd::weight(images, ref_dy.data(), c.cout, dw.data());
        MPNET_CHECK_CLOSE(dw, ref.dw, tol);
    }
}
#endif

// Training resumes bit for bit and an image's samples do not depend on its batch, so the
// SIMD float kernels give the same bits whatever the thread count, the scheduling of the
// threads, or the other images in the batch. (The Eigen path sums the weight gradient per
// thread: the same bits for the same thread count only.)
#if MPNET_CPU_SIMD
TEST_CASE("conv kernels: bit-identical across thread counts, runs and batch composition") {
    // Blocked, few outputs, and Winograd (forward and input gradient; 8x8: chunks across
    // images; 64x64: F(4x4) with either vector width).
    for (const Case c : {Case{5, 24, 40, 16, 16, 3}, Case{5, 24, 3, 16, 16, 3}, Case{5, 40, 48, 16, 16, 3},
                         Case{7, 40, 48, 8, 8, 3}, Case{5, 32, 40, 64, 64, 3}}) {
        CAPTURE(c.cout);
        auto x = random_float({c.n, c.cin, c.h, c.w}, 7), w = random_float({c.cout, c.cin, c.k, c.k}, 8);
        auto dy = random_float({c.n, c.cout, c.h, c.w}, 9);
        auto run = [&](int threads) {
            const int saved = omp_get_max_threads();
            omp_set_num_threads(threads);
            CpuTensor<float> y(dy.shape()), dx(x.shape()), dw(w.shape());
            conv2d_forward(CpuBackend{}, x, w, y);
            conv2d_backward(CpuBackend{}, x, w, dy, dx, dw);
            omp_set_num_threads(saved);
            return std::array{y.to_host(), dx.to_host(), dw.to_host()};
        };
        const auto one = run(1);
        for (int threads : {2, 3, 2})
            for (size_t i = 0; i < 3; ++i) CHECK(run(threads)[i] == one[i]);

        // Image 3 alone: its output and input gradient are those it had within the batch.
        const auto x3 = x.slice(3, 4).clone(), dy3 = dy.slice(3, 4).clone();
        CpuTensor<float> y3(dy3.shape()), dx3(x3.shape()), dw3(w.shape());
        conv2d_forward(CpuBackend{}, x3, w, y3);
        conv2d_backward(CpuBackend{}, x3, w, dy3, dx3, dw3);
        const int64_t image = c.cout * c.h * c.w, input = c.cin * c.h * c.w;
        CHECK(y3.to_host() == std::vector<float>(one[0].begin() + 3 * image, one[0].begin() + 4 * image));
        CHECK(dx3.to_host() == std::vector<float>(one[1].begin() + 3 * input, one[1].begin() + 4 * input));
    }
}
#endif
