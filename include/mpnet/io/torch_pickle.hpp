// PyTorch tensors and NumPy arrays inside a plain pickle (pickle.dump of modules, as the
// EDM2 code saves networks), read from the restricted pickle reader's object graph.
//
// A tensor pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...),
// a parameter as torch._utils._rebuild_parameter(tensor, ...), and a storage as
// torch.storage._load_from_bytes(b), where b is a whole file in torch.save's legacy format:
// five pickles in a row (magic number, protocol 1001, system info, the storage as a
// persistent id, the list of storage keys), then the storage's element count as int64 and its
// raw little-endian elements.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/io/half.hpp"
#include "mpnet/io/pickle.hpp"

namespace mpnet::io {

// A dense tensor converted to float32 (exact for float16, bfloat16 and float32 sources).
struct HostTensor {
    std::string dtype;  // the source's: F16, BF16, F32 or F64
    std::vector<int64_t> shape;
    std::vector<float> values;
};

namespace torch_pickle {

// The storage classes torch.save's legacy format names, with their safetensors dtype and size.
struct StorageType {
    std::string_view name, dtype;
    int64_t element_size;
};
inline constexpr StorageType storage_types[] = {
    {"HalfStorage", "F16", 2}, {"BFloat16Storage", "BF16", 2}, {"FloatStorage", "F32", 4}, {"DoubleStorage", "F64", 8}};

inline const StorageType* find_storage_type(std::string_view name) {
    for (const auto& t : storage_types)
        if (t.name == name) return &t;
    return nullptr;
}

struct Storage {
    const StorageType* type = nullptr;
    int64_t numel = 0;
    std::string_view bytes;  // numel * element_size bytes, little-endian
};

inline float element(const Storage& s, int64_t i) {
    const char* p = s.bytes.data() + i * s.type->element_size;
    if (s.type->dtype == "F16") {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return half_to_float(h);
    }
    if (s.type->dtype == "BF16") {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return std::bit_cast<float>(uint32_t(h) << 16);
    }
    if (s.type->dtype == "F32") {
        float f;
        std::memcpy(&f, p, 4);
        return f;
    }
    double d;
    std::memcpy(&d, p, 8);
    return float(d);
}

inline int64_t as_int(const PyObject* o, const std::string& label, const char* what) {
    check(o && o->is(PyObject::Kind::integer), label, ": ", what, " is not an integer");
    return o->integer;
}

inline std::vector<int64_t> int_tuple(const PyObject* o, const std::string& label, const char* what) {
    check(o && (o->is(PyObject::Kind::tuple) || o->is(PyObject::Kind::list)), label, ": ", what, " is not a tuple");
    std::vector<int64_t> v;
    for (const auto* i : o->items) v.push_back(as_int(i, label, what));
    return v;
}

// The storage in the bytes of torch.storage._load_from_bytes (torch.save's legacy format).
inline Storage legacy_storage(std::string_view file, const std::string& label) {
    using K = PyObject::Kind;
    PickleReader r(file, label + " (a tensor's storage)", [](std::string_view module, std::string_view name) {
        return module == "torch" && find_storage_type(name);
    });
    static constexpr unsigned char magic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    const auto* m = r.load();
    check(m->is(K::big_integer) && m->text == std::string_view(reinterpret_cast<const char*>(magic), sizeof magic),
          label, ": a tensor's storage is not in torch.save's legacy format (wrong magic number)");
    check(as_int(r.load(), label, "the storage's protocol version") == 1001, label,
          ": a tensor's storage has an unknown protocol version");
    const auto* info = r.load();
    const auto* little = info->has_entries() ? info->get("little_endian") : nullptr;
    check(little && little->is(K::boolean) && little->boolean, label, ": a tensor's storage is not little-endian");
    const auto* root = r.load();
    check(root->is(K::persistent) && root->args->is(K::tuple) && root->args->items.size() >= 5, label,
          ": a tensor's storage record is not ('storage', type, key, location, size, ...)");
    const auto& id = root->args->items;
    check(id[0]->is(K::string) && id[0]->text == "storage" && id[1]->is(K::global) && id[2]->is(K::string), label,
          ": a tensor's storage record is not ('storage', type, key, location, size, ...)");
    Storage s;
    s.type = find_storage_type(id[1]->name);
    s.numel = as_int(id[4], label, "a storage size");
    const auto* keys = r.load();
    check(keys->is(K::list) && keys->items.size() == 1 && keys->items[0]->is(K::string) &&
              keys->items[0]->text == id[2]->text,
          label, ": a tensor's storage holds other than one storage");
    const auto pos = r.position();
    check(file.size() - pos >= 8, label, ": a tensor's storage is truncated");
    int64_t count;
    std::memcpy(&count, file.data() + pos, 8);
    check(count == s.numel && count >= 0 && uint64_t(count) <= (file.size() - pos - 8) / uint64_t(s.type->element_size),
          label, ": a tensor's storage holds ", count, " elements in ", file.size() - pos - 8, " bytes, its record says ",
          s.numel);
    s.bytes = file.substr(pos + 8, std::size_t(count * s.type->element_size));
    return s;
}

// The tensor a _rebuild_tensor_v2 call makes: its strided view of the storage, made dense.
inline HostTensor tensor(const PyObject* o, const std::string& label) {
    using K = PyObject::Kind;
    check(o && o->is_call_of("torch._utils", "_rebuild_tensor_v2") && o->args->items.size() >= 4, label,
          ": expected a tensor, found ", o ? describe(*o) : "nothing");
    const auto& a = o->args->items;
    check(a[0]->is_call_of("torch.storage", "_load_from_bytes") && a[0]->args->items.size() == 1 &&
              a[0]->args->items[0]->is(K::bytes),
          label, ": a tensor's storage is ", describe(*a[0]), ", not torch.storage._load_from_bytes(bytes)");
    const Storage s = legacy_storage(a[0]->args->items[0]->text, label);
    const int64_t offset = as_int(a[1], label, "a tensor's offset");
    HostTensor t;
    t.dtype = std::string(s.type->dtype);
    t.shape = int_tuple(a[2], label, "a tensor's size");
    const auto stride = int_tuple(a[3], label, "a tensor's stride");
    check(stride.size() == t.shape.size(), label, ": a tensor's size and stride differ in length");
    int64_t numel = 1;
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
        check(t.shape[d] >= 0 && t.shape[d] < (int64_t(1) << 40) && stride[d] >= 0, label,
              ": a tensor has a negative size or stride");
        numel *= t.shape[d];
        check(numel < (int64_t(1) << 40), label, ": a tensor is too large");
    }
    // The last element the view touches, offset + sum (size - 1) stride, must lie inside the
    // storage; each term is bounded by what is left before it is added, so nothing overflows.
    check(offset >= 0 && (numel == 0 || offset < s.numel), label, ": a tensor's view reaches past its storage");
    int64_t last = offset;
    for (std::size_t d = 0; d < t.shape.size() && numel > 0; ++d) {
        const int64_t steps = t.shape[d] - 1;
        check(steps == 0 || stride[d] <= (s.numel - 1 - last) / steps, label,
              ": a tensor's view reaches past its storage");
        last += steps * stride[d];
    }
    t.values.resize(std::size_t(numel));
    std::vector<int64_t> index(t.shape.size(), 0);
    for (int64_t i = 0; i < numel; ++i) {
        int64_t at = offset;
        for (std::size_t d = 0; d < index.size(); ++d) at += index[d] * stride[d];
        t.values[std::size_t(i)] = element(s, at);
        for (std::size_t d = index.size(); d-- > 0;) {
            if (++index[d] < t.shape[d]) break;
            index[d] = 0;
        }
    }
    return t;
}

// A torch.nn.Parameter's data (or a plain tensor).
inline HostTensor parameter(const PyObject* o, const std::string& label) {
    if (o && (o->is_call_of("torch._utils", "_rebuild_parameter") ||
              o->is_call_of("torch._utils", "_rebuild_parameter_with_state"))) {
        check(!o->args->items.empty(), label, ": a parameter without data");
        return tensor(o->args->items[0], label);
    }
    return tensor(o, label);
}

// The float values of a NumPy float32/float64 array or scalar (numpy.core.multiarray
// _reconstruct + BUILD state, or scalar(dtype, bytes)).
inline std::vector<double> numpy_floats(const PyObject* o, const std::string& label) {
    using K = PyObject::Kind;
    auto is_numpy = [&](std::string_view name) {
        return o->is_call_of("numpy.core.multiarray", name) || o->is_call_of("numpy._core.multiarray", name);
    };
    auto dtype_of = [&](const PyObject* d) -> int {
        check(d && d->is_call_of("numpy", "dtype") && !d->args->items.empty() && d->args->items[0]->is(K::string),
              label, ": a NumPy array without a dtype");
        const auto code = d->args->items[0]->text;
        check(code == "f4" || code == "f8", label, ": NumPy dtype '", code, "' is not float32 or float64");
        // The byte order is in the dtype's state: (version, '<' or '=' or '|', ...).
        if (d->state && d->state->is(K::tuple) && d->state->items.size() > 1 && d->state->items[1]->is(K::string))
            check(d->state->items[1]->text != ">", label, ": big-endian NumPy data");
        return code == "f4" ? 4 : 8;
    };
    auto decode = [&](std::string_view bytes, int size) {
        std::vector<double> v(bytes.size() / std::size_t(size));
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (size == 4) {
                float f;
                std::memcpy(&f, bytes.data() + i * 4, 4);
                v[i] = f;
            } else {
                std::memcpy(&v[i], bytes.data() + i * 8, 8);
            }
        }
        return v;
    };
    check(o != nullptr, label, ": a NumPy value is missing");
    if (o->is(K::real)) return {o->real};
    if (o->is(K::integer)) return {double(o->integer)};
    if (o->is(K::call) && is_numpy("scalar")) {
        check(o->args->items.size() == 2 && o->args->items[1]->is(K::bytes), label, ": malformed NumPy scalar");
        const int size = dtype_of(o->args->items[0]);
        check(o->args->items[1]->text.size() == std::size_t(size), label, ": malformed NumPy scalar");
        return decode(o->args->items[1]->text, size);
    }
    check(o->is(K::call) && is_numpy("_reconstruct") && o->state && o->state->is(K::tuple) &&
              o->state->items.size() == 5 && o->state->items[4]->is(K::bytes),
          label, ": expected a NumPy array, found ", describe(*o));
    const auto& st = o->state->items;
    const auto shape = int_tuple(st[1], label, "a NumPy shape");
    const int size = dtype_of(st[2]);
    int64_t numel = 1;
    for (auto d : shape) {
        check(d >= 0 && d <= int64_t(st[4]->text.size()), label, ": a NumPy array's shape does not match its data");
        numel *= d;
        check(numel <= int64_t(st[4]->text.size()), label, ": a NumPy array's shape does not match its data");
    }
    check(int64_t(st[4]->text.size()) == numel * size, label, ": a NumPy array's data does not match its shape");
    return decode(st[4]->text, size);
}

}  // namespace torch_pickle
}  // namespace mpnet::io
