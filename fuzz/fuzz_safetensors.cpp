// libFuzzer target: SafetensorsFile must reject any malformed input with mpnet::Error and
// never crash or read out of bounds (ASan/UBSan watch that). Accepted inputs must also read
// back through every conversion and survive a rewrite with SafetensorsWriter unchanged.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

#include "mpnet/io/safetensors.hpp"

namespace {

using mpnet::io::SafetensorsFile;

bool same_tensors(const SafetensorsFile& a, const SafetensorsFile& b) {
    if (a.tensors().size() != b.tensors().size() || a.metadata() != b.metadata()) return false;
    for (const auto& t : a.tensors()) {
        if (!b.contains(t.name)) return false;
        const auto& u = b.info(t.name);
        const auto x = a.raw(t.name);
        const auto y = b.raw(t.name);
        if (u.dtype != t.dtype || u.shape != t.shape || !std::equal(x.begin(), x.end(), y.begin(), y.end()))
            return false;
    }
    return true;
}

void exercise(const SafetensorsFile& file) {
    mpnet::io::SafetensorsWriter writer;
    for (const auto& t : file.tensors()) {
        static_cast<void>(file.read<double>(t.name));
        try {
            static_cast<void>(file.read<std::int32_t>(t.name));  // may legitimately not fit
        } catch (const mpnet::Error&) {
        }
        writer.add(t.name, t.dtype, t.shape, file.raw(t.name));
    }
    for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
    const auto rewritten = SafetensorsFile::from_bytes(writer.to_bytes(), "rewritten");
    if (!same_tensors(file, rewritten)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto* bytes = reinterpret_cast<const std::byte*>(data);
    std::optional<SafetensorsFile> file;
    try {
        file.emplace(SafetensorsFile::from_bytes({bytes, bytes + size}, "fuzz"));
    } catch (const mpnet::Error&) {
        return 0;  // a clean rejection, the usual outcome
    }
    exercise(*file);  // outside the try: an Error here is a bug and must reach libFuzzer
    return 0;
}
