// A restricted reader of Python pickles (protocols 2 to 5) that never runs anything.
//
// Loading a pickle in Python calls whatever functions it names: a network pickle can run any
// code. This reader builds the pickle's object graph as plain data instead. A call (REDUCE,
// NEWOBJ) becomes a PyObject of kind `call` that records the callee and its arguments; the
// caller interprets the calls it understands. Every global a pickle names must pass the
// caller's allow-list when it is read, so a pickle naming anything else (os.system, eval...)
// is refused with an error that names it, before anything further is read.
//
// Objects live in an arena owned by the reader and point at each other with plain pointers
// (pickles may hold cycles and deep nesting; neither leaks nor recurses on destruction).
// Strings and bytes are views into the pickle's buffer, which must outlive the reader:
// a network's tensors are read in place, never copied.
#pragma once
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <unordered_map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::io {

struct PyObject;
using PyRef = PyObject*;

struct PyObject {
    enum class Kind { none, boolean, integer, big_integer, real, string, bytes, list, tuple, dict, set, global, call, persistent };
    Kind kind = Kind::none;
    bool boolean = false;
    int64_t integer = 0;
    double real = 0;
    std::string_view text;  // string, bytes, big_integer (little-endian two's complement), global: module
    std::string_view name;  // global: the name inside the module
    std::vector<PyRef> items;                   // list, tuple, set; call: appended items (list subclasses)
    std::vector<std::pair<PyRef, PyRef>> entries;  // dict; call: set items (dict subclasses, OrderedDict)
    PyRef callee, args, state;                  // call: callee(*args), then BUILD's state if any; persistent: args is the id

    [[nodiscard]] bool is(Kind k) const { return kind == k; }
    [[nodiscard]] bool is_global(std::string_view module, std::string_view n) const {
        return kind == Kind::global && text == module && name == n;
    }
    // A call of the global module.name.
    [[nodiscard]] bool is_call_of(std::string_view module, std::string_view n) const {
        return kind == Kind::call && callee && callee->is_global(module, n);
    }
    // Dicts, OrderedDicts (empty ones too) and calls that received SETITEM(S) (dict subclasses).
    [[nodiscard]] bool has_entries() const {
        return kind == Kind::dict || (kind == Kind::call && (!entries.empty() || is_call_of("collections", "OrderedDict")));
    }
    // The value under a string key of a dict-like object, or null.
    [[nodiscard]] PyRef get(std::string_view key) const {
        for (const auto& [k, v] : entries)
            if (k->kind == Kind::string && k->text == key) return v;
        return nullptr;
    }
};

// A short description of an object for error messages: "int", "global torch.HalfStorage"...
inline std::string describe(const PyObject& o) {
    using K = PyObject::Kind;
    switch (o.kind) {
        case K::none: return "None";
        case K::boolean: return "bool";
        case K::integer: case K::big_integer: return "int";
        case K::real: return "float";
        case K::string: return "str '" + std::string(o.text.substr(0, 40)) + "'";
        case K::bytes: return "bytes";
        case K::list: return "list";
        case K::tuple: return "tuple";
        case K::dict: return "dict";
        case K::set: return "set";
        case K::global: return "global " + std::string(o.text) + "." + std::string(o.name);
        case K::call: return o.callee ? "call of " + describe(*o.callee) : "call";
        case K::persistent: return "persistent id";
    }
    return "object";
}

// Decides whether a global (module, name) may appear in a pickle.
using GlobalFilter = std::function<bool(std::string_view module, std::string_view name)>;

// Reads pickles from `data`, one per load() (a buffer may hold several in a row, as torch's
// legacy format does). `label` names the file in errors. The objects of every load() stay
// valid as long as the reader and the buffer.
class PickleReader {
public:
    PickleReader(std::string_view data, std::string label, GlobalFilter allowed)
        : data_(data), label_(std::move(label)), allowed_(std::move(allowed)) {}

    [[nodiscard]] std::size_t position() const { return pos_; }
    void seek(std::size_t pos) { pos_ = pos; }

    PyRef load() {
        stack_.clear();
        marks_.clear();
        memo_.clear();
        for (;;) {
            const uint8_t op = byte();
            if (op == '.') {
                check(stack_.size() == 1 && marks_.empty(), label_, ": malformed pickle (", stack_.size(),
                      " values left at STOP)");
                return pop();
            }
            step(op);
        }
    }

private:
    using K = PyObject::Kind;

    [[noreturn]] void bad(const std::string& what) const {
        fail(label_, ": malformed pickle at byte ", pos_, ": ", what);
    }
    uint8_t byte() {
        if (pos_ >= data_.size()) bad("truncated");
        return uint8_t(data_[pos_++]);
    }
    std::string_view take(uint64_t n) {
        if (n > data_.size() - pos_) bad("truncated (a length of " + std::to_string(n) + " bytes)");
        const auto s = data_.substr(pos_, std::size_t(n));
        pos_ += std::size_t(n);
        return s;
    }
    uint64_t le(int bytes) {
        const auto s = take(uint64_t(bytes));
        uint64_t v = 0;
        for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | uint8_t(s[std::size_t(i)]);
        return v;
    }
    std::string_view line() {
        const auto end = data_.find('\n', pos_);
        if (end == std::string_view::npos) bad("unterminated line");
        const auto s = data_.substr(pos_, end - pos_);
        pos_ = end + 1;
        return s;
    }

    // Every opcode makes at most one object, so the arena never exceeds one object per byte.
    PyRef make(K kind) {
        auto& o = arena_.emplace_back();
        o.kind = kind;
        return &o;
    }
    void push(PyRef o) {
        // Each value holds a few dozen bytes; a pickle cannot hold more values than bytes.
        if (stack_.size() > data_.size()) bad("stack overflow");
        stack_.push_back(o);
    }
    PyRef pop() {
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) bad("stack underflow");
        auto o = std::move(stack_.back());
        stack_.pop_back();
        return o;
    }
    PyRef& top() {
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) bad("stack underflow");
        return stack_.back();
    }
    std::vector<PyRef> pop_mark() {
        if (marks_.empty()) bad("no MARK");
        std::vector<PyRef> items(stack_.begin() + std::ptrdiff_t(marks_.back()), stack_.end());
        stack_.resize(marks_.back());
        marks_.pop_back();
        return items;
    }
    void memo_put(uint64_t i) { memo_[i] = top(); }
    void memo_get(uint64_t i) {
        const auto it = memo_.find(i);
        if (it == memo_.end()) bad("memo entry " + std::to_string(i) + " is not set");
        push(it->second);
    }
    void global(std::string_view module, std::string_view name) {
        check(allowed_(module, name), label_, ": refused: the pickle names the global '", module, ".", name,
              "', which this reader does not accept (nothing in the pickle was run)");
        auto g = make(K::global);
        g->text = module;
        g->name = name;
        push(g);
    }
    PyRef text(K kind, std::string_view s) {
        auto o = make(kind);
        o->text = s;
        return o;
    }
    PyRef sequence(K kind, std::vector<PyRef> items) {
        auto o = make(kind);
        o->items = std::move(items);
        return o;
    }
    void add_entries(PyObject& target, const std::vector<PyRef>& kv) {
        if (kv.size() % 2) bad("odd number of items for SETITEMS");
        if (target.kind != K::dict && target.kind != K::call) bad("SETITEMS on " + describe(target));
        for (std::size_t i = 0; i < kv.size(); i += 2) target.entries.emplace_back(kv[i], kv[i + 1]);
    }
    void append(PyObject& target, std::vector<PyRef> items) {
        if (target.kind != K::list && target.kind != K::call && target.kind != K::set)
            bad("APPENDS on " + describe(target));
        for (auto& i : items) target.items.push_back(std::move(i));
    }
    void call(PyRef callee, PyRef args) {
        if (callee->kind != K::global) bad("call of " + describe(*callee));
        if (args->kind != K::tuple) bad("call arguments are " + describe(*args));
        auto o = make(K::call);
        o->callee = std::move(callee);
        o->args = std::move(args);
        push(o);
    }
    PyRef integer(int64_t v) {
        auto o = make(K::integer);
        o->integer = v;
        return o;
    }
    void long_integer(uint64_t n) {
        const auto s = take(n);
        if (n <= 8) {
            uint64_t v = 0;
            for (std::size_t i = s.size(); i-- > 0;) v = (v << 8) | uint8_t(s[i]);
            if (n && n < 8 && (uint8_t(s.back()) & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
            push(integer(std::bit_cast<int64_t>(v)));
        } else {
            push(text(K::big_integer, s));
        }
    }

    void step(uint8_t op) {
        switch (op) {
            case 0x80: byte(); return;        // PROTO
            case 0x95: le(8); return;         // FRAME: the frame's bytes follow in order
            case '(': marks_.push_back(stack_.size()); return;
            case '0': pop(); return;
            case '1': pop_mark(); return;
            case '2': push(top()); return;
            case 'N': push(make(K::none)); return;
            case 0x88: case 0x89: {
                auto o = make(K::boolean);
                o->boolean = op == 0x88;
                push(o);
                return;
            }
            case 'J': push(integer(int32_t(uint32_t(le(4))))); return;
            case 'K': push(integer(int64_t(le(1)))); return;
            case 'M': push(integer(int64_t(le(2)))); return;
            case 0x8a: long_integer(le(1)); return;
            case 0x8b: long_integer(le(4)); return;
            case 'G': {
                uint64_t bits = 0;  // big-endian
                for (const char c : take(8)) bits = (bits << 8) | uint8_t(c);
                auto o = make(K::real);
                o->real = std::bit_cast<double>(bits);
                push(o);
                return;
            }
            case 'X': push(text(K::string, take(le(4)))); return;
            case 0x8c: push(text(K::string, take(le(1)))); return;
            case 0x8d: push(text(K::string, take(le(8)))); return;
            case 'B': push(text(K::bytes, take(le(4)))); return;
            case 'C': push(text(K::bytes, take(le(1)))); return;
            case 0x8e: case 0x96: push(text(K::bytes, take(le(8)))); return;
            case ']': push(make(K::list)); return;
            case 'l': push(sequence(K::list, pop_mark())); return;
            case 'a': { auto v = pop(); append(*top(), {std::move(v)}); return; }
            case 'e': { auto items = pop_mark(); append(*top(), std::move(items)); return; }
            case ')': push(make(K::tuple)); return;
            case 't': push(sequence(K::tuple, pop_mark())); return;
            case 0x85: case 0x86: case 0x87: {
                std::vector<PyRef> items(std::size_t(op - 0x84));
                for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
                push(sequence(K::tuple, std::move(items)));
                return;
            }
            case '}': push(make(K::dict)); return;
            case 'd': { auto d = make(K::dict); add_entries(*d, pop_mark()); push(std::move(d)); return; }
            case 's': { auto v = pop(); auto k = pop(); add_entries(*top(), {k, v}); return; }
            case 'u': { auto kv = pop_mark(); add_entries(*top(), kv); return; }
            case 0x8f: push(make(K::set)); return;
            case 0x90: { auto items = pop_mark(); append(*top(), std::move(items)); return; }
            case 0x91: push(sequence(K::set, pop_mark())); return;
            case 'c': { const auto module = line(); global(module, line()); return; }
            case 0x93: {
                auto name = pop(), module = pop();
                if (name->kind != K::string || module->kind != K::string) bad("STACK_GLOBAL of non-strings");
                global(module->text, name->text);
                return;
            }
            case 'R': { auto args = pop(); auto f = pop(); call(std::move(f), std::move(args)); return; }
            case 0x81: { auto args = pop(); auto cls = pop(); call(std::move(cls), std::move(args)); return; }
            case 0x92: {
                auto kwargs = pop(), args = pop(), cls = pop();
                if (kwargs->kind != K::dict || !kwargs->entries.empty()) bad("NEWOBJ_EX with keyword arguments");
                call(std::move(cls), std::move(args));
                return;
            }
            case 'b': {
                auto state = pop();
                auto& target = top();
                if (target->kind != K::call || target->state) bad("BUILD on " + describe(*target));
                target->state = std::move(state);
                return;
            }
            case 'q': memo_put(le(1)); return;
            case 'r': memo_put(le(4)); return;
            case 0x94: memo_put(memo_.size()); return;
            case 'h': memo_get(le(1)); return;
            case 'j': memo_get(le(4)); return;
            case 'Q': {
                auto o = make(K::persistent);
                o->args = pop();
                push(o);
                return;
            }
            default: break;
        }
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        bad(std::string("unsupported opcode ") + hex);
    }

    std::string_view data_;
    std::string label_;
    GlobalFilter allowed_;
    std::size_t pos_ = 0;
    std::vector<PyRef> stack_;
    std::vector<std::size_t> marks_;
    std::unordered_map<uint64_t, PyRef> memo_;
    std::deque<PyObject> arena_;
};

}  // namespace mpnet::io
