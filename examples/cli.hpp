// The command line every mpnet program shares: one option table per program that both
// parses argv and prints --help, strict value parsers that name the option, and main's
// exit statuses (0 success, 1 bad input or a failed run, 2 a command-line error).
#pragma once
#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::cli {

// A command-line error (exit status 2) as opposed to bad input data (exit status 1).
struct UsageError : Error {
    using Error::Error;
};

// Thrown by Parser::parse for -h/--help: main prints the text and exits 0.
struct HelpRequested {
    std::string text;
};

template <class... Parts>
[[noreturn]] void usage_error(Parts&&... parts) {
    throw UsageError(detail::concat(std::forward<Parts>(parts)...));
}

// ---- values -----------------------------------------------------------------------------

// The whole of `text` as an integer in [lo, hi]: no sign for unsigned types, no fraction, no
// exponent, no overflow ("16.7", "nan", "-1" for a seed and "1e9" are all refused).
template <std::integral I>
I parse_integer(const std::string& option, const std::string& text, I lo = std::numeric_limits<I>::min(),
                I hi = std::numeric_limits<I>::max()) {
    I v{};
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec == std::errc::result_out_of_range)
        usage_error(option, ": ", text, " is out of range [", lo, ", ", hi, "]");
    if (text.empty() || r.ec != std::errc{} || r.ptr != text.data() + text.size())
        usage_error(option, ": '", text, "' is not ", std::is_signed_v<I> ? "an integer" : "a non-negative integer");
    if (v < lo || v > hi) usage_error(option, ": ", text, " is out of range [", lo, ", ", hi, "]");
    return v;
}

// An interval of allowed real values; infinite ends are allowed only where the interval
// says so (a closed infinite end), so that "inf" is refused wherever it means nothing.
struct Interval {
    double lo = -std::numeric_limits<double>::max(), hi = std::numeric_limits<double>::max();
    bool lo_open = false, hi_open = false;

    [[nodiscard]] bool contains(double v) const {
        return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    }
    [[nodiscard]] std::string str() const {
        auto unbounded = [](double v) { return std::abs(v) >= std::numeric_limits<double>::max(); };
        auto end = [&](double v) {
            if (unbounded(v)) return std::string(v < 0 ? "-inf" : "inf");
            char buf[32];
            std::snprintf(buf, sizeof buf, "%g", v);
            return std::string(buf);
        };
        const bool lo_shut = !lo_open && !(unbounded(lo) && lo > -std::numeric_limits<double>::infinity());
        const bool hi_shut = !hi_open && !(unbounded(hi) && hi < std::numeric_limits<double>::infinity());
        return (lo_shut ? "[" : "(") + end(lo) + ", " + end(hi) + (hi_shut ? "]" : ")");
    }
};
inline constexpr double max_real = std::numeric_limits<double>::max();
inline constexpr Interval any_real{};
inline constexpr Interval positive{0, max_real, true, false};
inline constexpr Interval non_negative{0, max_real, false, false};

// The whole of `text` as a real number in `range`; NaN is never accepted.
inline double parse_real(const std::string& option, const std::string& text, Interval range = any_real) {
    double v = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || r.ec != std::errc{} || r.ptr != text.data() + text.size() || std::isnan(v))
        usage_error(option, ": '", text, "' is not a number");
    if (std::isinf(v) && !range.contains(v)) usage_error(option, ": ", text, " is not finite");
    if (!range.contains(v)) usage_error(option, ": ", text, " is outside ", range.str());
    return v;
}

inline bool parse_bool(const std::string& option, const std::string& text) {
    if (text == "true" || text == "1" || text == "yes") return true;
    if (text == "false" || text == "0" || text == "no") return false;
    usage_error(option, ": expected true or false, got '", text, "'");
}

// "a,b,c" as its items; an empty text is an empty list.
inline std::vector<std::string> split_commas(const std::string& text) {
    std::vector<std::string> parts;
    if (text.empty()) return parts;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        const std::size_t end = std::min(text.find(',', begin), text.size());
        parts.push_back(text.substr(begin, end - begin));
        begin = end + 1;
    }
    return parts;
}

// ---- the option table ---------------------------------------------------------------------

// Options are declared once, with their help; parse() accepts `--name value` and
// `--name=value`, refuses unknown options, repeats and missing values, and answers -h/--help
// with the help the declarations make, so every program's --help looks alike.
class Parser {
public:
    Parser(std::string usage, std::string description) : usage_(std::move(usage)), description_(std::move(description)) {}

