// Training-state checkpoints: everything a run needs to continue bit-identically —
// weights, Adam moments, EMA profiles, step, images seen and the data position. Each is
// written atomically (temporary file, fsync, rename), so a kill at any moment leaves the
// previous checkpoint intact.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "mpnet/io/safetensors.hpp"

namespace mpnet::train {

inline std::string kimg_tag(double nimg) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%07lld", static_cast<long long>(std::llround(nimg / 1000)));
    return buf;
}

// Named by images seen (not kimg): short test runs checkpoint more often than every 1000 images.
inline std::filesystem::path checkpoint_path(const std::filesystem::path& dir, double nimg) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%012lld", static_cast<long long>(std::llround(nimg)));
    return dir / ("training-state-" + std::string(buf) + ".safetensors");
}

// Checkpoints in a run directory, newest first.
inline std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& dir) {
    std::vector<std::filesystem::path> found;
    if (!std::filesystem::is_directory(dir)) return found;
    static const std::regex pattern(R"(training-state-\d{12}\.safetensors)");
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.is_regular_file() && std::regex_match(e.path().filename().string(), pattern)) found.push_back(e.path());
    std::sort(found.rbegin(), found.rend());
    return found;
}

// Temporary files of atomic writes (".<name>.tmp.<pid>.<n>") that a killed process left.
inline void remove_stale_temporaries(const std::filesystem::path& dir) {
    if (!std::filesystem::is_directory(dir)) return;
    static const std::regex pattern(R"(\..+\.tmp\.\d+\.\d+)");
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.is_regular_file() && std::regex_match(e.path().filename().string(), pattern))
            std::filesystem::remove(e.path());
}

}  // namespace mpnet::train
