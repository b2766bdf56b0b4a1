// Reading and writing the safetensors format (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (padded with spaces),
// then the raw little-endian, row-major tensor bytes. The JSON maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section) and
// may hold "__metadata__", an object of string values.
//
// Files are untrusted input: every inconsistency is reported as an mpnet::Error whose message
// starts with the file's path (or label) and names the fault; nothing is read out of bounds.
// As in the reference implementation, the tensors' byte ranges must tile the data section
// exactly: no unused bytes before, between or after them, and no overlaps. Anything else means
// the header does not describe the file (a truncated header, two files concatenated, or bytes
// no tensor accounts for).
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/io/atomic_file.hpp"
#include "mpnet/io/half.hpp"

namespace mpnet::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts would need byte swapping");

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline constexpr DType all_dtypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                                       DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};

constexpr std::string_view dtype_name(DType d) {
    switch (d) {
        case DType::F64: return "F64";
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::I16: return "I16";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::BOOL: return "BOOL";
    }
    return "?";
}

constexpr std::size_t dtype_size(DType d) {
    switch (d) {
        case DType::F64:
        case DType::I64: return 8;
        case DType::F32:
        case DType::I32: return 4;
        case DType::F16:
        case DType::BF16:
        case DType::I16: return 2;
        case DType::I8:
        case DType::U8:
        case DType::BOOL: return 1;
    }
    return 0;
}

constexpr bool dtype_is_float(DType d) {
    return d == DType::F64 || d == DType::F32 || d == DType::F16 || d == DType::BF16;
}

// nullopt for names this library does not support (including valid safetensors ones like U16).
constexpr std::optional<DType> parse_dtype(std::string_view name) {
    for (const DType d : all_dtypes)
        if (dtype_name(d) == name) return d;
    return std::nullopt;
}

// The dtype that stores a C++ type unchanged, where there is one.
template <class T> inline constexpr std::optional<DType> dtype_of = std::nullopt;
template <> inline constexpr std::optional<DType> dtype_of<double> = DType::F64;
template <> inline constexpr std::optional<DType> dtype_of<float> = DType::F32;
template <> inline constexpr std::optional<DType> dtype_of<std::int64_t> = DType::I64;
template <> inline constexpr std::optional<DType> dtype_of<std::int32_t> = DType::I32;
template <> inline constexpr std::optional<DType> dtype_of<std::int16_t> = DType::I16;
template <> inline constexpr std::optional<DType> dtype_of<std::int8_t> = DType::I8;
template <> inline constexpr std::optional<DType> dtype_of<std::uint8_t> = DType::U8;
template <> inline constexpr std::optional<DType> dtype_of<bool> = DType::BOOL;

// Element types read() can produce: any arithmetic type but bool.
template <class T>
concept Numeric = std::is_arithmetic_v<T> && !std::same_as<T, bool>;

// Files we write and files we accept share this bound (it is also the reference
// implementation's); it stops a hostile length from driving a huge parse.
inline constexpr std::size_t max_header_bytes = 100'000'000;

struct TensorInfo {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::size_t begin, end;  // byte range within the data section

    [[nodiscard]] std::size_t numel() const {
        std::size_t n = 1;
        for (const std::int64_t d : shape) n *= static_cast<std::size_t>(d);
        return n;
    }
    [[nodiscard]] std::size_t nbytes() const { return end - begin; }
};

