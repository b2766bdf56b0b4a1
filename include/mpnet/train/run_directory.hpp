// The run directory of mpnet-train: an exclusive lock, the options a run started with, its
// statistics log, and setting a previous run aside. A directory is only ever continued by
// the run that made it; anything else is refused with the difference named, so a rerun
// never overwrites another run's files.
#pragma once
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/core/error.hpp"
#include "mpnet/io/atomic_file.hpp"
#include "mpnet/train/options.hpp"

namespace mpnet::train {

// An exclusive flock on DIR/.lock for the lifetime of the object; the file holds the
// holder's process id, so a second trainer can say who has the directory. The lock goes
// with the process (also on kill -9), and the file is never removed: removing a lock file
// lets two processes lock two different files of one name.
class RunDirLock {
public:
    explicit RunDirLock(const std::filesystem::path& dir) {
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        check(!ec, dir.string(), ": cannot create the run directory: ", ec.message());
        const std::filesystem::path path = dir / ".lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        check(fd_ >= 0, path.string(), ": cannot open the lock file: ", std::strerror(errno));
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            const int err = errno;
            std::string holder;
            std::getline(std::ifstream(path), holder);
            ::close(fd_);
            check(err == EWOULDBLOCK, path.string(), ": cannot lock: ", std::strerror(err));
            fail(dir.string(), " is in use by another trainer (process ", holder.empty() ? "unknown" : holder,
                 "); wait for it to finish or choose another --outdir");
        }
        // The pid only makes a refusal friendlier: failing to write it leaves the lock held.
        const std::string pid = std::to_string(::getpid()) + "\n";
        if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
    }
    RunDirLock(const RunDirLock&) = delete;
    RunDirLock& operator=(const RunDirLock&) = delete;
    ~RunDirLock() { ::close(fd_); }

private:
    int fd_ = -1;
};

// "key: a (there) vs b (here)" for every top-level key on which two JSON objects differ.
inline std::string json_differences(const nlohmann::json& there, const nlohmann::json& here) {
    std::string out;
    auto note = [&](const std::string& key, const nlohmann::json* a, const nlohmann::json* b) {
        out += (out.empty() ? "" : ", ") + key + " " + (a ? a->dump() : "(unset)") + " vs " + (b ? b->dump() : "(unset)");
    };
    for (const auto& [k, v] : there.items())
        if (!here.contains(k) || here[k] != v) note(k, &v, here.contains(k) ? &here[k] : nullptr);
    for (const auto& [k, v] : here.items())
        if (!there.contains(k)) note(k, nullptr, &v);
    return out;
}

// The options a run began with, as its options.json records them.
inline std::filesystem::path options_path(const std::filesystem::path& dir) { return dir / "options.json"; }

// Refuses a directory whose options.json records another run: an option that must not
// change (see may_change_on_resume) with another value. Options a file predates are taken
// at their defaults.
inline void check_options_file(const std::filesystem::path& dir, const TrainOptions& now) {
    const auto path = options_path(dir);
    if (!std::filesystem::exists(path)) return;
    nlohmann::json before = nlohmann::json(TrainOptions{});
    try {
        before.update(nlohmann::json::parse(std::ifstream(path)));
    } catch (const nlohmann::json::exception& e) {
        fail(path.string(), ": not valid JSON: ", e.what());
    }
    nlohmann::json a = before, b = nlohmann::json(now);
    for (auto* j : {&a, &b})
        for (auto it = j->begin(); it != j->end();)
            it = may_change_on_resume(it.key()) ? j->erase(it) : std::next(it);
    const std::string diff = json_differences(a, b);
    check(diff.empty(), path.string(), ": this directory holds a run started with other options (", diff,
          "); use a new --outdir, or --start-over to set that run aside");
}

inline void write_options_file(const std::filesystem::path& dir, const TrainOptions& o) {
    const std::string text = nlohmann::json(o).dump(2) + "\n";
    io::write_file_atomic(options_path(dir), std::as_bytes(std::span(text.data(), text.size())));
}

// Whether a file in a run directory belongs to a run (and moves with it when set aside).
inline bool is_run_file(const std::string& name) {
    static const std::regex pattern(
        R"(options\.json|log\.txt|stats\.jsonl|loss\.svg|training-state-\d{12}\.safetensors|network-snapshot-\d+-[0-9.]+\.safetensors)");
    return std::regex_match(name, pattern);
}

// Moves every run file of `dir` into a new DIR/previous-run-<n>/ and returns it: a user
// who asked to start over still has the old run, nothing is deleted.
inline std::filesystem::path set_aside_run(const std::filesystem::path& dir) {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.is_regular_file() && is_run_file(e.path().filename().string())) files.push_back(e.path());
    if (files.empty()) return {};
    std::filesystem::path aside;
    for (int n = 1;; ++n)
        if (!std::filesystem::exists(aside = dir / ("previous-run-" + std::to_string(n)))) break;
    std::filesystem::create_directory(aside);
    for (const auto& f : files) std::filesystem::rename(f, aside / f.filename());
    return aside;
}

// One status line of stats.jsonl.
struct StatsPoint {
    double kimg = 0, loss = NAN, lr = 0;
};

// The status lines of stats.jsonl up to `kimg`, the file rewritten (atomically) without the
// later ones: they were written after the checkpoint a resumed run continues from, and will
// be written again. A torn last line of a killed run is dropped too.
inline std::vector<StatsPoint> trim_stats(const std::filesystem::path& path, double kimg) {
    std::vector<StatsPoint> kept;
    if (!std::filesystem::exists(path)) return kept;
    std::string text;
    bool dropped = false;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
        try {
            const auto j = nlohmann::json::parse(line);
            const double k = j.at("kimg").get<double>();
            if (k <= kimg + 1e-9) {
                const auto& loss = j.at("loss");
                kept.push_back({k, loss.is_number() ? loss.get<double>() : NAN, j.value("lr", 0.0)});
                text += line + "\n";
                continue;
            }
        } catch (const nlohmann::json::exception&) {
        }
        dropped = true;
    }
    if (dropped) io::write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
    return kept;
}

}  // namespace mpnet::train
