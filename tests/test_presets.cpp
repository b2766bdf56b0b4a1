// The EDM2 presets against the authors' table: tests/data/edm2_presets.json, written by
// scripts/edm2_presets.py from the reference's train_edm2.py and network defaults.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "mpnet/nn/config.hpp"
#include "mpnet/nn/presets.hpp"

namespace nn = mpnet::nn;
using nlohmann::json;

namespace {

const json& reference_presets() {
    static const json table = [] {
        std::ifstream in(MPNET_TEST_DATA "/edm2_presets.json");
        REQUIRE(in);
        return json::parse(in).at("presets");
    }();
    return table;
}

bool has_preset(const std::string& name) {
    const auto all = nn::presets();
    return std::ranges::any_of(all, [&](const nn::Preset& p) { return p.name == name; });
}

}  // namespace

TEST_SUITE_BEGIN("presets");

TEST_CASE("presets: the reference table lists the twelve EDM2 configurations") {
    CHECK(reference_presets().size() == 12);
    CHECK(reference_presets().contains("edm2-img512-xxs"));
    CHECK(reference_presets().contains("edm2-img64-xs"));
}

TEST_CASE("presets: every reference preset exists, and every edm2-* preset is the reference's") {
    for (const auto& entry : reference_presets().items()) {
        INFO(entry.key());
        CHECK(has_preset(entry.key()));
    }
    // mpnet's own presets (fmnist-*, rgb32-*) must not borrow the reference's prefix.
    for (const nn::Preset& p : nn::presets()) {
        INFO(p.name);
        CHECK((!p.name.starts_with("edm2-") || reference_presets().contains(p.name)));
    }
}

TEST_CASE("presets: network settings equal the reference's, field by field") {
    // Every setting must come from the table, or a missing one would be compared with itself.
    const json all_fields = json(nn::NetworkConfig{});
    for (const auto& entry : reference_presets().items()) {
        const std::string& name = entry.key();
        const json& net = entry.value().at("network");
        for (const auto& field : all_fields.items()) {
            INFO(name << ": " << field.key());
            CHECK(net.contains(field.key()));
        }
        // The reference writes None for derived multipliers; config_from_json maps it to 0.
        const json expected = json(nn::config_from_json(net.dump()));
        const json actual = json(nn::find_preset(name).net);
        for (const auto& field : expected.items()) {
            INFO(name << ": " << field.key() << " is " << actual.at(field.key()) << ", reference " << field.value());
            CHECK(actual.at(field.key()) == field.value());
        }
    }
}

TEST_CASE("presets: training recipes equal the reference's, field by field") {
    for (const auto& entry : reference_presets().items()) {
        INFO(entry.key());
        const json& ref = entry.value().at("training");
        const nn::Preset p = nn::find_preset(entry.key());
        // Both sides round the same exact quotient to the nearest double, so == is fair.
        CHECK(p.train.duration_mimg == ref.at("duration_nimg").get<double>() / 1e6);
        CHECK(p.train.batch == ref.at("batch").get<std::int64_t>());
        CHECK(p.train.lr == ref.at("lr").get<double>());
        CHECK(p.train.decay == ref.at("decay").get<double>());
        CHECK(p.train.rampup_mimg == ref.at("rampup_mimg").get<double>());
        CHECK(p.train.P_mean == ref.at("P_mean").get<double>());
        CHECK(p.train.P_std == ref.at("P_std").get<double>());
        // The trainer's loss takes sigma_data from the network.
        CHECK(p.net.sigma_data == ref.at("sigma_data").get<double>());
    }
}

TEST_CASE("presets: durations are the reference's mebi-image counts") {
    // 2048 Mi images overflow a 32-bit int; the table must hold the true, positive count.
    CHECK(nn::find_preset("edm2-img512-xxs").train.duration_mimg == 2147.483648);
    CHECK(nn::find_preset("edm2-img512-l").train.duration_mimg == 1879.048192);
    CHECK(nn::find_preset("edm2-img512-xxl").train.duration_mimg == 939.524096);
    CHECK(nn::find_preset("edm2-img64-m").train.duration_mimg == 2147.483648);
    CHECK(nn::find_preset("edm2-img64-xl").train.duration_mimg == 671.08864);
}
