// The labels file of the reference implementation's dataset format: dataset.json at the root of
// the directory or archive, {"labels": [["relative/path.png", class], ...]} or {"labels": null}.
//
// Every image must have exactly one label and every label must name an image: a dataset.json
// that does not describe the images is more likely a mistake than an intended subset.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

// One-hot batches are num_classes floats per image; a bound keeps a typo from asking for gigabytes.
inline constexpr int64_t max_classes = int64_t{1} << 20;

// Class labels in the order of `images` (sorted), or nullopt for {"labels": null}; `source` names
// the file in messages.
inline std::optional<std::vector<int32_t>> parse_dataset_json(const std::string& text,
                                                              const std::vector<std::string>& images,
                                                              const std::string& source) {
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        fail(source, ": not valid JSON: ", e.what());
    }
    check(doc.is_object() && doc.contains("labels"), source, ": expected an object with a \"labels\" entry");
    const nlohmann::json& entries = doc["labels"];
    if (entries.is_null()) return std::nullopt;
    check(entries.is_array(), source, ": \"labels\" must be null or an array of [path, class] pairs");

    std::map<std::string, int32_t> by_name;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const nlohmann::json& e = entries[i];
        check(e.is_array() && e.size() == 2 && e[0].is_string(), source, ": labels[", i,
              "] is not a [\"path\", class] pair");
        const std::string name = e[0].get<std::string>();
        check(e[1].is_number_integer(), source, ": the label of '", name, "' is not an integer class");
        const auto label = e[1].get<int64_t>();
        check(label >= 0, source, ": the label of '", name, "' is negative (", label, ")");
        check(label < max_classes, source, ": the label of '", name, "' is ", label, ", above the limit of ",
              max_classes, " classes");
        check(std::ranges::binary_search(images, name), source, ": labels '", name,
              "', which is not an image of the dataset");
        check(by_name.emplace(name, static_cast<int32_t>(label)).second, source, ": labels '", name, "' twice");
    }
    std::vector<int32_t> labels;
    labels.reserve(images.size());
    for (const std::string& name : images) {
        const auto it = by_name.find(name);
        check(it != by_name.end(), source, ": has no label for '", name, "' (", by_name.size(), " labels for ",
              images.size(), " images)");
        labels.push_back(it->second);
    }
    return labels;
}

}  // namespace mpnet::data
