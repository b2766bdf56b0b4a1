// What mpnet-generate and mpnet-phema share on the command line: the usage-error type,
// strict number parsing, and main's exit statuses (0 success, 1 bad input or a failed
// run, 2 a command-line error).
#pragma once
#include <charconv>
#include <cstdio>
#include <exception>
#include <string>
#include <system_error>

#include "mpnet/core/error.hpp"

namespace mpnet::cli {

// A command-line error (exit status 2) as opposed to bad input data (exit status 1).
struct UsageError : Error {
    using Error::Error;
};

// The whole of `text` as a T, or a UsageError naming the option.
template <class T>
T parse_number(const std::string& option, const std::string& text) {
    T v{};
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || r.ec != std::errc{} || r.ptr != text.data() + text.size())
        throw UsageError(option + ": '" + text + "' is not a valid number");
    return v;
}

// main() of a program: parse(argc, argv) gives options with a `help` flag; run(options)
// does the work. Errors are printed as "<program>: ..." with the matching exit status.
template <class Parse, class Run>
int run_main(const char* program, const char* usage, int argc, char** argv, Parse&& parse, Run&& run) {
    try {
        const auto options = parse(argc, argv);
        if (options.help) {
            std::fputs(usage, stdout);
            return 0;
        }
        run(options);
        return 0;
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%s: %s\nTry '%s --help'.\n", program, e.what(), program);
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: error: %s\n", program, e.what());
        return 1;
    }
}

}  // namespace mpnet::cli
