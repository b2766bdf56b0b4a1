// Shape: the extents of a dense row-major (NCHW) tensor, up to six dimensions.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet {

class Shape {
public:
    static constexpr int max_rank = 6;

    constexpr Shape() = default;
    constexpr Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
    explicit Shape(std::span<const int64_t> dims) { assign(dims.begin(), dims.end()); }

    [[nodiscard]] constexpr int rank() const { return rank_; }
    [[nodiscard]] constexpr int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(i)]; }
    [[nodiscard]] constexpr int64_t numel() const {
        int64_t n = 1;
        for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
        return n;
    }
    // Product of the dimensions from `first` on (the stride of dimension first-1).
    [[nodiscard]] constexpr int64_t numel_from(int first) const {
        int64_t n = 1;
        for (int i = first; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
        return n;
    }
    [[nodiscard]] std::vector<int64_t> vec() const { return {dims_.begin(), dims_.begin() + rank_}; }
    // The same shape with dimension i replaced.
    [[nodiscard]] constexpr Shape with(int i, int64_t extent) const {
        Shape s = *this;
        s.dims_[static_cast<std::size_t>(i)] = extent;
        return s;
    }
    // "[2,3,4]". Error messages stream the shape itself (operator<< below), so that the
    // text is only built when a check fails.
    [[nodiscard]] std::string str() const { return detail::concat(*this); }
    friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
        os << '[';
        for (int i = 0; i < s.rank_; ++i) os << (i ? "," : "") << s[i];
        return os << ']';
    }
    friend constexpr bool operator==(const Shape& a, const Shape& b) {
        if (a.rank_ != b.rank_) return false;
        for (int i = 0; i < a.rank_; ++i)
            if (a[i] != b[i]) return false;
        return true;
    }

private:
    template <class It>
    constexpr void assign(It first, It last) {
        for (; first != last; ++first) {
            if (rank_ == max_rank) throw Error("Shape: more than 6 dimensions");
            if (*first < 0) throw Error("Shape: negative extent");
            dims_[static_cast<std::size_t>(rank_++)] = *first;
        }
    }
    std::array<int64_t, max_rank> dims_{};
    int rank_ = 0;
};

}  // namespace mpnet
