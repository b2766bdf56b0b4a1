// mpnet-convert: the authors' EDM2 network pickles as mpnet weights files, without running
// the code the pickles carry (docs/pretrained.md).
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "mpnet/backend/cpu/cpu.hpp"
#include "mpnet/nn/edm2_pickle.hpp"
#include "mpnet/nn/weights.hpp"

namespace fs = std::filesystem;
using namespace mpnet;
using cli::UsageError;

namespace {

struct Options {
    fs::path in, out;
    bool quiet = false;
};

Options parse_args(int argc, char** argv) {
    Options o;
    std::vector<std::string> positional;
    cli::Parser p("mpnet-convert IN.pkl OUT.safetensors [--quiet]",
                  R"(Converts a network pickle of the EDM2 reference code (NVlabs/edm2: the released
edm2-img512-*.pkl and edm2-img64-*.pkl files, network-snapshot-*.pkl of its
training, reconstruct_phema.py outputs) to an mpnet weights file for
mpnet-generate --net/--gnet.

The pickle's embedded source code is never run: only the data of its network
(`ema`) and encoder are read, and a pickle that names any other Python global
is refused. Its state_dict tensors are written as float32 (exactly: the
pickles hold float16) under their own names, with the network configuration
(Precond's constructor arguments; an unknown one is an error) in the
metadata, and, for latent models, the encoder's normalisation: `encoder` =
{"class": "StabilityVAEEncoder", "vae_name", "scale", "bias"}, where final
latent = raw latent * scale + bias per channel.)");
    p.section("Options").flag("--quiet", "print only errors", [&] { o.quiet = true; });
    p.positional([&](const std::string& v) { positional.push_back(v); });
    p.epilog(R"(The output is written atomically. Memory: about 12 bytes per parameter (2 GB for
img512-xs, 18 GB for img512-xxl).

Exit status: 0 on success, 1 on bad input, 2 on a command-line error.)");
    p.parse(argc, argv);
    if (positional.size() != 2) throw UsageError("expected IN.pkl and OUT.safetensors");
    o.in = positional[0];
    o.out = positional[1];
    return o;
}

void run(const Options& o) {
    auto pickle = nn::read_edm2_pickle(o.in);
    const auto& cfg = pickle.config;
    const std::string label = o.in.string();

    auto net = nn::network_from<float, CpuBackend>(pickle, label);

    std::map<std::string, std::string> metadata{{"source", o.in.filename().string()},
                                                {"source_config", pickle.init_kwargs.dump()}};
    if (pickle.encoder) metadata["encoder"] = nn::to_json(*pickle.encoder).dump();
    nn::save_weights(net, o.out, metadata);
    if (!o.quiet) {
        std::printf("%s: %zu tensors, %lld values, %s\n", o.out.string().c_str(), pickle.state.size(),
                    static_cast<long long>(nn::state_numel(cfg)), nn::to_json(cfg).c_str());
        if (pickle.encoder) std::printf("encoder: %s\n", nn::to_json(*pickle.encoder).dump().c_str());
    }
}

}  // namespace

int main(int argc, char** argv) { return cli::run_main("mpnet-convert", argc, argv, parse_args, run); }