namespace detail {

// Names come from untrusted files and may be huge; messages quote at most a prefix.
inline std::string quote_name(std::string_view s) {
    constexpr std::size_t max_chars = 120;
    if (s.size() <= max_chars) return "'" + std::string(s) + "'";
    return "'" + std::string(s.substr(0, max_chars)) + "...'";
}

inline std::string shape_string(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
    return s + "]";
}

// numel * element_size, or nullopt if a dimension is negative or the product overflows.
// A zero dimension makes the tensor empty whatever the other dimensions are.
inline std::optional<std::size_t> byte_count(std::span<const std::int64_t> shape,
                                             std::size_t element_size) {
    if (std::ranges::any_of(shape, [](std::int64_t d) { return d < 0; })) return std::nullopt;
    if (std::ranges::find(shape, 0) != shape.end()) return 0;
    std::size_t n = element_size;
    for (const std::int64_t d : shape) {
        const auto ud = static_cast<std::size_t>(d);
        if (n > std::numeric_limits<std::size_t>::max() / ud) return std::nullopt;
        n *= ud;
    }
    return n;
}

// Read-only private mapping of a whole file; unmapped on destruction. Move-only.
class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::filesystem::path& path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
        try {
            map(fd, path);
        } catch (...) {
            ::close(fd);
            throw;
        }
        ::close(fd);  // the mapping keeps the file alive
    }
    MappedFile(MappedFile&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    MappedFile& operator=(MappedFile&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        return *this;
    }
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile() {
        if (data_ != nullptr) ::munmap(data_, size_);
    }

    [[nodiscard]] std::span<const std::byte> bytes() const {
        return {static_cast<const std::byte*>(data_), size_};
    }

private:
    void map(int fd, const std::filesystem::path& path) {
        struct stat st {};
        if (::fstat(fd, &st) != 0) fail(path.string(), ": cannot stat: ", std::strerror(errno));
        if (!S_ISREG(st.st_mode)) fail(path.string(), ": not a regular file");
        if (st.st_size == 0) return;  // mmap rejects empty ranges; the parser reports "too short"
        void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) fail(path.string(), ": cannot mmap: ", std::strerror(errno));
        data_ = p;
        size_ = static_cast<std::size_t>(st.st_size);
    }

    void* data_ = nullptr;
    std::size_t size_ = 0;
};

// Turns the untrusted header into validated TensorInfos and metadata.
class HeaderParser {
public:
    HeaderParser(const std::string& label, std::size_t data_size) : label_(label), data_size_(data_size) {}

    void parse(std::string_view json_text, std::vector<TensorInfo>& tensors,
               std::map<std::string, std::string>& metadata) const {
        const nlohmann::json header = parse_json(json_text);
        if (!header.is_object()) fault("header is not a JSON object");
        for (const auto& [key, value] : header.items()) {
            if (key == "__metadata__")
                metadata = parse_metadata(value);
            else
                tensors.push_back(parse_entry(key, value));
        }
        check_layout(tensors);
    }

private:
    // Legitimate headers nest three levels deep; the bound keeps hostile nesting cheap.
    static constexpr int max_depth = 16;

    template <class... Parts>
    [[noreturn]] void fault(Parts&&... parts) const {
        fail(label_, ": ", std::forward<Parts>(parts)...);
    }

