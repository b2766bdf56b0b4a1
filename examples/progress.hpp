// Images done, rate and time left on one terminal line, rewritten in place; when stderr is
// not a terminal (a log), a line every 1000 images and at the end. For mpnet-dataset and
// mpnet-metrics, whose work is a count of images.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

namespace mpnet::cli {

class ImageProgress {
public:
    ImageProgress(bool quiet, int64_t total) : quiet_(quiet), tty_(::isatty(STDERR_FILENO) != 0), total_(total) {}
    void update(int64_t done) const {
        if (quiet_ || (!tty_ && done % 1000 != 0 && done != total_)) return;
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
        const double rate = s > 0 ? double(done) / s : 0;
        std::fprintf(stderr, "%simages %lld/%lld  %.2f images/s  eta %.0f s%s", tty_ ? "\r\033[K" : "",
                     static_cast<long long>(done), static_cast<long long>(total_), rate,
                     rate > 0 ? double(total_ - done) / rate : 0.0, tty_ && done != total_ ? "" : "\n");
    }

private:
    bool quiet_, tty_;
    int64_t total_;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace mpnet::cli
