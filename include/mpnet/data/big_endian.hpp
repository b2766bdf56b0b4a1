// Big-endian integers in file headers (IDX dimensions, PNG chunk lengths and CRCs).
#pragma once
#include <cstdint>

namespace mpnet::data {

inline uint32_t read_be32(const uint8_t* p) {
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

}  // namespace mpnet::data
