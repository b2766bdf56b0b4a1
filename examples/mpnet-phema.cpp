// mpnet-phema: post-hoc EMA reconstruction. Combines the power-function EMA snapshots a
// training run wrote into EMA profiles of any other width, at any snapshot's time.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "openmp_spin.hpp"
#include "mpnet/phema/combine.hpp"
#include "mpnet/phema/reconstruct.hpp"
#include "mpnet/phema/snapshot_files.hpp"

namespace fs = std::filesystem;
using namespace mpnet;
using cli::UsageError;

namespace {

struct Options {
    fs::path indir, outdir;
    std::string prefix = "network-snapshot";
    std::string out_prefix = "phema";
    std::optional<std::vector<double>> in_std;
    std::vector<double> out_std;
    std::optional<std::int64_t> out_kimg;
    std::size_t batch = 8;
    bool quiet = false;
};

// Values on a 1e-9 grid, so that 0.010 + 5 * 0.005 is stored as the double nearest 0.035.
double tidy(double v) { return std::round(v * 1e9) / 1e9; }

void append_range(const std::string& option, const std::string& item, std::vector<double>& out) {
    const auto c1 = item.find(':'), c2 = item.find(':', c1 + 1);
    if (c2 == std::string::npos || item.find(':', c2 + 1) != std::string::npos)
        throw UsageError(option + ": range '" + item + "' is not START:STOP:STEP");
    const double start = cli::parse_real(option, item.substr(0, c1));
    const double stop = cli::parse_real(option, item.substr(c1 + 1, c2 - c1 - 1));
    const double step = cli::parse_real(option, item.substr(c2 + 1));
    if (!(step > 0) || !(stop >= start))
        throw UsageError(option + ": range '" + item + "' needs STEP > 0 and STOP >= START");
    const double count = std::floor((stop - start) / step + 1e-9) + 1;
    if (count > 100000) throw UsageError(option + ": range '" + item + "' has too many values");
    for (int i = 0; i < static_cast<int>(count); ++i) out.push_back(tidy(start + i * step));
}

std::vector<double> parse_std_list(const std::string& option, const std::string& text) {
    std::vector<double> values;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        const auto end = std::min(text.find(',', begin), text.size());
        const std::string item = text.substr(begin, end - begin);
        if (item.find(':') != std::string::npos)
            append_range(option, item, values);
        else
            values.push_back(cli::parse_real(option, item));
        begin = end + 1;
    }
    std::ranges::sort(values);
    values.erase(std::unique(values.begin(), values.end()), values.end());
    return values;
}