    // Starts a titled group of options in --help.
    Parser& section(std::string title) {
        entries_.push_back({"", "", std::move(title), {}, {}});
        return *this;
    }
    // An option without a value.
    Parser& flag(std::string name, std::string help, std::function<void()> set) {
        entries_.push_back({std::move(name), "", std::move(help), std::move(set), {}});
        return *this;
    }
    // An option with a value; `set` parses it and throws UsageError naming the option.
    Parser& value(std::string name, std::string metavar, std::string help, std::function<void(const std::string&)> set) {
        entries_.push_back({std::move(name), std::move(metavar), std::move(help), {}, std::move(set)});
        return *this;
    }
    // Receives the arguments that are not options, in order (without it they are refused).
    Parser& positional(std::function<void(const std::string&)> take) {
        positional_ = std::move(take);
        return *this;
    }
    // Text after the options (outputs, exit statuses).
    Parser& epilog(std::string text) {
        epilog_ = std::move(text);
        return *this;
    }

    void parse(int argc, char** argv) {
        for (int i = 1; i < argc; ++i) {
            std::string arg = argv[i];
            if (arg == "-h" || arg == "--help") throw HelpRequested{help()};
            if (!arg.starts_with("--")) {
                if (!positional_) usage_error("unexpected argument '", arg, "'");
                positional_(arg);
                continue;
            }
            std::string value;
            const auto eq = arg.find('=');
            const bool inline_value = eq != std::string::npos;
            if (inline_value) value = arg.substr(eq + 1), arg.resize(eq);
            const Entry& e = find(arg);
            if (!given_.insert(arg).second) usage_error(arg, ": given twice");
            if (e.set_flag) {
                if (inline_value) usage_error(arg, ": takes no value");
                e.set_flag();
                continue;
            }
            if (!inline_value) {
                if (i + 1 >= argc || std::string_view(argv[i + 1]).starts_with("--")) usage_error(arg, ": missing value");
                value = argv[++i];
            }
            e.set_value(value);
        }
    }

    [[nodiscard]] bool given(const std::string& name) const { return given_.contains(name); }

    [[nodiscard]] std::string help() const {
        std::string out = "Usage: " + usage_ + "\n\n" + description_ + "\n";
        for (const Entry& e : entries_) {
            if (e.name.empty()) {
                out += "\n" + e.help + ":\n";
                continue;
            }
            out += option_lines(e.name + (e.metavar.empty() ? "" : " " + e.metavar), e.help);
        }
        out += option_lines("-h, --help", "print this help");
        if (!epilog_.empty()) out += "\n" + epilog_ + "\n";
        return out;
    }

private:
    struct Entry {
        std::string name, metavar, help;
        std::function<void()> set_flag;
        std::function<void(const std::string&)> set_value;
    };

    [[nodiscard]] const Entry& find(const std::string& name) const {
        for (const Entry& e : entries_)
            if (!e.name.empty() && e.name == name) return e;
        usage_error("unknown option ", name);
    }

    // "  --name VALUE      first help line" with the help's further lines aligned under it.
    static std::string option_lines(const std::string& head, const std::string& help) {
        constexpr std::size_t column = 20;
        std::string out = "  " + head;
        if (out.size() + 2 > column) out += "\n" + std::string(column, ' ');
        else out += std::string(column - out.size(), ' ');
        for (const char c : help) out += c == '\n' ? "\n" + std::string(column, ' ') : std::string(1, c);
        return out + "\n";
    }

    std::string usage_, description_, epilog_;
    std::vector<Entry> entries_;
    std::function<void(const std::string&)> positional_;
    std::set<std::string> given_;
};

// main() of a program: parse(argc, argv) gives the options (throwing HelpRequested for
// --help), run(options) does the work. Errors are printed as "<program>: ..." with the
// matching exit status.
// Thrown by a program that has printed its error itself: run_main exits with `status`.
struct Reported {
    int status = 1;
};

template <class Parse, class Run>
int run_main(const char* program, int argc, char** argv, Parse&& parse, Run&& run) {
    try {
        const auto options = parse(argc, argv);
        run(options);
        return 0;
    } catch (const Reported& r) {
        return r.status;
    } catch (const HelpRequested& h) {
        std::fputs(h.text.c_str(), stdout);
        return 0;
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%s: %s\nTry '%s --help'.\n", program, e.what(), program);
        return 2;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "%s: error: out of memory\n", program);
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: error: %s\n", program, e.what());
        return 1;
    }
}

// Runs `check` and turns its mpnet::Error into a UsageError: for validations shared with
// the library, whose failures are command-line errors when the values came from argv.
template <class F>
void as_usage_error(F&& check) {
    try {
        check();
    } catch (const UsageError&) {
        throw;
    } catch (const Error& e) {
        throw UsageError(e.what());
    }
}

}  // namespace mpnet::cli
