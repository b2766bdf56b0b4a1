// Scratch directories for the tests that write files or run the programs: under the system's
// temporary directory, named by the process id (ctest -j runs test processes side by side)
// and the test's own name, created empty, and removed with all they hold when the test
// process exits, so that running the suite leaves nothing behind.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace mpnet::testing {

namespace detail {
class ScratchPaths {
public:
    static ScratchPaths& instance() {
        static ScratchPaths paths;
        return paths;
    }
    void add(const std::filesystem::path& p) { paths_.push_back(p); }
    ScratchPaths(const ScratchPaths&) = delete;
    ScratchPaths& operator=(const ScratchPaths&) = delete;
    ~ScratchPaths() {
        std::error_code ignored;  // a path already gone, or never made, is fine
        for (const auto& p : paths_) std::filesystem::remove_all(p, ignored);
    }

private:
    ScratchPaths() = default;
    std::vector<std::filesystem::path> paths_;
};
}  // namespace detail

// <temp>/<prefix>-<pid>-<name>, or <temp>/<prefix>-<pid> without a name: a path removed at
// exit, not created.
inline std::filesystem::path scratch_path(const std::string& prefix, const std::string& name = "") {
    const std::filesystem::path p = std::filesystem::temp_directory_path() /
                                    (prefix + "-" + std::to_string(::getpid()) + (name.empty() ? "" : "-" + name));
    detail::ScratchPaths::instance().add(p);
    return p;
}

// scratch_path(prefix, name), made an empty directory.
inline std::filesystem::path fresh_dir(const std::string& prefix, const std::string& name = "") {
    const std::filesystem::path d = scratch_path(prefix, name);
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
}

}  // namespace mpnet::testing
