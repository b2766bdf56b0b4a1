// Reads a whole gzip-compressed file with zlib.
//
// zlib passes files without a gzip header through unchanged, so the same reader also accepts
// an already decompressed file. A truncated stream or a bad CRC is an error, never a short read.
#pragma once
#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

namespace detail {

struct GzClose {
    void operator()(gzFile f) const { gzclose(f); }
};

[[noreturn]] inline void fail_gz(const std::filesystem::path& path, gzFile f) {
    int code = Z_OK;
    const char* message = gzerror(f, &code);
    if (code == Z_ERRNO) fail(path.string(), ": read failed: ", std::strerror(errno));
    if (code == Z_BUF_ERROR) fail(path.string(), ": truncated gzip stream (unexpected end of file)");
    // zlib prefixes its message with the path it was opened with; it is already in ours.
    std::string_view reason = message;
    if (const std::string prefix = path.string() + ": "; reason.starts_with(prefix)) reason.remove_prefix(prefix.size());
    fail(path.string(), ": corrupt gzip stream: ", reason);
}

}  // namespace detail

inline std::vector<uint8_t> read_gzip_file(const std::filesystem::path& path) {
    errno = 0;
    std::unique_ptr<gzFile_s, detail::GzClose> f(gzopen(path.c_str(), "rb"));
    if (!f) fail(path.string(), ": cannot open: ", errno != 0 ? std::strerror(errno) : "out of memory");
    gzbuffer(f.get(), 1 << 17);

    constexpr std::size_t chunk = std::size_t{1} << 20;
    std::vector<uint8_t> out;
    for (;;) {
        const std::size_t used = out.size();
        out.resize(used + chunk);
        const int got = gzread(f.get(), out.data() + used, static_cast<unsigned>(chunk));
        if (got < 0) detail::fail_gz(path, f.get());
        out.resize(used + static_cast<std::size_t>(got));
        if (got == 0) break;
    }
    // gzread reports a stream cut short only through gzerror, after returning what it had.
    int code = Z_OK;
    gzerror(f.get(), &code);
    if (code != Z_OK) detail::fail_gz(path, f.get());
    return out;
}

}  // namespace mpnet::data
