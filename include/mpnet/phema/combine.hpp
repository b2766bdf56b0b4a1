// Streaming post-hoc EMA over snapshot files: output_j = sum_i X[i][j] snapshot_i.
//
// Snapshots are visited one at a time (memory-mapped, read tensor by tensor), so memory is
// one double accumulator per output and tensor element: O(outputs x model), whatever the
// number of snapshots. Everything a file could get wrong (tensor set, dtypes, shapes,
// network configuration, time and width in its metadata) is checked from the headers
// alone, before any data is combined.
#pragma once
#include <Eigen/Dense>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/io/safetensors.hpp"
#include "mpnet/phema/snapshot_files.hpp"

namespace mpnet::phema {

// What every snapshot of one reconstruction shares.
struct SnapshotLayout {
    std::vector<io::TensorInfo> tensors;  // in file order; the byte offsets are the first file's
    std::string config;                   // the `config` metadata (the network's JSON), or ""
};

namespace detail {

inline std::optional<double> metadata_number(const io::SafetensorsFile& f, const char* key) {
    const auto it = f.metadata().find(key);
    if (it == f.metadata().end()) return std::nullopt;
    double v = 0;
    const std::string& s = it->second;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc{} || r.ptr != s.data() + s.size())
        fail(f.label(), ": metadata ", key, " = '", s, "' is not a number");
    return v;
}

inline std::string describe(const io::TensorInfo& t) {
    std::string s(io::dtype_name(t.dtype));
    s += " [";
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
        if (i > 0) s += ',';
        s += std::to_string(t.shape[i]);
    }
    return s + "]";
}

inline void check_same_layout(const io::SafetensorsFile& f, const SnapshotLayout& layout, const std::string& first) {
    for (const io::TensorInfo& want : layout.tensors) {
        if (!f.contains(want.name)) fail(f.label(), ": has no tensor '", want.name, "', which ", first, " has");
        const io::TensorInfo& t = f.info(want.name);
        if (t.dtype != want.dtype || t.shape != want.shape)
            fail(f.label(), ": tensor '", t.name, "' is ", describe(t), ", but ", describe(want), " in ", first);
    }
    if (f.tensors().size() != layout.tensors.size())  // then it has a tensor the first file lacks
        for (const io::TensorInfo& t : f.tensors())
            if (std::ranges::none_of(layout.tensors, [&](const io::TensorInfo& u) { return u.name == t.name; }))
                fail(f.label(), ": has tensor '", t.name, "', which ", first, " lacks");
    if (f.metadata_or("config", "") != layout.config)
        fail(f.label(), ": its network config differs from that of ", first, "; snapshots of different networks "
             "cannot be combined");
}

// The name rounds kimg to an integer and sigma_rel to 3 decimals; metadata, where present,
// must agree and is kept for its precision.
inline void check_metadata(const io::SafetensorsFile& f, SnapshotFile& file) {
    if (const auto kimg = metadata_number(f, "kimg")) {
        if (!(std::abs(*kimg - static_cast<double>(file.kimg)) <= 0.5))
            fail(f.label(), ": metadata kimg ", *kimg, " contradicts the file name's ", file.kimg);
        file.time = *kimg;
    }
    if (const auto s = metadata_number(f, "sigma_rel")) {
        if (!(std::abs(*s - file.sigma_rel) <= 0.0005 + 1e-12))
            fail(f.label(), ": metadata sigma_rel ", *s, " contradicts the file name's ", file.sigma_rel);
        file.sigma_rel = *s;
    }
}

}  // namespace detail

// Reads every header; throws, naming the file, at the first one that does not match the first
// file. Refines each file's time and sigma_rel from its metadata where that is given.
inline SnapshotLayout check_snapshots(std::vector<SnapshotFile>& files) {
    check(!files.empty(), "phema: no snapshot files to combine");
    SnapshotLayout layout;
    const std::string first = files.front().path.string();
    for (SnapshotFile& file : files) {
        const io::SafetensorsFile f = io::SafetensorsFile::open(file.path);
        if (&file == &files.front()) {
            layout.tensors = f.tensors();
            layout.config = f.metadata_or("config", "");
            check(!layout.tensors.empty(), first, ": holds no tensors");
        }
        detail::check_same_layout(f, layout, first);
        detail::check_metadata(f, file);
    }
    return layout;
}

// Called after each snapshot is read: (snapshots done, snapshots in all, the one just read).
using CombineProgress = std::function<void(std::size_t, std::size_t, const SnapshotFile&)>;

namespace detail {

// One writer per column of coefficients (rows: files), holding every tensor in its stored dtype.
// Floating-point tensors are accumulated in double; a tensor whose bytes are identical in every
// snapshot (a fixed buffer such as the Fourier frequencies) is copied as is, since a combination
// whose weights only nearly sum to 1 would perturb it. Other tensors must be floating-point,
// and every value finite: one NaN would spread to every output.
class SnapshotCombiner {
public:
    SnapshotCombiner(const std::vector<SnapshotFile>& files, const SnapshotLayout& layout,
                     const Eigen::MatrixXd& coefficients)
        : files_(files), layout_(layout), x_(coefficients) {
        check(x_.rows() == static_cast<Eigen::Index>(files_.size()), "phema: ", x_.rows(),
              " coefficient rows for ", files_.size(), " snapshots");
        std::size_t total = 0;
        for (const io::TensorInfo& t : layout_.tensors) {
            offsets_.push_back(total);
            if (io::dtype_is_float(t.dtype)) total += t.numel();
        }
        sums_.assign(static_cast<std::size_t>(x_.cols()), std::vector<double>(total, 0.0));
        identical_.assign(layout_.tensors.size(), true);
    }

