// Errors: one exception type whose message names what failed and why.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mpnet {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
[[nodiscard]] std::string concat(Parts&&... parts) {
    std::ostringstream os;
    (os << ... << std::forward<Parts>(parts));
    return os.str();
}
}  // namespace detail

// Throws mpnet::Error built from the streamed parts: fail("file ", path, ": bad header").
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
    throw Error(detail::concat(std::forward<Parts>(parts)...));
}

// Throws unless ok. The parts are streamed only on failure, so pass the values themselves
// (a Shape, a number, a name), never a string built for the message: kernels check their
// arguments on every call, and a check that passes must cost no more than its comparison.
template <class... Parts>
void check(bool ok, Parts&&... parts) {
    if (!ok) [[unlikely]]
        fail(std::forward<Parts>(parts)...);
}

}  // namespace mpnet
