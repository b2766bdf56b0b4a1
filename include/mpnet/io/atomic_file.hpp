// Crash-safe file replacement: readers see either the old file or the complete new one.
//
// The content goes to a temporary file in the target's directory (same filesystem, so the
// final rename is atomic), is flushed and fsync'ed, then renamed over the target, and the
// directory is fsync'ed so the rename itself survives a power loss. Any failure removes the
// temporary file and throws mpnet::Error naming the target and the system error.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <utility>

#include "mpnet/core/error.hpp"

namespace mpnet::io {

// The stream handed to a write_file_atomic callback. write() checks every call, so a full
// disk surfaces as an Error naming the target file rather than as a short file.
class FileSink {
public:
    FileSink(std::FILE* file, const std::filesystem::path& target) : file_(file), target_(target) {}

    void write(std::span<const std::byte> bytes) {
        if (bytes.empty()) return;
        if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size())
            fail(target_.string(), ": write failed: ", std::strerror(errno));
    }

    // For formatted output (fprintf); errors on it are caught by the final ferror check.
    [[nodiscard]] std::FILE* handle() const { return file_; }

private:
    std::FILE* file_;
    const std::filesystem::path& target_;
};

namespace detail {

[[noreturn]] inline void fail_errno(const std::filesystem::path& target, const char* what, int err) {
    fail(target.string(), ": ", what, ": ", std::strerror(err));
}

// Unique per process and per call, so concurrent writers of one target never share a file.
inline std::filesystem::path temp_path_for(const std::filesystem::path& target) {
    static std::atomic<unsigned> counter{0};
    const std::string name = "." + target.filename().string() + ".tmp." +
                             std::to_string(::getpid()) + "." + std::to_string(counter++);
    return target.parent_path() / name;
}

// Owns the temporary file until commit(); destroying it uncommitted closes and unlinks it.
class TempFile {
public:
    explicit TempFile(const std::filesystem::path& target)
        : target_(target), path_(temp_path_for(target)) {
        const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0) fail_errno(target_, "cannot create temporary file", errno);
        file_ = ::fdopen(fd, "wb");
        if (file_ == nullptr) {
            const int err = errno;
            ::close(fd);
            ::unlink(path_.c_str());
            fail_errno(target_, "cannot open temporary file", err);
        }
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    ~TempFile() {
        if (file_ != nullptr) std::fclose(file_);
        if (!committed_) ::unlink(path_.c_str());
    }

    [[nodiscard]] std::FILE* file() const { return file_; }

    // Makes the bytes durable, then atomically replaces the target with them.
    void commit() {
        if (std::ferror(file_) != 0) fail(target_.string(), ": write failed");
        if (std::fflush(file_) != 0) fail_errno(target_, "write failed", errno);
        crash_if_requested();
        if (::fsync(::fileno(file_)) != 0) fail_errno(target_, "fsync failed", errno);
        const int closed = std::fclose(file_);
        file_ = nullptr;  // fclose released the stream even when it reports an error
        if (closed != 0) fail_errno(target_, "close failed", errno);
        if (std::rename(path_.c_str(), target_.c_str()) != 0)
            fail_errno(target_, "cannot rename temporary file over it", errno);
        committed_ = true;
    }

private:
    // Fault injection for crash tests: with MPNET_FAULT_KILL_BEFORE_RENAME=<text> set, writing
    // a file whose name contains <text> kills the process (SIGKILL, like a crash or kill -9)
    // after the data is written and before the rename, leaving the temporary file behind.
    void crash_if_requested() const {
        const char* when = std::getenv("MPNET_FAULT_KILL_BEFORE_RENAME");
        if (when != nullptr && *when != '\0' && target_.filename().string().find(when) != std::string::npos)
            ::kill(::getpid(), SIGKILL);
    }

    const std::filesystem::path& target_;
    std::filesystem::path path_;
    std::FILE* file_ = nullptr;
    bool committed_ = false;
};

// Without this the rename may be lost on power failure even though the data is on disk.
// Filesystems that cannot sync directories report EINVAL; there is nothing more to do there.
inline void sync_directory(const std::filesystem::path& target) {
    const std::filesystem::path dir = target.parent_path().empty() ? "." : target.parent_path();
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) fail_errno(target, "written, but cannot open its directory to sync it", errno);
    const int synced = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (synced != 0 && err != EINVAL)
        fail_errno(target, "written, but syncing its directory failed", err);
}

}  // namespace detail

// Calls fill with a sink on the temporary file; exceptions from fill propagate after cleanup.
inline void write_file_atomic(const std::filesystem::path& path,
                              const std::function<void(FileSink&)>& fill) {
    check(!path.filename().empty(), "write_file_atomic: '", path.string(), "' names no file");
    {
        detail::TempFile temp(path);
        FileSink sink(temp.file(), path);
        fill(sink);
        temp.commit();
    }
    detail::sync_directory(path);
}

inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
    write_file_atomic(path, [bytes](FileSink& sink) { sink.write(bytes); });
}

}  // namespace mpnet::io
