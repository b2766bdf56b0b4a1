// The EDM2 authors' generation presets (generate_images.py, config_presets): for each, the
// main network, the guiding network and the guidance weight. Networks are named by the stem
// of the authors' pickle (edm2-img512-xs-2147483-0.135 for edm2-img512-xs-2147483-0.135.pkl);
// mpnet-generate --preset looks for <stem>.safetensors, as mpnet-convert writes it, in the
// folder given by --models.
#pragma once
#include <span>
#include <string_view>

namespace mpnet::sample {

struct GenerationPreset {
    std::string_view name, net, gnet;  // gnet empty: unguided
    double guidance;
};

inline constexpr GenerationPreset generation_presets[] = {
    {"edm2-img512-xs-fid", "edm2-img512-xs-2147483-0.135", "", 1.0},
    {"edm2-img512-xs-dino", "edm2-img512-xs-2147483-0.200", "", 1.0},
    {"edm2-img512-s-fid", "edm2-img512-s-2147483-0.130", "", 1.0},
    {"edm2-img512-s-dino", "edm2-img512-s-2147483-0.190", "", 1.0},
    {"edm2-img512-m-fid", "edm2-img512-m-2147483-0.100", "", 1.0},
    {"edm2-img512-m-dino", "edm2-img512-m-2147483-0.155", "", 1.0},
    {"edm2-img512-l-fid", "edm2-img512-l-1879048-0.085", "", 1.0},
    {"edm2-img512-l-dino", "edm2-img512-l-1879048-0.155", "", 1.0},
    {"edm2-img512-xl-fid", "edm2-img512-xl-1342177-0.085", "", 1.0},
    {"edm2-img512-xl-dino", "edm2-img512-xl-1342177-0.155", "", 1.0},
    {"edm2-img512-xxl-fid", "edm2-img512-xxl-0939524-0.070", "", 1.0},
    {"edm2-img512-xxl-dino", "edm2-img512-xxl-0939524-0.150", "", 1.0},
    {"edm2-img64-s-fid", "edm2-img64-s-1073741-0.075", "", 1.0},
    {"edm2-img64-m-fid", "edm2-img64-m-2147483-0.060", "", 1.0},
    {"edm2-img64-l-fid", "edm2-img64-l-1073741-0.040", "", 1.0},
    {"edm2-img64-xl-fid", "edm2-img64-xl-0671088-0.040", "", 1.0},
    {"edm2-img512-xs-guid-fid", "edm2-img512-xs-2147483-0.045", "edm2-img512-xs-uncond-2147483-0.045", 1.4},
    {"edm2-img512-xs-guid-dino", "edm2-img512-xs-2147483-0.150", "edm2-img512-xs-uncond-2147483-0.150", 1.7},
    {"edm2-img512-s-guid-fid", "edm2-img512-s-2147483-0.025", "edm2-img512-xs-uncond-2147483-0.025", 1.4},
    {"edm2-img512-s-guid-dino", "edm2-img512-s-2147483-0.085", "edm2-img512-xs-uncond-2147483-0.085", 1.9},
    {"edm2-img512-m-guid-fid", "edm2-img512-m-2147483-0.030", "edm2-img512-xs-uncond-2147483-0.030", 1.2},
    {"edm2-img512-m-guid-dino", "edm2-img512-m-2147483-0.015", "edm2-img512-xs-uncond-2147483-0.015", 2.0},
    {"edm2-img512-l-guid-fid", "edm2-img512-l-1879048-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.2},
    {"edm2-img512-l-guid-dino", "edm2-img512-l-1879048-0.035", "edm2-img512-xs-uncond-2147483-0.035", 1.7},
    {"edm2-img512-xl-guid-fid", "edm2-img512-xl-1342177-0.020", "edm2-img512-xs-uncond-2147483-0.020", 1.2},
    {"edm2-img512-xl-guid-dino", "edm2-img512-xl-1342177-0.030", "edm2-img512-xs-uncond-2147483-0.030", 1.7},
    {"edm2-img512-xxl-guid-fid", "edm2-img512-xxl-0939524-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.2},
    {"edm2-img512-xxl-guid-dino", "edm2-img512-xxl-0939524-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.7},
    {"edm2-img512-s-autog-fid", "edm2-img512-s-2147483-0.070", "edm2-img512-xs-0134217-0.125", 2.1},
    {"edm2-img512-s-autog-dino", "edm2-img512-s-2147483-0.120", "edm2-img512-xs-0134217-0.165", 2.45},
    {"edm2-img512-xxl-autog-fid", "edm2-img512-xxl-0939524-0.075", "edm2-img512-m-0268435-0.155", 2.05},
    {"edm2-img512-xxl-autog-dino", "edm2-img512-xxl-0939524-0.130", "edm2-img512-m-0268435-0.205", 2.3},
    {"edm2-img512-s-uncond-autog-fid", "edm2-img512-s-uncond-2147483-0.070", "edm2-img512-xs-uncond-0134217-0.110", 2.85},
    {"edm2-img512-s-uncond-autog-dino", "edm2-img512-s-uncond-2147483-0.090", "edm2-img512-xs-uncond-0134217-0.125", 2.9},
    {"edm2-img64-s-autog-fid", "edm2-img64-s-1073741-0.045", "edm2-img64-xs-0134217-0.110", 1.7},
    {"edm2-img64-s-autog-dino", "edm2-img64-s-1073741-0.105", "edm2-img64-xs-0134217-0.175", 2.2},
};

inline const GenerationPreset* find_generation_preset(std::string_view name) {
    for (const auto& p : generation_presets)
        if (p.name == name) return &p;
    return nullptr;
}

}  // namespace mpnet::sample
