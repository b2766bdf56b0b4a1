// A training set: uint8 pixels in NCHW order plus optional class labels, either decoded once
// into memory or read on demand.
//
// Small datasets are held whole (Fashion-MNIST is 60 MiB at 32x32), which keeps batch assembly
// a memory copy. A dataset too large for memory has a reader instead: read_image() then decodes
// an image when a batch needs it, on the loader's threads, and only the file list and the
// labels stay in memory (docs/datasets.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

// Reads one image of a dataset on demand, as CHW uint8 (or, for a latent dataset, the
// [2C, R, R] float posterior). Called from several threads at once.
class ImageReader {
public:
    virtual ~ImageReader() = default;
    virtual void read(int64_t index, uint8_t* chw) const = 0;
    virtual void read_latent(int64_t, float*) const { fail("this dataset holds images, not latents"); }
};

// --skip-bad: the samples found unreadable (a truncated archive member, a corrupt PNG or
// .npy, another shape), each reported once. A bad sample is replaced by the next readable
// one (index + 1, cyclically), image and label, whether the dataset is held in memory or
// streamed: a pure function of the data, so batches and resumes stay exact. Shared by the
// loader's threads.
class BadSamples {
public:
    using Report = std::function<void(const std::string&)>;
    explicit BadSamples(Report report = {}) : report_(std::move(report)) {}

    void note(int64_t index, const std::string& why) {
        bool first = false;
        {
            const std::lock_guard lock(mutex_);
            first = bad_.insert(index).second;
        }
        if (first && report_) report_("skipping a bad sample: " + why);
    }
    [[nodiscard]] bool known(int64_t index) const {
        const std::lock_guard lock(mutex_);
        return bad_.contains(index);
    }
    [[nodiscard]] std::size_t count() const {
        const std::lock_guard lock(mutex_);
        return bad_.size();
    }

private:
    Report report_;
    mutable std::mutex mutex_;
    std::set<int64_t> bad_;
};

struct Dataset {
    std::string source;  // the path the data came from, for messages
    int64_t size = 0, channels = 0, resolution = 0;  // images are square
    int64_t num_classes = 0;                         // 0 = no labels
    std::vector<uint8_t> pixels;                     // size * channels * resolution * resolution, NCHW; empty when streamed
    std::vector<int32_t> labels;                     // size entries, or empty when unlabelled
    std::shared_ptr<const ImageReader> reader;       // set when the images are read on demand
    // A latent dataset (VAE-encoded, as the reference's `encode` writes it): each sample is the
    // posterior mean and standard deviation, [2 * channels, resolution, resolution] floats, and
    // `channels` is what the network sees. Held in latent_values (or read by `reader`).
    bool latent = false;
    std::vector<float> latent_values;
    // Set (--skip-bad): unreadable samples are replaced instead of stopping the run.
    std::shared_ptr<BadSamples> bad_samples;

    [[nodiscard]] bool streamed() const { return reader != nullptr; }
    [[nodiscard]] std::size_t image_bytes() const {
        return static_cast<std::size_t>(channels * resolution * resolution);
    }
    // An image held in memory (not for a streamed dataset: use read_image).
    [[nodiscard]] const uint8_t* image(int64_t index) const {
        return pixels.data() + static_cast<std::size_t>(index) * image_bytes();
    }
    // Any image, as image_bytes() bytes of CHW pixels.
    void read_image(int64_t index, uint8_t* chw) const {
        if (reader) reader->read(index, chw);
        else std::memcpy(chw, image(index), image_bytes());
    }
    // A latent dataset's sample: latent_floats() values, the mean's planes then the std's.
    [[nodiscard]] std::size_t latent_floats() const { return 2 * image_bytes(); }
    void read_latent(int64_t index, float* mean_std) const {
        if (reader) return reader->read_latent(index, mean_std);
        std::memcpy(mean_std, latent_values.data() + static_cast<std::size_t>(index) * latent_floats(),
                    latent_floats() * sizeof(float));
    }
    // Runs read(index) and says whether it worked: without bad_samples its error propagates,
    // with them it is noted (reported once) and false returned.
    template <class Read>
    bool try_read(int64_t index, Read&& read) const {
        if (!bad_samples) {
            read(index);
            return true;
        }
        try {
            read(index);
            return true;
        } catch (const Error& e) {
            bad_samples->note(index, e.what());
            return false;
        }
    }
    // read(j) for the sample that stands for `index`, returning j: `index` itself, or with
    // bad_samples the next one (cyclically) that reads without error.
    template <class Read>
    int64_t read_substituting(int64_t index, Read&& read) const {
        for (int64_t step = 0; step < size; ++step) {
            const int64_t j = (index + step) % size;
            if (!(bad_samples && bad_samples->known(j)) && try_read(j, read)) return j;
        }
        fail_all_bad(size);
    }
    [[noreturn]] void fail_all_bad(int64_t count) const {
        fail(source, ": no sample can be read (every one of the ", count, " is bad)");
    }
};

// Every level of the U-Net halves the resolution, so only powers of two can go all the way down.
inline void check_power_of_two(int64_t resolution, const std::string& source) {
    check(resolution > 0 && (resolution & (resolution - 1)) == 0, source, ": resolution ", resolution,
          " is not a power of two (the network halves it at every level)");
}

// Checks that the fields agree with each other; readers guarantee it, hand-built datasets may not.
inline void validate(const Dataset& ds) {
    check(ds.size > 0, ds.source, ": the dataset has no images");
    check(ds.channels > 0 && ds.resolution > 0, ds.source, ": the dataset has no image shape");
    check_power_of_two(ds.resolution, ds.source);
    if (ds.latent)
        check(ds.pixels.empty() && (ds.streamed() ? ds.latent_values.empty()
                                                  : ds.latent_values.size() == static_cast<std::size_t>(ds.size) * ds.latent_floats()),
              ds.source, ": ", ds.latent_values.size(), " latent values for ", ds.size, " samples of 2x", ds.channels,
              "x", ds.resolution, "x", ds.resolution);
    else if (ds.streamed())
        check(ds.pixels.empty(), ds.source, ": a streamed dataset holds no pixels in memory");
    else
        check(ds.pixels.size() == static_cast<std::size_t>(ds.size) * ds.image_bytes(), ds.source, ": ",
              ds.pixels.size(), " pixel bytes for ", ds.size, " images of ", ds.channels, "x", ds.resolution, "x",
              ds.resolution);
    if (ds.num_classes == 0) {
        check(ds.labels.empty(), ds.source, ": labels given but num_classes is 0");
        return;
    }
    check(ds.labels.size() == static_cast<std::size_t>(ds.size), ds.source, ": ", ds.labels.size(),
          " labels for ", ds.size, " images");
    for (const int32_t label : ds.labels)
        check(label >= 0 && label < ds.num_classes, ds.source, ": label ", label, " outside [0, ",
              ds.num_classes, ")");
}

}  // namespace mpnet::data
