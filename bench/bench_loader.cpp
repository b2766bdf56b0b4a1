// The loader's throughput (docs/datasets.md): batches of 64 from a zip of uncompressed PNGs,
// as mpnet-dataset writes them, held in memory or streamed with 1 or 2 decode threads. The
// figure to compare is the training step's images per second: the loader works ahead on its
// own thread, so it only slows training when it is slower than the step.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "mpnet/data/load_dataset.hpp"
#include "mpnet/data/loader.hpp"
#include "mpnet/data/npy.hpp"
#include "mpnet/io/png.hpp"
#include "mpnet/io/zip_writer.hpp"

using namespace mpnet;
namespace fs = std::filesystem;

namespace {

// Temporary zips, made once per name and removed at exit.
fs::path made_once(const std::string& name, const std::function<void(io::ZipWriter&)>& fill) {
    struct Made {
        std::map<std::string, fs::path> paths;
        ~Made() {
            for (const auto& [key, path] : paths) fs::remove(path);
        }
    };
    static Made made;
    if (made.paths.contains(name)) return made.paths[name];
    const fs::path path =
        fs::temp_directory_path() / ("mpnet-bench-loader-" + std::to_string(::getpid()) + "-" + name + ".zip");
    io::ZipWriter z(path);
    fill(z);
    z.finish();
    return made.paths[name] = path;
}

// A zip of `count` RGB images of side x side (smooth content, stored PNG).
fs::path dataset_zip(int side, int count) {
    return made_once("png" + std::to_string(side), [&](io::ZipWriter& z) {
        for (int i = 0; i < count; ++i) {
            io::Image img(side, side, 3);
            for (int y = 0; y < side; ++y)
                for (int x = 0; x < side; ++x)
                    for (int c = 0; c < 3; ++c) img.at(x, y, c) = uint8_t((x * (c + 1) + y * 3 + i * 7) & 255);
            const auto png = io::encode_png_uncompressed(img);
            char name[32];
            std::snprintf(name, sizeof name, "%05d/img%08d.png", i / 1000, i);
            z.add(name, std::span(reinterpret_cast<const uint8_t*>(png.data()), png.size()));
        }
    });
}

// A zip of `count` latent posteriors [8, side, side] (np.save bytes, as mpnet-dataset encode
// writes them).
fs::path latent_zip(int side, int count) {
    return made_once("npy" + std::to_string(side), [&](io::ZipWriter& z) {
        std::vector<float> v(std::size_t(8 * side * side));
        const std::vector<int64_t> shape{8, side, side};
        for (int i = 0; i < count; ++i) {
            for (std::size_t k = 0; k < v.size(); ++k)
                v[k] = k < v.size() / 2 ? float((k * 7 + std::size_t(i)) % 13) - 6 : 0.5f;
            char name[48];
            std::snprintf(name, sizeof name, "%05d/img-mean-std-%08d.npy", i / 1000, i);
            z.add(name, data::npy_bytes(shape, v));
        }
    });
}

void BM_Loader(benchmark::State& state) {
    const int side = int(state.range(0)), threads = int(state.range(1));
    const bool stream = threads > 0;
    const auto ds = data::load_dataset(dataset_zip(side, side >= 256 ? 256 : 2048).string(),
                                       stream ? data::Storage::stream : data::Storage::memory);
    data::Loader loader(ds, 64, 1, true, 4, {}, std::max(threads, 1));
    for (auto _ : state) benchmark::DoNotOptimize(loader.next().images.data());
    state.SetItemsProcessed(int64_t(state.iterations()) * 64);
    state.SetLabel(stream ? "streamed, " + std::to_string(threads) + " decode thread(s)" : "in memory");
}

// Streamed behind a cache of decoded images (--data-cache) that holds the whole dataset,
// timed after one warm-up epoch: every image then comes from the cache.
void BM_LoaderCached(benchmark::State& state) {
    const int side = int(state.range(0));
    const auto zip = dataset_zip(side, side >= 256 ? 256 : 2048);
    const auto probe = data::load_dataset(zip.string(), data::Storage::stream);
    const auto ds = data::load_dataset(zip.string(), data::Storage::stream, nullptr,
                                       std::size_t(probe.size) * probe.image_bytes());
    data::Loader loader(ds, 64, 1, true, 4, {}, 1);
    for (int64_t i = 0; i < ds.size / 64; ++i) (void)loader.next();
    for (auto _ : state) benchmark::DoNotOptimize(loader.next().images.data());
    state.SetItemsProcessed(int64_t(state.iterations()) * 64);
    state.SetLabel("streamed, whole dataset cached");
}

// Latents of 512x512 images (64x64x4 drawn from mean and std, normalised): the img512 presets' input.
void BM_LoaderLatents(benchmark::State& state) {
    const int threads = int(state.range(0));
    const bool stream = threads > 0;
    const auto ds = data::load_dataset(latent_zip(64, 256).string(), stream ? data::Storage::stream : data::Storage::memory);
    data::Loader loader(ds, 64, 1, true, 4, {}, std::max(threads, 1));
    for (auto _ : state) benchmark::DoNotOptimize(loader.next().images.data());
    state.SetItemsProcessed(int64_t(state.iterations()) * 64);
    state.SetLabel(stream ? "streamed, " + std::to_string(threads) + " decode thread(s)" : "in memory");
}

}  // namespace

// {decode threads (0: in memory)}
BENCHMARK(BM_LoaderLatents)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// {side}
BENCHMARK(BM_LoaderCached)->Arg(64)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

// {side, decode threads (0: in memory)}
BENCHMARK(BM_Loader)->Args({64, 0})->Args({64, 1})->Args({64, 2})->Args({512, 0})->Args({512, 1})->Args({512, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
