// The IDX format of MNIST-style datasets (http://yann.lecun.com/exdb/mnist/).
//
// Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, one
// big-endian uint32 per dimension, then the row-major data. Only unsigned bytes are read here;
// the header is untrusted, so the data length must match the dimensions exactly.
#pragma once
#include <cstdint>
#include <iomanip>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/data/big_endian.hpp"

namespace mpnet::data {

struct IdxArray {
    std::vector<int64_t> dims;
    std::vector<uint8_t> data;  // row-major, dims[0] * dims[1] * ... bytes
};

// Parses `bytes` (the whole file) as an IDX array of unsigned bytes with `ndim` dimensions;
// `source` names the file in messages.
inline IdxArray parse_idx(std::vector<uint8_t> bytes, int ndim, const std::string& source) {
    const std::size_t header = 4 + 4 * static_cast<std::size_t>(ndim);
    check(bytes.size() >= 4, source, ": too short for an IDX file (", bytes.size(), " bytes)");
    check(bytes[0] == 0 && bytes[1] == 0, source, ": not an IDX file (magic number 0x", std::hex, std::setfill('0'),
          std::setw(8), read_be32(bytes.data()),
          " does not start with two zero bytes)");
    check(bytes[2] == 0x08, source, ": IDX element type 0x", std::hex, std::setfill('0'), std::setw(2), int{bytes[2]},
          " is not unsigned byte (0x08)");
    check(bytes[3] == ndim, source, ": IDX file has ", int{bytes[3]}, " dimensions, expected ", ndim);
    check(bytes.size() >= header, source, ": truncated IDX header");

    IdxArray out;
    std::size_t expected = 1;
    for (int d = 0; d < ndim; ++d) {
        const uint32_t dim = read_be32(bytes.data() + 4 + 4 * d);
        check(dim > 0, source, ": IDX dimension ", d, " is zero");
        // The dimensions are checked against the bytes present, so their product cannot overflow.
        check(dim <= (bytes.size() - header) / expected, source, ": IDX dimensions exceed the ",
              bytes.size() - header, " data bytes (truncated file?)");
        expected *= dim;
        out.dims.push_back(dim);
    }
    check(bytes.size() - header == expected, source, ": IDX data is ", bytes.size() - header,
          " bytes but the dimensions need ", expected);
    bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(header));
    out.data = std::move(bytes);
    return out;
}

}  // namespace mpnet::data