    // nlohmann keeps the last of duplicate keys silently; the callback sees every key, so a
    // stack of per-object key sets catches duplicates at any level.
    nlohmann::json parse_json(std::string_view text) const {
        std::vector<std::set<std::string, std::less<>>> open_objects;
        auto watch = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
            using Event = nlohmann::json::parse_event_t;
            if ((event == Event::object_start || event == Event::array_start) && depth >= max_depth)
                fault("header JSON is nested deeper than ", max_depth, " levels");
            if (event == Event::object_start) open_objects.emplace_back();
            if (event == Event::object_end) open_objects.pop_back();
            if (event == Event::key) {
                const auto& key = parsed.get_ref<const std::string&>();
                if (!open_objects.back().insert(key).second)
                    fault("duplicate key ", quote_name(key), " in the header");
            }
            return true;
        };
        // nlohmann stops at a NUL as if the input ended there, which would hide what follows.
        if (text.find('\0') != std::string_view::npos) fault("header is not valid JSON: it contains a NUL byte");
        try {
            return nlohmann::json::parse(text.begin(), text.end(), watch);
        } catch (const nlohmann::json::exception& e) {
            fault("header is not valid JSON: ", e.what());
        }
    }

    std::map<std::string, std::string> parse_metadata(const nlohmann::json& value) const {
        const bool all_strings = value.is_object() &&
            std::all_of(value.begin(), value.end(), [](const nlohmann::json& v) { return v.is_string(); });
        if (!all_strings) fault("'__metadata__' must be an object of strings");
        std::map<std::string, std::string> metadata;
        for (const auto& [key, v] : value.items()) metadata.emplace(key, v.get<std::string>());
        return metadata;
    }

    TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const {
        if (!entry.is_object()) fault("tensor ", quote_name(name), ": entry is not an object");
        TensorInfo info{name, parse_entry_dtype(name, entry), parse_entry_shape(name, entry), 0, 0};
        std::tie(info.begin, info.end) = parse_entry_offsets(name, entry);
        const std::optional<std::size_t> needed = byte_count(info.shape, dtype_size(info.dtype));
        if (!needed)
            fault("tensor ", quote_name(name), ": shape ", shape_string(info.shape), " overflows the byte count");
        if (*needed != info.nbytes())
            fault("tensor ", quote_name(name), ": data_offsets span ", info.nbytes(), " bytes, but dtype ",
                  dtype_name(info.dtype), " with shape ", shape_string(info.shape), " needs ", *needed);
        return info;
    }

    const nlohmann::json& field(const std::string& name, const nlohmann::json& entry,
                                const char* key) const {
        const auto it = entry.find(key);
        if (it == entry.end()) fault("tensor ", quote_name(name), ": missing '", key, "'");
        return *it;
    }

    DType parse_entry_dtype(const std::string& name, const nlohmann::json& entry) const {
        const nlohmann::json& value = field(name, entry, "dtype");
        if (!value.is_string()) fault("tensor ", quote_name(name), ": 'dtype' must be a string");
        const auto& text = value.get_ref<const std::string&>();
        const std::optional<DType> dtype = parse_dtype(text);
        if (!dtype) fault("tensor ", quote_name(name), ": unknown dtype ", quote_name(text));
        return *dtype;
    }

    std::vector<std::int64_t> parse_entry_shape(const std::string& name, const nlohmann::json& entry) const {
        const nlohmann::json& value = field(name, entry, "shape");
        if (!value.is_array()) fault("tensor ", quote_name(name), ": 'shape' must be an array");
        std::vector<std::int64_t> shape;
        for (const nlohmann::json& d : value) {
            // Non-negative JSON integers parse as unsigned; negative ones as signed.
            const bool ok = d.is_number_unsigned() &&
                            d.get<std::uint64_t>() <= std::numeric_limits<std::int64_t>::max();
            if (!ok)
                fault("tensor ", quote_name(name), ": shape dimension ", quote_name(d.dump()),
                      " is not a non-negative 64-bit integer");
            shape.push_back(d.get<std::int64_t>());
        }
        return shape;
    }

    std::pair<std::size_t, std::size_t> parse_entry_offsets(const std::string& name,
                                                            const nlohmann::json& entry) const {
        const nlohmann::json& value = field(name, entry, "data_offsets");
        const bool ok = value.is_array() && value.size() == 2 && value[0].is_number_unsigned() &&
                        value[1].is_number_unsigned() &&
                        value[0].get<std::uint64_t>() <= value[1].get<std::uint64_t>();
        if (!ok)
            fault("tensor ", quote_name(name), ": 'data_offsets' must be two non-decreasing non-negative "
                  "integers");
        const auto begin = value[0].get<std::uint64_t>();
        const auto end = value[1].get<std::uint64_t>();
        if (end > data_size_)
            fault("tensor ", quote_name(name), ": data_offsets [", begin, ", ", end, "] reach beyond the ",
                  data_size_, "-byte data section");
        return {static_cast<std::size_t>(begin), static_cast<std::size_t>(end)};
    }

    // Sorts by offset, then requires each tensor to begin exactly where the previous one ends
    // (the first at 0) and the last to end with the data section.
    void check_layout(std::vector<TensorInfo>& tensors) const {
        // Stable, so tensors sharing an offset (empty ones) keep the header's order.
        std::ranges::stable_sort(tensors, {}, [](const TensorInfo& t) { return std::pair(t.begin, t.end); });
        const TensorInfo* previous = nullptr;
        for (const TensorInfo& t : tensors) {
            check_follows(previous, t);
            previous = &t;
        }
        const std::size_t used = tensors.empty() ? 0 : tensors.back().end;
        if (used != data_size_)
            fault(data_size_ - used, " trailing bytes after the last tensor (data section is ",
                  data_size_, " bytes)");
    }

    // t must begin where previous ends, or at 0 when it is the first tensor.
    void check_follows(const TensorInfo* previous, const TensorInfo& t) const {
        const std::size_t expected = previous ? previous->end : 0;
        if (t.begin == expected) return;
        if (!previous)
            fault("tensor ", quote_name(t.name), " begins at byte ", t.begin, ": ", t.begin,
                  " unused bytes at the start of the data section");
        if (t.begin > expected)
            fault("tensor ", quote_name(t.name), " begins at byte ", t.begin, ", but ", quote_name(previous->name),
                  " ends at ", expected, ": ", t.begin - expected, " unused bytes between them");
        fault("tensors ", quote_name(previous->name), " [", previous->begin, ", ", previous->end, ") and ",
              quote_name(t.name), " [", t.begin, ", ", t.end, ") overlap");
    }

    const std::string& label_;
    std::size_t data_size_;
};

