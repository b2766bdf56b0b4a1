// EMA snapshot files on disk: `<prefix>-<kimg>-<sigma_rel>.safetensors`, the kimg zero-padded
// to 7 digits and sigma_rel written with 3 decimals (network-snapshot-0000256-0.050.safetensors).
#pragma once
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::phema {

inline constexpr std::string_view snapshot_extension = ".safetensors";

struct SnapshotFile {
    std::filesystem::path path;
    std::string prefix;
    std::int64_t kimg;  // as written in the name (rounded to whole kimg)
    double time;        // in kimg: the name's, refined from the file's metadata where it has one
    double sigma_rel;   // the name's 3 decimals, refined likewise
};

inline std::string snapshot_file_name(const std::string& prefix, std::int64_t kimg, double sigma_rel) {
    char tail[64];
    std::snprintf(tail, sizeof tail, "-%07lld-%.3f", static_cast<long long>(kimg), sigma_rel);
    return prefix + tail + std::string(snapshot_extension);
}

namespace detail {
inline bool all_digits(std::string_view s) {
    return !s.empty() && std::ranges::all_of(s, [](char c) { return c >= '0' && c <= '9'; });
}
}  // namespace detail

// nullopt unless the file name has the snapshot form (any prefix, any number of digits).
inline std::optional<SnapshotFile> parse_snapshot_file_name(const std::filesystem::path& path) {
    const std::string filename = path.filename().string();
    std::string_view name = filename;
    if (!name.ends_with(snapshot_extension)) return std::nullopt;
    name.remove_suffix(snapshot_extension.size());
    const std::size_t dash_std = name.rfind('-');
    if (dash_std == std::string_view::npos || dash_std == 0) return std::nullopt;
    const std::size_t dash_kimg = name.rfind('-', dash_std - 1);
    if (dash_kimg == std::string_view::npos || dash_kimg == 0) return std::nullopt;
    const std::string_view kimg_text = name.substr(dash_kimg + 1, dash_std - dash_kimg - 1);
    const std::string_view std_text = name.substr(dash_std + 1);
    const std::size_t dot = std_text.find('.');
    if (!detail::all_digits(kimg_text) || dot == std::string_view::npos || !detail::all_digits(std_text.substr(0, dot)) ||
        !detail::all_digits(std_text.substr(dot + 1)))
        return std::nullopt;
    SnapshotFile f{path, std::string(name.substr(0, dash_kimg)), 0, 0, 0};
    const auto k = std::from_chars(kimg_text.data(), kimg_text.data() + kimg_text.size(), f.kimg);
    const auto s = std::from_chars(std_text.data(), std_text.data() + std_text.size(), f.sigma_rel);
    if (k.ec != std::errc{} || s.ec != std::errc{}) return std::nullopt;  // kimg beyond int64
    f.time = static_cast<double>(f.kimg);
    return f;
}

// Every snapshot file of this prefix in dir, ordered by (kimg, sigma_rel). Errors for a missing
// directory and for two names of one (kimg, sigma_rel) (0.05 and 0.050), which would make the
// reconstruction's system singular.
inline std::vector<SnapshotFile> list_snapshot_files(const std::filesystem::path& dir, const std::string& prefix) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) fail(dir.string(), ": no such directory");
    std::vector<SnapshotFile> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        if (!entry.is_regular_file()) continue;
        std::optional<SnapshotFile> f = parse_snapshot_file_name(entry.path());
        if (f && f->prefix == prefix) files.push_back(std::move(*f));
    }
    std::ranges::sort(files, [](const SnapshotFile& a, const SnapshotFile& b) {
        return a.kimg != b.kimg ? a.kimg < b.kimg : a.sigma_rel < b.sigma_rel;
    });
    for (std::size_t i = 1; i < files.size(); ++i)
        if (files[i].kimg == files[i - 1].kimg && files[i].sigma_rel == files[i - 1].sigma_rel)
            fail(files[i - 1].path.string(), " and ", files[i].path.filename().string(),
                 " are two snapshots of the same time and sigma_rel");
    return files;
}

}  // namespace mpnet::phema