    std::vector<io::SafetensorsWriter> run(const CombineProgress& progress = {}) {
        const io::SafetensorsFile first = io::SafetensorsFile::open(files_.front().path);
        // Checked again: a file may have been replaced since check_snapshots read it.
        check_same_layout(first, layout_, first.label());
        for (std::size_t i = 0; i < files_.size(); ++i) {
            if (i == 0) {
                add(first, first, 0);
            } else {
                const io::SafetensorsFile f = io::SafetensorsFile::open(files_[i].path);
                check_same_layout(f, layout_, first.label());
                add(f, first, i);
            }
            if (progress) progress(i + 1, files_.size(), files_[i]);
        }
        return outputs(first);
    }

private:
    void add(const io::SafetensorsFile& f, const io::SafetensorsFile& first, std::size_t row) {
        for (std::size_t t = 0; t < layout_.tensors.size(); ++t) {
            const io::TensorInfo& info = layout_.tensors[t];
            if (row > 0 && identical_[t]) {  // layouts match, so the byte counts do
                const auto a = f.raw(info.name), b = first.raw(info.name);
                identical_[t] = std::memcmp(a.data(), b.data(), a.size()) == 0;
            }
            if (!io::dtype_is_float(info.dtype)) {
                if (!identical_[t])
                    fail(f.label(), ": ", io::dtype_name(info.dtype), " tensor '", info.name, "' differs from ",
                         first.label(), "; only floating-point tensors can be averaged");
                continue;
            }
            f.read_into(info.name, std::span<double>(scratch(info.numel())));
            for (std::size_t e = 0; e < scratch_.size(); ++e)
                if (!std::isfinite(scratch_[e]))
                    fail(f.label(), ": tensor '", info.name, "', element ", e, " is not finite (", scratch_[e], ")");
            accumulate(row, offsets_[t], info.numel());
        }
    }

    std::vector<double>& scratch(std::size_t n) {
        scratch_.resize(n);
        return scratch_;
    }

    void accumulate(std::size_t row, std::size_t offset, std::size_t n) {
        const double* v = scratch_.data();
        for (std::size_t j = 0; j < sums_.size(); ++j) {
            const double c = x_(static_cast<Eigen::Index>(row), static_cast<Eigen::Index>(j));
            double* s = sums_[j].data() + offset;
            const auto count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for schedule(static) if (count > (1 << 16))
            for (std::ptrdiff_t e = 0; e < count; ++e) s[e] += c * v[e];
        }
    }

    std::vector<io::SafetensorsWriter> outputs(const io::SafetensorsFile& first) const {
        std::vector<io::SafetensorsWriter> out(sums_.size());
        for (std::size_t j = 0; j < out.size(); ++j)
            for (std::size_t t = 0; t < layout_.tensors.size(); ++t) {
                const io::TensorInfo& info = layout_.tensors[t];
                if (identical_[t]) {
                    out[j].add(info.name, info.dtype, info.shape, first.raw(info.name));
                    continue;
                }
                store(out[j], info, std::span<const double>(sums_[j].data() + offsets_[t], info.numel()));
            }
        return out;
    }

    static void store(io::SafetensorsWriter& w, const io::TensorInfo& info, std::span<const double> sum) {
        if (info.dtype == io::DType::F64) return w.add<double>(info.name, info.shape, sum);
        const std::vector<float> f(sum.begin(), sum.end());
        if (!std::ranges::all_of(f, [](float v) { return std::isfinite(v); }))
            fail("phema: tensor '", info.name, "' of a reconstruction overflows float");
        if (info.dtype == io::DType::F32) return w.add<float>(info.name, info.shape, std::span<const float>(f));
        w.add_converted(info.name, info.shape, f, info.dtype);  // F16 and BF16 round from float
    }

    const std::vector<SnapshotFile>& files_;
    const SnapshotLayout& layout_;
    const Eigen::MatrixXd& x_;
    std::vector<std::size_t> offsets_;
    std::vector<std::vector<double>> sums_;
    std::vector<bool> identical_;
    std::vector<double> scratch_;
};

}  // namespace detail

// outputs[j] = sum_i coefficients(i, j) * files[i] (see detail::SnapshotCombiner).
inline std::vector<io::SafetensorsWriter> combine_snapshots(const std::vector<SnapshotFile>& files,
                                                            const SnapshotLayout& layout,
                                                            const Eigen::MatrixXd& coefficients,
                                                            const CombineProgress& progress = {}) {
    return detail::SnapshotCombiner(files, layout, coefficients).run(progress);
}

}  // namespace mpnet::phema
