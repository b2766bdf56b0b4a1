// Reading (and writing) NumPy .npy files (format versions 1 to 3) of floating-point arrays, as the reference
// dataset tool's `encode` writes VAE latents: np.save of a [2C, H, W] array, the posterior
// mean's C channels followed by its standard deviation's.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>
#include <regex>
#include <span>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

struct NpyArray {
    std::vector<int64_t> shape;
    std::vector<float> values;  // C order
};

namespace detail {

inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) bits = sign | 0x7F800000u | (mantissa << 13);
    else if (exponent != 0) bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    else if (mantissa == 0) bits = sign;
    else {
        const float v = float(mantissa) * 0x1p-24f;  // subnormal
        return sign ? -v : v;
    }
    return std::bit_cast<float>(bits);
}

}  // namespace detail

// Throws, naming `where`, unless `bytes` is a complete .npy file of little-endian float16,
// float32 or float64 values in C order.
inline NpyArray parse_npy(std::span<const uint8_t> bytes, const std::string& where) {
    static constexpr uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    check(bytes.size() >= 10 && std::memcmp(bytes.data(), magic, 6) == 0, where, ": not a .npy file");
    const int major = bytes[6];
    check(major >= 1 && major <= 3, where, ": .npy format version ", major, " is not supported");
    const std::size_t length_bytes = major == 1 ? 2 : 4;
    check(bytes.size() >= 8 + length_bytes, where, ": truncated .npy header");
    std::size_t header_length = 0;
    for (std::size_t i = 0; i < length_bytes; ++i) header_length |= std::size_t(bytes[8 + i]) << (8 * i);
    const std::size_t data_at = 8 + length_bytes + header_length;
    check(data_at <= bytes.size(), where, ": truncated .npy header");
    const std::string header(reinterpret_cast<const char*>(bytes.data()) + 8 + length_bytes, header_length);

    static const std::regex descr(R"('descr'\s*:\s*'([<|>=])([fiu])(\d+)')"), order(R"('fortran_order'\s*:\s*(True|False))"),
        shape(R"('shape'\s*:\s*\(([^)]*)\))");
    std::smatch m;
    check(std::regex_search(header, m, descr), where, ": .npy header without a dtype: ", header);
    const std::string kind = m[2].str(), size = m[3].str(), endian = m[1].str();
    check(kind == "f" && (size == "2" || size == "4" || size == "8") && endian != ">", where, ": dtype '", m[1].str(),
          kind, size, "' is not little-endian float16, float32 or float64");
    const std::size_t item = std::stoul(size);
    check(std::regex_search(header, m, order) && m[1].str() == "False", where,
          ": Fortran-ordered arrays are not supported");
    check(std::regex_search(header, m, shape), where, ": .npy header without a shape: ", header);
    NpyArray a;
    std::size_t count = 1;
    const std::string dims = m[1].str();
    static const std::regex number(R"(\d+)");
    for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number); it != std::sregex_iterator(); ++it) {
        const std::string text = it->str();
        check(text.size() <= 9, where, ": dimension ", text, " is too large");
        a.shape.push_back(std::stoll(text));
        count *= std::size_t(a.shape.back());
        check(count <= (std::size_t(1) << 34), where, ": array of more than 2^34 values");
    }
    check(bytes.size() - data_at == count * item, where, ": ", bytes.size() - data_at, " bytes of data for ",
          count, " values of ", item, " bytes (truncated or padded file)");
    a.values.resize(count);
    const uint8_t* p = bytes.data() + data_at;
    for (std::size_t i = 0; i < count; ++i) {
        if (item == 4) a.values[i] = std::bit_cast<float>(uint32_t(p[4 * i]) | uint32_t(p[4 * i + 1]) << 8 |
                                                          uint32_t(p[4 * i + 2]) << 16 | uint32_t(p[4 * i + 3]) << 24);
        else if (item == 2) a.values[i] = detail::half_to_float(uint16_t(p[2 * i] | p[2 * i + 1] << 8));
        else {
            uint64_t v = 0;
            for (int b = 0; b < 8; ++b) v |= uint64_t(p[8 * i + std::size_t(b)]) << (8 * b);
            a.values[i] = float(std::bit_cast<double>(v));
        }
    }
    return a;
}

// The bytes np.save writes for a float32 C-order array (format 1.0): the header dict with
// NumPy's spare room for growing the first axis (21 digits), padded with spaces so that the
// data starts on a 64-byte boundary, then the values, little-endian.
inline std::vector<uint8_t> npy_bytes(std::span<const int64_t> shape, std::span<const float> values) {
    std::string dims;
    for (std::size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    if (shape.size() == 1) dims += ",";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    if (!shape.empty()) header += std::string(21 - std::to_string(shape[0]).size(), ' ');
    const std::size_t used = 10 + header.size() + 1;  // magic, version, length; the newline
    header += std::string(64 - used % 64, ' ') + "\n";
    check(header.size() < 65536, "npy_bytes: header too long");
    std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, uint8_t(header.size() & 0xff), uint8_t(header.size() >> 8)};
    out.insert(out.end(), header.begin(), header.end());
    const auto* bytes = reinterpret_cast<const uint8_t*>(values.data());
    static_assert(std::endian::native == std::endian::little, "npy_bytes writes little-endian floats");
    out.insert(out.end(), bytes, bytes + values.size() * sizeof(float));
    return out;
}

}  // namespace mpnet::data