template <class S>
S load(const std::byte* p) {
    S s;
    std::memcpy(&s, p, sizeof(S));  // data offsets need not be aligned
    return s;
}

// Whether v converts to T without loss. Floating-point targets take anything (rounding as
// usual); integer targets only exact, in-range values.
template <class T>
bool fits(double v) {
    if constexpr (std::is_floating_point_v<T>) {
        return true;
    } else {
        const double limit = std::ldexp(1.0, std::numeric_limits<T>::digits);  // exact power of two
        const double low = std::is_signed_v<T> ? -limit : 0.0;
        return v == std::trunc(v) && v >= low && v < limit;  // false for NaN and inf too
    }
}

template <class T>
bool fits(std::int64_t v) {
    if constexpr (std::is_floating_point_v<T>) {
        return true;
    } else if constexpr (std::is_signed_v<T>) {
        return v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max();
    } else {
        return v >= 0 && static_cast<std::uint64_t>(v) <= std::numeric_limits<T>::max();
    }
}

// Converts element by element; returns the index of the first value T cannot hold, or
// out.size() when all fit. element(i) widens stored element i to double or int64.
template <class T, class Element>
std::size_t convert_each(std::span<T> out, Element element) {
    for (std::size_t i = 0; i < out.size(); ++i) {
        const auto v = element(i);
        if (!fits<T>(v)) return i;
        out[i] = static_cast<T>(v);
    }
    return out.size();
}

template <class T>
std::size_t convert(DType dtype, const std::byte* p, std::span<T> out) {
    switch (dtype) {
        case DType::F64: return convert_each(out, [p](std::size_t i) { return load<double>(p + 8 * i); });
        case DType::F32:
            return convert_each(out, [p](std::size_t i) { return double{load<float>(p + 4 * i)}; });
        case DType::F16:
            return convert_each(out, [p](std::size_t i) {
                return double{half_to_float(load<std::uint16_t>(p + 2 * i))};
            });
        case DType::BF16:
            return convert_each(out, [p](std::size_t i) {
                return double{bf16_to_float(load<std::uint16_t>(p + 2 * i))};
            });
        case DType::I64: return convert_each(out, [p](std::size_t i) { return load<std::int64_t>(p + 8 * i); });
        case DType::I32:
            return convert_each(out, [p](std::size_t i) { return std::int64_t{load<std::int32_t>(p + 4 * i)}; });
        case DType::I16:
            return convert_each(out, [p](std::size_t i) { return std::int64_t{load<std::int16_t>(p + 2 * i)}; });
        case DType::I8:
            return convert_each(out, [p](std::size_t i) { return std::int64_t{load<std::int8_t>(p + i)}; });
        case DType::U8:
            return convert_each(out, [p](std::size_t i) { return std::int64_t{load<std::uint8_t>(p + i)}; });
        case DType::BOOL:  // any non-zero byte is true, as numpy reads it
            return convert_each(out, [p](std::size_t i) { return std::int64_t{p[i] != std::byte{0}}; });
    }
    return 0;
}

template <class T>
std::string type_description() {
    if constexpr (std::is_floating_point_v<T>)
        return std::to_string(8 * sizeof(T)) + "-bit floating-point";
    else
        return std::string(std::is_signed_v<T> ? "signed " : "unsigned ") + std::to_string(8 * sizeof(T)) +
               "-bit integer";
}

}  // namespace detail

// A parsed, validated safetensors file: memory-mapped (open) or in memory (from_bytes).
// Move-only; the views from raw() live as long as the object.
class SafetensorsFile {
public:
    static SafetensorsFile open(const std::filesystem::path& path) {
        SafetensorsFile file(path.string());
        file.mapping_ = detail::MappedFile(path);
        file.parse(file.mapping_.bytes());
        return file;
    }

