// Reading a model's tensors by name from a safetensors file: each one's shape checked, and
// every tensor of the file required to be used, so that a file for another model (or
// another size of the same one) is refused with the name of the first tensor that differs.
#pragma once
#include <set>
#include <string>
#include <vector>

#include "mpnet/core/concepts.hpp"
#include "mpnet/core/error.hpp"
#include "mpnet/core/tensor.hpp"
#include "mpnet/io/safetensors.hpp"

namespace mpnet::io {

// Reads tensors by name from a weights file, checking each one's shape, and remembers what
// was read so that unknown tensors are reported.
class WeightReader {
public:
    explicit WeightReader(const io::SafetensorsFile& file) : file_(file) {}

    [[nodiscard]] bool has(const std::string& name) const { return file_.contains(name); }
    [[nodiscard]] std::vector<int64_t> shape(const std::string& name) const {
        check(file_.contains(name), file_.label(), ": missing tensor '", name, "'");
        return file_.info(name).shape;
    }
    // Extent i of a tensor that must have more than i dimensions.
    [[nodiscard]] int64_t dim(const std::string& name, std::size_t i) const {
        const auto s = shape(name);
        check(s.size() > i, file_.label(), ": tensor '", name, "' has ", s.size(), " dimensions, expected more than ", i);
        return s[i];
    }

    // The tensor under the first of `names` present, which must have `expected` elements in
    // the given shape (a linear layer's [out, in] is accepted for a 1x1 conv's [out, in, 1, 1]).
    template <Scalar T, Backend B>
    Tensor<T, B> read(const std::vector<std::string>& names, Shape expected) {
        const auto values = read_host<T>(names, expected);
        Tensor<T, B> t(expected);
        if (t.numel()) B::copy_from_host(t.data(), values.data(), t.bytes());
        return t;
    }

    // The same, into host memory (for weights that are transformed before use).
    template <Scalar T>
    std::vector<T> read_host(const std::vector<std::string>& names, Shape expected) {
        for (const auto& name : names) {
            if (!file_.contains(name)) continue;
            const auto& s = file_.info(name).shape;
            const Shape got = s.empty() ? Shape{} : Shape(std::span<const int64_t>(s));
            const bool linear_as_conv = expected.rank() == 4 && expected[2] == 1 && expected[3] == 1 &&
                                        got == Shape{expected[0], expected[1]};
            check(got == expected || linear_as_conv, file_.label(), ": tensor '", name, "' has shape ", got,
                  ", expected ", expected);
            used_.insert(name);
            return file_.read<T>(name);
        }
        fail(file_.label(), ": missing tensor '", names.front(), "'");
    }

    // Every tensor of the file must have been read.
    void check_all_used(const char* model) const {
        for (const auto& info : file_.tensors())
            check(used_.count(info.name), file_.label(), ": tensor '", info.name, "' is not part of ", model);
    }

private:
    const io::SafetensorsFile& file_;
    std::set<std::string> used_;
};

}  // namespace mpnet::io