cli::Parser make_parser(Options& o) {
    cli::Parser p("mpnet-phema --indir DIR --out-std STDS --outdir DIR [options]",
                  R"(Post-hoc EMA reconstruction (EDM2): forms EMA profiles of new relative widths
sigma_rel from the power-function EMA snapshots written during training.

Input snapshots are the files DIR/<prefix>-<kimg>-<sigma_rel>.safetensors (kimg
zero-padded to 7 digits, sigma_rel with 3 decimals), e.g.
network-snapshot-0000256-0.050.safetensors. They must hold the same tensors
(names, dtypes, shapes) and the same `config` metadata. A snapshot's time is
its kimg, from its `kimg` metadata where present (it may hold fractions), else
from its name; only ratios of times matter. Snapshots at time 0 or after the
output time are not used. `sigma_rel` metadata likewise refines the name's.)");
    p.section("Options")
        .value("--indir", "DIR", "directory of the input snapshots (required)", [&](const std::string& v) { o.indir = v; })
        .value("--prefix", "NAME", "file name prefix of the input snapshots\n(default: network-snapshot)",
               [&](const std::string& v) { o.prefix = v; })
        .value("--in-std", "STDS", "use only the snapshots of these sigma_rel values, compared\nat 3 decimals (default: all)",
               [&](const std::string& v) { o.in_std = parse_std_list("--in-std", v); })
        .value("--out-std", "STDS", "sigma_rel of the profiles to reconstruct (required), each in\n(0, 0.3003]: a list 0.05,0.07,0.09 or a range\nSTART:STOP:STEP with STOP included, e.g. 0.010:0.250:0.005;\nlists and ranges may be mixed: 0.02,0.05:0.07:0.01",
               [&](const std::string& v) { o.out_std = parse_std_list("--out-std", v); })
        .value("--out-kimg", "KIMG", "time of the reconstruction; must be the kimg of some input\nsnapshot (default: the latest)",
               [&](const std::string& v) { o.out_kimg = cli::parse_integer<std::int64_t>("--out-kimg", v, 0); })
        .value("--outdir", "DIR", "directory for the outputs, created if missing (required)",
               [&](const std::string& v) { o.outdir = v; })
        .value("--out-prefix", "NAME", "file name prefix of the outputs (default: phema); each output\nis <outdir>/<out-prefix>-<kimg>-<sigma_rel>.safetensors",
               [&](const std::string& v) { o.out_prefix = v; })
        .value("--batch", "N", "outputs formed per pass over the snapshots (default: 8);\nmemory is about N x model size x 8 bytes",
               [&](const std::string& v) { o.batch = cli::parse_integer<std::size_t>("--batch", v, 1); })
        .flag("--quiet", "print only errors and warnings", [&] { o.quiet = true; });
    p.epilog(R"(Each output holds every tensor of the snapshots in its stored dtype: tensors
that are byte-identical in all snapshots (fixed buffers) are copied, the others
are sum_i X[i] snapshot_i accumulated in double. Its metadata keeps the
snapshots' `config` and records `sigma_rel` and `kimg`. Outputs are written
atomically: a failed run leaves no partial file.

Exit status: 0 on success, 1 on bad input or a failed reconstruction, 2 on a
command-line error.)");
    return p;
}

Options parse_args(int argc, char** argv) {
    Options o;
    make_parser(o).parse(argc, argv);
    if (o.indir.empty()) throw UsageError("--indir is required");
    if (o.outdir.empty()) throw UsageError("--outdir is required");
    if (o.out_std.empty()) throw UsageError("--out-std is required");
    if (o.prefix.empty() || o.out_prefix.empty()) throw UsageError("prefixes must not be empty");
    return o;
}

// sigma_rel as file names write it; --in-std values are matched in this form.
std::string std3(double sigma_rel) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", sigma_rel);
    return buf;
}

// The snapshots the reconstruction may use (before their headers are read), and its kimg.
std::vector<phema::SnapshotFile> select_inputs(const Options& o, std::int64_t& out_kimg) {
    std::vector<phema::SnapshotFile> files = phema::list_snapshot_files(o.indir, o.prefix);
    if (files.empty())
        fail(o.indir.string(), ": no files named ", o.prefix, "-<kimg>-<sigma_rel>.safetensors");
    if (o.in_std) {
        std::set<std::string> wanted;
        for (const double s : *o.in_std) wanted.insert(std3(s));
        std::erase_if(files, [&](const phema::SnapshotFile& f) { return !wanted.contains(std3(f.sigma_rel)); });
        if (files.empty()) fail(o.indir.string(), ": no ", o.prefix, " snapshot has one of the --in-std values");
    }
    out_kimg = o.out_kimg.value_or(files.back().kimg);
    if (!std::ranges::any_of(files, [&](const phema::SnapshotFile& f) { return f.kimg == out_kimg; }))
        fail("--out-kimg ", out_kimg, " is the time of no input snapshot (they range from kimg ", files.front().kimg,
             " to ", files.back().kimg, ")");
    std::erase_if(files, [&](const phema::SnapshotFile& f) { return f.kimg > out_kimg; });
    return files;
}

// The exact time of the reconstruction (the latest of the snapshots named out_kimg, whose
// metadata may give fractions of a kimg); drops the snapshots that cannot take part.
double settle_time(std::vector<phema::SnapshotFile>& files, std::int64_t out_kimg) {
    double out_time = 0;
    for (const auto& f : files)
        if (f.kimg == out_kimg) out_time = std::max(out_time, f.time);
    // A profile ending at time 0 is undefined; one ending after out_time cannot contribute.
    std::erase_if(files, [&](const phema::SnapshotFile& f) { return !(f.time > 0 && f.time <= out_time); });
    if (files.empty()) fail("no snapshot with 0 < kimg <= ", out_kimg);
    return out_time;
}

// Checked before any snapshot is read; their time is settled later.
std::vector<phema::Target> make_targets(const Options& o, std::int64_t out_kimg) {
    std::vector<phema::Target> targets;
    std::map<std::string, double> by_name;
    for (const double s : o.out_std) {
        if (!(s > 0 && s <= phema::std_max))
            fail("--out-std ", s, " is outside the valid range (0, ", phema::std_max, "]");
        if (const auto [it, fresh] = by_name.emplace(std3(s), s); !fresh)
            fail("--out-std ", it->second, " and ", s, " would both be written to ",
                 phema::snapshot_file_name(o.out_prefix, out_kimg, s));
        targets.push_back({static_cast<double>(out_kimg), s});
    }
    return targets;
}