    // label stands in for the path in error messages.
    static SafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string label) {
        SafetensorsFile file(std::move(label));
        file.owned_ = std::move(bytes);
        file.parse(file.owned_);
        return file;
    }

    // Ordered by data offset.
    [[nodiscard]] const std::vector<TensorInfo>& tensors() const { return tensors_; }
    [[nodiscard]] bool contains(std::string_view name) const { return index_.contains(name); }

    [[nodiscard]] const TensorInfo& info(std::string_view name) const {
        const auto it = index_.find(name);
        if (it == index_.end()) fail(label_, ": no tensor named ", detail::quote_name(name));
        return tensors_[it->second];
    }

    [[nodiscard]] std::span<const std::byte> raw(std::string_view name) const {
        const TensorInfo& t = info(name);
        return data_.subspan(t.begin, t.nbytes());
    }

    // Throws unless the tensor has exactly this shape (for loading into preallocated buffers).
    void check_shape(std::string_view name, std::span<const std::int64_t> expected) const {
        const TensorInfo& t = info(name);
        if (!std::ranges::equal(t.shape, expected))
            fail(label_, ": tensor ", detail::quote_name(name), " has shape ", detail::shape_string(t.shape),
                 ", expected ", detail::shape_string(expected));
    }

    // Converts from the stored dtype: to floating-point T with rounding, to integer T only
    // when every value is exactly representable (else Error naming the element).
    template <Numeric T>
    void read_into(std::string_view name, std::span<T> out) const {
        const TensorInfo& t = info(name);
        if (out.size() != t.numel())
            fail(label_, ": tensor ", detail::quote_name(name), " has shape ", detail::shape_string(t.shape),
                 " (", t.numel(), " elements), but the destination has ", out.size(), " elements");
        const std::byte* p = data_.data() + t.begin;
        if (dtype_of<T> == t.dtype) {
            if (!out.empty()) std::memcpy(out.data(), p, t.nbytes());
            return;
        }
        const std::size_t bad = detail::convert(t.dtype, p, out);
        if (bad != out.size())
            fail(label_, ": tensor ", detail::quote_name(name), " (", dtype_name(t.dtype), "): element ", bad,
                 " is not representable as a ", detail::type_description<T>(), " value");
    }

    template <Numeric T>
    [[nodiscard]] std::vector<T> read(std::string_view name) const {
        std::vector<T> out(info(name).numel());
        read_into(name, std::span<T>(out));
        return out;
    }

    [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }

    [[nodiscard]] std::string metadata_or(std::string_view key, std::string fallback) const {
        const auto it = metadata_.find(std::string(key));
        return it == metadata_.end() ? std::move(fallback) : it->second;
    }

    [[nodiscard]] const std::string& label() const { return label_; }

private:
    explicit SafetensorsFile(std::string label) : label_(std::move(label)) {}

    void parse(std::span<const std::byte> bytes) {
        if (bytes.size() < 8)
            fail(label_, ": file too short (", bytes.size(), " bytes) to hold the 8-byte header length");
        std::uint64_t header_size = 0;
        for (std::size_t i = 8; i-- > 0;) header_size = (header_size << 8) | std::to_integer<std::uint64_t>(bytes[i]);
        if (header_size > max_header_bytes)
            fail(label_, ": header length ", header_size, " exceeds the limit of ", max_header_bytes, " bytes");
        if (header_size > bytes.size() - 8)
            fail(label_, ": header length ", header_size, " exceeds the ", bytes.size() - 8,
                 " bytes that follow it");
        const std::string_view json(reinterpret_cast<const char*>(bytes.data() + 8), header_size);
        data_ = bytes.subspan(8 + header_size);
        detail::HeaderParser(label_, data_.size()).parse(json, tensors_, metadata_);
        for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    }

    std::string label_;
    detail::MappedFile mapping_;
    std::vector<std::byte> owned_;
    std::span<const std::byte> data_;  // into mapping_ or owned_; both keep their buffer on move
    std::vector<TensorInfo> tensors_;
    std::map<std::string, std::size_t, std::less<>> index_;
    std::map<std::string, std::string> metadata_;
};

// Collects tensors (copied once, in insertion order) and metadata; writes them atomically.
class SafetensorsWriter {
public:
    void add(std::string name, DType dtype, std::vector<std::int64_t> shape, std::span<const std::byte> bytes) {
        Entry& e = insert(std::move(name), dtype, std::move(shape), bytes.size());
        if (!bytes.empty()) std::memcpy(e.bytes.data(), bytes.data(), bytes.size());
    }

    // The dtype follows T; call as add<float>(name, shape, vec) to pass a container.
    template <class T>
        requires(dtype_of<T>.has_value())
    void add(std::string name, std::vector<std::int64_t> shape, std::span<const T> data) {
        add(std::move(name), *dtype_of<T>, std::move(shape), std::as_bytes(data));
    }

    // Stores float data as target (F16, BF16, F32 or F64), rounding to nearest even.
    void add_converted(std::string name, std::vector<std::int64_t> shape, std::span<const float> data,
                       DType target) {
        if (!dtype_is_float(target))
            fail("safetensors writer: tensor ", detail::quote_name(name), ": cannot convert floats to ",
                 dtype_name(target));
        const std::size_t size = dtype_size(target);
        Entry& e = insert(std::move(name), target, std::move(shape), data.size() * size);
        for (std::size_t i = 0; i < data.size(); ++i) store(target, data[i], e.bytes.data() + i * size);
    }

