// Which dimensions a normalization reduces over, and how a tensor splits into the
// groups that are normalized independently.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "mpnet/core/shape.hpp"

namespace mpnet::ops {

// A set of dimensions as a bit mask. Negative indices count from the end.
class Dims {
public:
    constexpr Dims() = default;
    constexpr Dims(std::initializer_list<int> dims) {
        for (int d : dims) add(d);
    }
    // All dimensions but the first: the default of normalize (per output channel of a weight).
    static constexpr Dims all_but_first() {
        Dims d;
        d.all_but_first_ = true;
        return d;
    }
    [[nodiscard]] constexpr bool contains(int dim, int rank) const {
        if (all_but_first_) return dim > 0;
        for (int i = 0; i < count_; ++i)
            if ((dims_[i] < 0 ? dims_[i] + rank : dims_[i]) == dim) return true;
        return false;
    }

private:
    constexpr void add(int d) { dims_[count_++] = d; }
    int dims_[Shape::max_rank]{};
    int count_ = 0;
    bool all_but_first_ = false;
};

// The groups of a tensor under a reduction. When the reduced dimensions are one contiguous
// run, the tensor is [outer, reduced, inner] and group (o, i) is strided; otherwise
// `group_of` maps every element to its group.
struct ReductionLayout {
    int64_t outer = 1, reduced = 1, inner = 1;
    std::vector<int64_t> group_of;  // empty in the contiguous case
    [[nodiscard]] int64_t groups() const { return outer * inner; }
    [[nodiscard]] bool contiguous() const { return group_of.empty(); }
};

inline ReductionLayout reduction_layout(const Shape& shape, Dims dims) {
    ReductionLayout out;
    const int rank = shape.rank();
    int first = -1, last = -1;
    bool gap = false;
    for (int d = 0; d < rank; ++d) {
        if (!dims.contains(d, rank)) continue;
        if (first < 0) first = d;
        else if (last != d - 1) gap = true;
        last = d;
    }
    if (first < 0) {  // nothing reduced: every element is its own group
        out.outer = shape.numel();
        return out;
    }
    if (!gap) {
        for (int d = 0; d < rank; ++d) (d < first ? out.outer : d <= last ? out.reduced : out.inner) *= shape[d];
        return out;
    }
    // General case: group index over the kept dimensions, in row-major order.
    out.reduced = 1;
    int64_t kept = 1;
    for (int d = 0; d < rank; ++d) (dims.contains(d, rank) ? out.reduced : kept) *= shape[d];
    out.outer = kept;
    out.group_of.resize(static_cast<std::size_t>(shape.numel()));
    std::vector<int64_t> index(static_cast<std::size_t>(rank), 0);
    for (int64_t e = 0; e < shape.numel(); ++e) {
        int64_t g = 0;
        for (int d = 0; d < rank; ++d)
            if (!dims.contains(d, rank)) g = g * shape[d] + index[static_cast<std::size_t>(d)];
        out.group_of[static_cast<std::size_t>(e)] = g;
        for (int d = rank - 1; d >= 0; --d) {  // odometer
            if (++index[static_cast<std::size_t>(d)] < shape[d]) break;
            index[static_cast<std::size_t>(d)] = 0;
        }
    }
    return out;
}

}  // namespace mpnet::ops