std::string format_double(double v) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

// Progress on one terminal line; one line per update when stderr is a log file.
class Progress {
public:
    explicit Progress(bool quiet) : quiet_(quiet), tty_(::isatty(STDERR_FILENO) != 0) {}
    void operator()(std::size_t pass, std::size_t passes, std::size_t done, std::size_t total,
                    const phema::SnapshotFile& f) const {
        if (quiet_) return;
        std::fprintf(stderr, "%spass %zu/%zu: snapshot %zu/%zu %s%s", tty_ ? "\r\033[K" : "", pass, passes, done,
                     total, f.path.filename().c_str(), tty_ ? "" : "\n");
        if (tty_ && done == total && pass == passes) std::fputc('\n', stderr);
    }

private:
    bool quiet_, tty_;
};

void run(const Options& o) {
    std::int64_t out_kimg = 0;
    std::vector<phema::SnapshotFile> inputs = select_inputs(o, out_kimg);
    std::vector<phema::Target> targets = make_targets(o, out_kimg);
    const phema::SnapshotLayout layout = phema::check_snapshots(inputs);
    const double out_time = settle_time(inputs, out_kimg);
    for (phema::Target& t : targets) t.time = out_time;

    std::vector<phema::Snapshot> profiles;
    for (const auto& f : inputs) profiles.push_back({f.time, f.sigma_rel});
    const Eigen::MatrixXd x = phema::solve_coefficients(profiles, targets, [](double cond) {
        std::fprintf(stderr, "warning: the snapshots' Gram matrix has condition number %.3g; the coefficients may "
                     "be inaccurate (use fewer or more distinct snapshots, e.g. with --in-std)\n", cond);
    });

    std::set<fs::path> input_paths;
    for (const auto& f : inputs) input_paths.insert(fs::weakly_canonical(f.path));
    std::vector<fs::path> out_paths;
    for (const auto& t : targets) {
        out_paths.push_back(o.outdir / phema::snapshot_file_name(o.out_prefix, out_kimg, t.sigma_rel));
        if (fs::exists(o.outdir) && input_paths.contains(fs::weakly_canonical(out_paths.back())))
            fail(out_paths.back().string(), ": output would overwrite an input snapshot; choose another "
                 "--outdir or --out-prefix");
    }
    fs::create_directories(o.outdir);
    if (!o.quiet)
        std::fprintf(stderr, "reconstructing %zu profile%s at kimg %lld from %zu snapshots\n", targets.size(),
                     targets.size() == 1 ? "" : "s", static_cast<long long>(out_kimg), inputs.size());

    const Progress progress(o.quiet);
    // At most one pass per output: a --batch beyond the output count changes nothing.
    const std::size_t per_pass = std::min(o.batch, targets.size());
    const std::size_t passes = (targets.size() + per_pass - 1) / per_pass;
    for (std::size_t pass = 0; pass < passes; ++pass) {
        const auto first = static_cast<Eigen::Index>(pass * per_pass);
        const auto count = std::min<Eigen::Index>(static_cast<Eigen::Index>(per_pass), x.cols() - first);
        const Eigen::MatrixXd batch = x.middleCols(first, count);
        std::vector<io::SafetensorsWriter> outputs = phema::combine_snapshots(
            inputs, layout, batch, [&](std::size_t done, std::size_t total, const phema::SnapshotFile& f) {
                progress(pass + 1, passes, done, total, f);
            });
        for (Eigen::Index j = 0; j < count; ++j) {
            const auto k = static_cast<std::size_t>(first + j);
            io::SafetensorsWriter& w = outputs[static_cast<std::size_t>(j)];
            if (!layout.config.empty()) w.set_metadata("config", layout.config);
            w.set_metadata("kimg", format_double(out_time));
            w.set_metadata("sigma_rel", format_double(targets[k].sigma_rel));
            w.write(out_paths[k]);
            if (!o.quiet) std::printf("%s\n", out_paths[k].c_str());
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    cli::bound_openmp_spinning(argv);
    return cli::run_main("mpnet-phema", argc, argv, parse_args, run);
}
