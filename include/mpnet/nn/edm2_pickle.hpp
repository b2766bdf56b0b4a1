// The authors' network pickles (NVlabs/edm2: training snapshots network-snapshot-*.pkl,
// reconstruct_phema.py outputs and the released edm2-img512-*.pkl files), read without
// running any of the code they carry.
//
// Such a pickle holds a dict (dnnlib.EasyDict) with `ema`, the network, and `encoder`. Their
// classes are "persistent" (torch_utils/persistence.py): each pickles as
// _reconstruct_persistent_obj({type, version, module_src, class_name, state}), the source code
// of its module plus the object's __dict__. We read the state and never the source: a module's
// `_parameters`, `_buffers` and `_modules` give the state_dict, and Precond's `_init_kwargs`
// (the arguments it was built with) give the configuration.
#pragma once
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpnet/core/error.hpp"
#include "mpnet/io/pickle.hpp"
#include "mpnet/io/safetensors.hpp"
#include "mpnet/io/torch_pickle.hpp"
#include "mpnet/nn/config.hpp"
#include "mpnet/nn/weights.hpp"

namespace mpnet::nn {

// How the network's inputs relate to pixels: training/encoders.py.
struct Edm2Encoder {
    std::string class_name;            // StabilityVAEEncoder or StandardRGBEncoder
    std::string vae_name;              // StabilityVAEEncoder: the VAE it was trained with
    std::vector<double> scale, bias;   // StabilityVAEEncoder: final = raw * scale + bias, per channel
};

struct Edm2Pickle {
    nlohmann::json init_kwargs;  // Precond's constructor arguments, as pickled
    NetworkConfig config;
    std::vector<std::pair<std::string, io::HostTensor>> state;  // state_dict order
    std::optional<Edm2Encoder> encoder;
};

namespace edm2_pickle {

using io::PyObject;
using K = PyObject::Kind;

// The globals such a pickle names. Classes and functions are only ever recognised by name
// here, never called, so accepting one runs nothing; anything else is refused.
inline bool allowed_global(std::string_view module, std::string_view name) {
    static const std::pair<std::string_view, std::string_view> known[] = {
        {"collections", "OrderedDict"},
        {"dnnlib.util", "EasyDict"},
        {"torch_utils.persistence", "_reconstruct_persistent_obj"},
        {"torch._utils", "_rebuild_tensor_v2"},
        {"torch._utils", "_rebuild_parameter"},
        {"torch._utils", "_rebuild_parameter_with_state"},
        {"torch.storage", "_load_from_bytes"},
        {"torch.nn.modules.container", "ModuleDict"},
        {"torch.nn.modules.container", "ModuleList"},
        {"numpy", "dtype"},
        {"numpy", "ndarray"},
        {"numpy.core.multiarray", "_reconstruct"},
        {"numpy.core.multiarray", "scalar"},
        {"numpy._core.multiarray", "_reconstruct"},
        {"numpy._core.multiarray", "scalar"},
    };
    for (const auto& [m, n] : known)
        if (m == module && n == name) return true;
    return false;
}

// Nesting of modules in EDM2 networks is 4 deep; anything near this bound is not one.
inline constexpr int max_depth = 32;

// Python data (None, bool, numbers, strings, lists, tuples, dicts) as JSON.
inline nlohmann::json to_json(const PyObject* o, const std::string& label, int depth = 0) {
    check(depth < max_depth, label, ": configuration nested too deeply");
    switch (o->kind) {
        case K::none: return nullptr;
        case K::boolean: return o->boolean;
        case K::integer: return o->integer;
        case K::real: return o->real;
        case K::string: return std::string(o->text);
        case K::list: case K::tuple: {
            auto a = nlohmann::json::array();
            for (const auto* i : o->items) a.push_back(to_json(i, label, depth + 1));
            return a;
        }
        default: break;
    }
    if (o->has_entries()) {
        auto j = nlohmann::json::object();
        for (const auto& [k, v] : o->entries) {
            check(k->is(K::string), label, ": a configuration key is not a string");
            j[std::string(k->text)] = to_json(v, label, depth + 1);
        }
        return j;
    }
    fail(label, ": the configuration holds a ", describe(*o), ", which is not plain data");
}

// The meta dict of a persistent object, checked: {type: 'class', version: 6, class_name, state}.
inline const PyObject* persistent_meta(const PyObject* o, const std::string& label, const std::string& where) {
    check(o && o->is_call_of("torch_utils.persistence", "_reconstruct_persistent_obj") &&
              o->args->items.size() == 1 && o->args->items[0]->has_entries(),
          label, ": ", where, " is ", o ? describe(*o) : "missing", ", not a persistent object of the EDM2 code");
    const auto* meta = o->args->items[0];
    const auto* type = meta->get("type");
    const auto* version = meta->get("version");
    check(type && type->is(K::string) && type->text == "class", label, ": ", where, ": not a persistent class");
    check(version && version->is(K::integer) && version->integer == 6, label, ": ", where,
          ": persistence format version is not 6");
    const auto* cls = meta->get("class_name");
    const auto* state = meta->get("state");
    check(cls && cls->is(K::string) && state && state->has_entries(), label, ": ", where,
          ": persistent object without class_name or state");
    return meta;
}

inline std::string class_name(const PyObject* meta) { return std::string(meta->get("class_name")->text); }

// The __dict__ of a module: a persistent one's pickled state, or a torch container's BUILD state.
inline const PyObject* module_state(const PyObject* o, const std::string& label, const std::string& where) {
    if (o && (o->is_call_of("torch.nn.modules.container", "ModuleDict") ||
              o->is_call_of("torch.nn.modules.container", "ModuleList"))) {
        check(o->state && o->state->has_entries(), label, ": ", where, ": container without state");
        return o->state;
    }
    return persistent_meta(o, label, where)->get("state");
}

inline bool in_set(const PyObject* set, std::string_view name) {
    if (!set) return false;
    for (const auto* i : set->items)
        if (i->is(K::string) && i->text == name) return true;
    return false;
}

// Appends the module's state_dict entries (parameters, persistent buffers, then submodules,
// as torch orders them) under `prefix`.
inline void collect_state(const PyObject* module, const std::string& prefix, const std::string& label,
                          std::vector<std::pair<std::string, io::HostTensor>>& out, int depth = 0) {
    check(depth < max_depth, label, ": modules nested too deeply");
    const std::string where = prefix.empty() ? "the network" : "module '" + prefix.substr(0, prefix.size() - 1) + "'";
    const auto* state = module_state(module, label, where);
    auto dict = [&](const char* key) {
        const auto* d = state->get(key);
        check(d && d->has_entries(), label, ": ", where, " has no ", key);
        return d;
    };
    const auto* non_persistent = state->get("_non_persistent_buffers_set");
    for (const char* key : {"_parameters", "_buffers"})
        for (const auto& [k, v] : dict(key)->entries) {
            check(k->is(K::string), label, ": ", where, ": a ", key, " key is not a string");
            if (v->is(K::none) || (std::string_view(key) == "_buffers" && in_set(non_persistent, k->text))) continue;
            const std::string name = prefix + std::string(k->text);
            out.emplace_back(name, io::torch_pickle::parameter(v, label + ": tensor '" + name + "'"));
        }
    for (const auto& [k, v] : dict("_modules")->entries) {
        check(k->is(K::string), label, ": ", where, ": a module name is not a string");
        if (!v->is(K::none)) collect_state(v, prefix + std::string(k->text) + ".", label, out, depth + 1);
    }
}

// Precond(img_resolution, img_channels, label_dim, use_fp16, sigma_data, logvar_channels,
// **unet_kwargs): its positional arguments named, merged with its keyword arguments.
inline nlohmann::json init_kwargs(const PyObject* state, const std::string& label) {
    const auto* args = state->get("_init_args");
    const auto* kwargs = state->get("_init_kwargs");
    check(kwargs && kwargs->has_entries() && args && args->is(K::tuple), label,
          ": the network does not record the arguments it was built with (_init_args, _init_kwargs)");
    auto j = to_json(kwargs, label);
    static const char* positional[] = {"img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data",
                                       "logvar_channels"};
    check(args->items.size() <= std::size(positional), label, ": Precond was built with ", args->items.size(),
          " positional arguments");
    for (std::size_t i = 0; i < args->items.size(); ++i) {
        check(!j.contains(positional[i]), label, ": Precond argument ", positional[i], " given twice");
        j[positional[i]] = to_json(args->items[i], label);
    }
    return j;
}

inline Edm2Encoder encoder(const PyObject* o, const std::string& label) {
    const auto* meta = persistent_meta(o, label, "the encoder");
    Edm2Encoder e;
    e.class_name = class_name(meta);
    if (e.class_name == "StandardRGBEncoder") return e;
    check(e.class_name == "StabilityVAEEncoder", label, ": unknown encoder class '", e.class_name, "'");
    const auto* state = meta->get("state");
    const auto* vae = state->get("vae_name");
    check(vae && vae->is(K::string), label, ": the encoder names no VAE");
    e.vae_name = std::string(vae->text);
    e.scale = io::torch_pickle::numpy_floats(state->get("scale"), label + ": encoder scale");
    e.bias = io::torch_pickle::numpy_floats(state->get("bias"), label + ": encoder bias");
    // A scalar broadcasts over the channels, as NumPy does.
    if (e.scale.size() == 1 && e.bias.size() > 1) e.scale.resize(e.bias.size(), e.scale[0]);
    if (e.bias.size() == 1 && e.scale.size() > 1) e.bias.resize(e.scale.size(), e.bias[0]);
    check(e.scale.size() == e.bias.size(), label, ": encoder scale and bias differ in length");
    return e;
}

}  // namespace edm2_pickle

// Reads a pickle's bytes. `label` names it in errors.
inline Edm2Pickle read_edm2_pickle(std::string_view bytes, const std::string& label) {
    using namespace edm2_pickle;
    io::PickleReader reader(bytes, label, allowed_global);
    const auto* root = reader.load();
    check(root->has_entries(), label, ": not an EDM2 network pickle (the top level is ", describe(*root),
          ", not a dict)");
    const auto* ema = root->get("ema");
    check(ema != nullptr, label, ": not an EDM2 network pickle (no 'ema' entry)");
    const auto* meta = persistent_meta(ema, label, "'ema'");
    check(class_name(meta) == "Precond", label, ": 'ema' is a ", class_name(meta), ", not an EDM2 Precond");

    Edm2Pickle p;
    p.init_kwargs = init_kwargs(meta->get("state"), label);
    try {
        p.config = config_from_json(p.init_kwargs.dump());
    } catch (const Error& e) {
        fail(label, ": ", e.what());
    }
    collect_state(ema, "", label, p.state);
    if (const auto* enc = root->get("encoder"); enc && !enc->is(K::none)) p.encoder = encoder(enc, label);
    return p;
}

// The encoder as weights-file metadata: {"class", and for latent models "vae_name", "scale",
// "bias"}.
inline nlohmann::json to_json(const Edm2Encoder& e) {
    nlohmann::json j{{"class", e.class_name}};
    if (e.class_name == "StabilityVAEEncoder") {
        j["vae_name"] = e.vae_name;
        j["scale"] = e.scale;
        j["bias"] = e.bias;
    }
    return j;
}

// The network of a pickle, holding its tensors. They are counted against the configuration
// before the network is allocated, so that a hostile configuration cannot decide the memory
// taken; each must be there with its shape, and nothing else. The pickle's copies are freed
// as they are loaded.
template <Scalar T, Backend B, Element A = T>
Precond<T, B, A> network_from(Edm2Pickle& p, const std::string& label) {
    int64_t stored = 0;
    for (const auto& [name, t] : p.state) stored += int64_t(t.values.size());
    check(stored == state_numel(p.config), label, ": its configuration describes ", state_numel(p.config),
          " values, the pickle holds ", stored);
    std::map<std::string, io::HostTensor*> by_name;
    for (auto& [name, t] : p.state) check(by_name.emplace(name, &t).second, label, ": tensor '", name, "' appears twice");
    Precond<T, B, A> net(p.config, 0, Precond<T, B, A>::Gradients::none);
    std::set<std::string> used;
    for_each_state_tensor(net, [&](const std::string& name, Tensor<T, B>& t) {
        const auto it = by_name.find(name);
        check(it != by_name.end(), label, ": the pickle has no tensor '", name, "'");
        auto& src = *it->second;
        const Shape shape = src.shape.empty() ? Shape{} : Shape(std::span<const int64_t>(src.shape));
        check(shape == t.shape(), label, ": tensor '", name, "' has shape ", shape, ", the configuration gives ",
              t.shape());
        if constexpr (std::is_same_v<T, float>) {
            B::copy_from_host(t.data(), src.values.data(), t.bytes());
        } else {
            const std::vector<T> values(src.values.begin(), src.values.end());
            B::copy_from_host(t.data(), values.data(), t.bytes());
        }
        std::vector<float>().swap(src.values);
        used.insert(name);
    });
    for (const auto& [name, t] : by_name)
        check(used.count(name), label, ": tensor '", name, "' is not part of an EDM2 network");
    return net;
}

inline Edm2Pickle read_edm2_pickle(const std::filesystem::path& path) {
    const io::detail::MappedFile file(path);
    const auto bytes = file.bytes();
    return read_edm2_pickle(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path.string());
}

}  // namespace mpnet::nn