    void set_metadata(std::string key, std::string value) {
        require_utf8("metadata key", key);
        require_utf8("metadata value", value);
        metadata_.insert_or_assign(std::move(key), std::move(value));
    }

    // Atomic: the target is replaced only once the whole file is written and synced.
    void write(const std::filesystem::path& path) const {
        const std::string header = header_block();
        write_file_atomic(path, [&](FileSink& sink) {
            sink.write(std::as_bytes(std::span(header)));
            for (const Entry& e : entries_) sink.write(e.bytes);
        });
    }

    [[nodiscard]] std::vector<std::byte> to_bytes() const {
        const std::string header = header_block();
        std::size_t total = header.size();
        for (const Entry& e : entries_) total += e.bytes.size();
        std::vector<std::byte> out;
        out.reserve(total);
        const auto header_bytes = std::as_bytes(std::span(header));
        out.insert(out.end(), header_bytes.begin(), header_bytes.end());
        for (const Entry& e : entries_) out.insert(out.end(), e.bytes.begin(), e.bytes.end());
        return out;
    }

private:
    struct Entry {
        std::string name;
        DType dtype;
        std::vector<std::int64_t> shape;
        std::vector<std::byte> bytes;
    };

    // Validates a new tensor and returns its entry with a zeroed buffer of nbytes to fill.
    Entry& insert(std::string name, DType dtype, std::vector<std::int64_t> shape, std::size_t nbytes) {
        const auto fault = [&](auto... parts) {
            fail("safetensors writer: tensor ", detail::quote_name(name), ": ", parts...);
        };
        require_utf8("tensor name", name);
        if (name == "__metadata__") fault("the name is reserved for metadata");
        if (names_.contains(name)) fault("added twice");
        const std::optional<std::size_t> needed = detail::byte_count(shape, dtype_size(dtype));
        if (!needed) fault("shape ", detail::shape_string(shape), " has a negative or overflowing dimension");
        if (*needed != nbytes)
            fault("dtype ", dtype_name(dtype), " with shape ", detail::shape_string(shape), " needs ", *needed,
                  " bytes, got ", nbytes);
        names_.insert(name);
        return entries_.emplace_back(Entry{std::move(name), dtype, std::move(shape), std::vector<std::byte>(nbytes)});
    }

    static void store(DType target, float v, std::byte* out) {
        switch (target) {
            case DType::F64: return store_bits(static_cast<double>(v), out);
            case DType::F16: return store_bits(float_to_half(v), out);
            case DType::BF16: return store_bits(float_to_bf16(v), out);
            default: return store_bits(v, out);  // F32; add_converted admits only float dtypes
        }
    }

    template <class S>
    static void store_bits(S value, std::byte* out) {
        std::memcpy(out, &value, sizeof(S));
    }

    // Rejected here rather than at write time, where nlohmann's dump() would throw.
    static void require_utf8(const char* what, const std::string& s) {
        try {
            static_cast<void>(nlohmann::json(s).dump());
        } catch (const nlohmann::json::exception&) {
            fail("safetensors writer: ", what, " ", detail::quote_name(s), " is not valid UTF-8");
        }
    }

    // The length prefix plus the JSON header, space-padded so the data starts 8-aligned.
    std::string header_block() const {
        nlohmann::ordered_json header = nlohmann::ordered_json::object();
        if (!metadata_.empty()) header["__metadata__"] = metadata_;
        std::size_t offset = 0;
        for (const Entry& e : entries_) {
            header[e.name] = {{"dtype", dtype_name(e.dtype)},
                              {"shape", e.shape},
                              {"data_offsets", {offset, offset + e.bytes.size()}}};
            offset += e.bytes.size();
        }
        std::string json = header.dump();
        json.append((8 - json.size() % 8) % 8, ' ');
        check(json.size() <= max_header_bytes, "safetensors writer: header of ", json.size(),
              " bytes exceeds the limit of ", max_header_bytes);
        std::string block(8, '\0');
        for (std::size_t i = 0; i < 8; ++i) block[i] = static_cast<char>((json.size() >> (8 * i)) & 0xffu);
        return block + json;
    }

    std::vector<Entry> entries_;
    std::set<std::string, std::less<>> names_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace mpnet::io
