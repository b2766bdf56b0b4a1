// safetensors I/O: fp16/bf16 conversion, round trips, golden files, malformed input, atomic writes.
#include <doctest/doctest.h>
#include <sys/resource.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "mpnet/io/atomic_file.hpp"
#include "mpnet/io/half.hpp"
#include "mpnet/io/safetensors.hpp"

namespace fs = std::filesystem;
using mpnet::io::DType;
using mpnet::io::SafetensorsFile;
using mpnet::io::SafetensorsWriter;

namespace {

// A fresh directory per test, removed with everything in it afterwards.
struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("mpnet_safetensors_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    [[nodiscard]] std::size_t count() const {
        return static_cast<std::size_t>(std::distance(fs::directory_iterator(path), fs::directory_iterator()));
    }
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary) << text;
}

// An 8-byte little-endian length, the header, then the data section.
std::vector<std::byte> file_bytes(std::uint64_t header_len, const std::string& header, std::size_t data_bytes) {
    std::vector<std::byte> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((header_len >> (8 * i)) & 0xffu));
    for (const char c : header) out.push_back(static_cast<std::byte>(c));
    out.resize(out.size() + data_bytes, std::byte{0x3f});
    return out;
}

std::vector<std::byte> file_bytes(const std::string& header, std::size_t data_bytes) {
    return file_bytes(header.size(), header, data_bytes);
}

// Parsing must fail with a message that starts with the label and names the fault.
void expect_fault(const std::vector<std::byte>& bytes, const std::string& keyword) {
    const std::string label = "bad.safetensors";
    try {
        static_cast<void>(SafetensorsFile::from_bytes(bytes, label));
        FAIL("parsed a malformed file; expected a fault mentioning: " << keyword);
    } catch (const mpnet::Error& e) {
        const std::string msg = e.what();
        INFO("message: " << msg);
        CHECK(msg.starts_with(label + ": "));
        CHECK(msg.find(keyword) != std::string::npos);
    }
}

// One well-formed F32 tensor "t" of shape [2] with a customizable entry.
std::string one_tensor(const std::string& entry) { return R"({"t":)" + entry + "}"; }

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }

}  // namespace

TEST_SUITE_BEGIN("io");

TEST_CASE("half: known fp16 bit patterns") {
    using mpnet::io::float_to_half;
    using mpnet::io::half_to_float;
    CHECK(float_to_half(1.0f) == 0x3c00);
    CHECK(float_to_half(-2.0f) == 0xc000);
    CHECK(float_to_half(65504.0f) == 0x7bff);
    CHECK(float_to_half(0.0f) == 0x0000);
    CHECK(float_to_half(-0.0f) == 0x8000);
    CHECK(float_to_half(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
    CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
    CHECK(float_to_half(std::ldexp(1023.0f, -24)) == 0x03ff);  // largest subnormal
    CHECK(float_to_half(std::numeric_limits<float>::infinity()) == 0x7c00);
    CHECK(float_to_half(-std::numeric_limits<float>::infinity()) == 0xfc00);
    CHECK(float_to_half(1e10f) == 0x7c00);  // overflow
    CHECK(float_to_half(65519.0f) == 0x7bff);  // just under the halfway point to 2^16
    CHECK(float_to_half(65520.0f) == 0x7c00);  // tie between 65504 (odd) and inf rounds to inf
    const std::uint16_t nan = float_to_half(std::numeric_limits<float>::quiet_NaN());
    CHECK((nan & 0x7c00) == 0x7c00);
    CHECK((nan & 0x03ff) != 0);
    // A signalling NaN whose payload sits only in the low bits must not turn into inf.
    CHECK((float_to_half(std::bit_cast<float>(0x7f800001u)) & 0x03ff) != 0);

    CHECK(half_to_float(0x3c00) == 1.0f);
    CHECK(half_to_float(0xc000) == -2.0f);
    CHECK(half_to_float(0x7bff) == 65504.0f);
    CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
    CHECK(half_to_float(0x03ff) == std::ldexp(1023.0f, -24));
    CHECK(half_to_float(0x8000) == 0.0f);
    CHECK(std::signbit(half_to_float(0x8000)));
    CHECK(half_to_float(0x7c00) == std::numeric_limits<float>::infinity());
    CHECK(half_to_float(0xfc00) == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(half_to_float(0x7e00)));
    static_assert(mpnet::io::half_to_float(0x3c00) == 1.0f && mpnet::io::float_to_half(0.5f) == 0x3800);
}

TEST_CASE("half: fp16 rounds to nearest even") {
    using mpnet::io::float_to_half;
    const float ulp1 = std::ldexp(1.0f, -10);  // fp16 spacing just above 1
    CHECK(float_to_half(1.0f + ulp1 / 2) == 0x3c00);      // tie, 1.0 is even: down
    CHECK(float_to_half(1.0f + 3 * ulp1 / 2) == 0x3c02);  // tie, 0x3c01 is odd: up
    CHECK(float_to_half(std::nextafter(1.0f + ulp1 / 2, 2.0f)) == 0x3c01);  // above the tie
    CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);  // subnormal tie to even zero
    CHECK(float_to_half(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 ulp: tie up to even 2
    CHECK(float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
    CHECK(float_to_half(-std::ldexp(1.0f, -26)) == 0x8000);  // underflow keeps the sign
    CHECK(float_to_half(std::ldexp(2047.0f, -25)) == 0x0400);  // rounds up into the normals
}

TEST_CASE("half: every fp16 value survives a round trip through float") {
    using mpnet::io::float_to_half;
    using mpnet::io::half_to_float;
    for (std::uint32_t h = 0; h <= 0xffff; ++h) {
        const auto h16 = static_cast<std::uint16_t>(h);
        const float f = half_to_float(h16);
        if (std::isnan(f))
            CHECK((float_to_half(f) & 0x7fff) > 0x7c00);
        else if (float_to_half(f) != h16)
            FAIL_CHECK("fp16 0x" << std::hex << h << " did not round-trip");
    }
}

TEST_CASE("half: known bfloat16 bit patterns and rounding") {
    using mpnet::io::bf16_to_float;
    using mpnet::io::float_to_bf16;
    CHECK(float_to_bf16(1.0f) == 0x3f80);
    CHECK(float_to_bf16(-2.0f) == 0xc000);
    CHECK(float_to_bf16(std::numeric_limits<float>::infinity()) == 0x7f80);
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds up to inf
    CHECK(float_to_bf16(std::bit_cast<float>(0x3f808000u)) == 0x3f80);  // tie, even: down
    CHECK(float_to_bf16(std::bit_cast<float>(0x3f818000u)) == 0x3f82);  // tie, odd: up
    CHECK(float_to_bf16(std::bit_cast<float>(0x3f808001u)) == 0x3f81);  // above the tie
    CHECK(float_to_bf16(std::bit_cast<float>(0x00010000u)) == 0x0001);  // subnormal kept
    CHECK((float_to_bf16(std::bit_cast<float>(0x7f800001u)) & 0x7f) != 0);  // NaN stays NaN
    CHECK(bits(bf16_to_float(0x3f80)) == bits(1.0f));
    CHECK(bf16_to_float(0xff80) == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(bf16_to_float(0x7fc0)));
}

TEST_CASE("safetensors: dtype names and sizes") {
    for (const DType d : mpnet::io::all_dtypes) CHECK(mpnet::io::parse_dtype(mpnet::io::dtype_name(d)) == d);
    CHECK(mpnet::io::dtype_size(DType::BF16) == 2);
    CHECK(mpnet::io::dtype_size(DType::I64) == 8);
    CHECK(mpnet::io::dtype_size(DType::BOOL) == 1);
    CHECK_FALSE(mpnet::io::parse_dtype("U16").has_value());
    CHECK_FALSE(mpnet::io::parse_dtype("f32").has_value());
}

TEST_CASE("safetensors: every dtype round-trips through bytes and a file") {
    const std::vector<double> f64{1.5, -2.25, 1e300, 0.0};
    const std::vector<float> f32{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), 3.0f, 0.1f};
    const std::vector<std::int64_t> i64{std::numeric_limits<std::int64_t>::min(), -1, 0, 1LL << 60};
    const std::vector<std::int32_t> i32{-7, 0, std::numeric_limits<std::int32_t>::max()};
    const std::vector<std::int16_t> i16{-32768, 12345};
    const std::vector<std::int8_t> i8{-128, 127, 0};
    const std::vector<std::uint8_t> u8{0, 255, 7};
    const bool flags[] = {true, false, true};

    SafetensorsWriter w;
    w.add<double>("f64", {2, 2}, f64);
    w.add<float>("f32", {2, 3}, f32);
    w.add_converted("f16", {2, 3}, f32, DType::F16);
    w.add_converted("bf16", {6}, f32, DType::BF16);
    w.add_converted("f32to64", {6}, f32, DType::F64);
    w.add<std::int64_t>("i64", {4}, i64);
    w.add<std::int32_t>("i32", {3}, i32);
    w.add<std::int16_t>("i16", {2}, i16);
    w.add<std::int8_t>("i8", {3}, i8);
    w.add<std::uint8_t>("u8", {3, 1}, u8);
    w.add<bool>("bool", {3}, flags);
    w.add<float>("scalar", {}, std::span<const float>(f32).first(1));
    w.add<float>("empty", {0, 5}, std::span<const float>());

    TempDir dir;
    w.write(dir.path / "all.safetensors");
    const std::vector<std::byte> bytes = w.to_bytes();
    CHECK(slurp(dir.path / "all.safetensors").size() == bytes.size());
    for (const SafetensorsFile& f :
         {SafetensorsFile::open(dir.path / "all.safetensors"), SafetensorsFile::from_bytes(bytes, "mem")}) {
        CHECK(f.tensors().size() == 13);
        CHECK(f.read<double>("f64") == f64);
        CHECK(f.read<float>("f32") == f32);
        CHECK(f.info("f16").dtype == DType::F16);
        CHECK(f.info("f16").shape == std::vector<std::int64_t>{2, 3});
        CHECK(f.read<float>("f16") == std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), 3.0f,
                                                         mpnet::io::half_to_float(0x2e66)});
        CHECK(f.read<float>("bf16") == std::vector<float>{1.0f, -2.0f, 65536.0f, std::ldexp(1.0f, -24), 3.0f,
                                                          mpnet::io::bf16_to_float(0x3dcd)});
        CHECK(f.read<float>("f32to64") == f32);
        CHECK(f.read<std::int64_t>("i64") == i64);
        CHECK(f.read<std::int32_t>("i32") == i32);
        CHECK(f.read<std::int16_t>("i16") == i16);
        CHECK(f.read<std::int8_t>("i8") == i8);
        CHECK(f.read<std::uint8_t>("u8") == u8);
        CHECK(f.read<int>("bool") == std::vector<int>{1, 0, 1});
        CHECK(f.info("scalar").shape.empty());
        CHECK(f.read<float>("scalar") == std::vector<float>{1.0f});
        CHECK(f.read<float>("empty").empty());
        CHECK(f.raw("i16").size() == 4);
    }
}

TEST_CASE("safetensors: writer layout follows insertion order with an 8-aligned header") {
    SafetensorsWriter w;
    const std::vector<float> v{1, 2, 3};
    w.add<float>("zeta", {3}, v);
    w.add<float>("alpha", {1}, std::span<const float>(v).first(1));
    const std::vector<std::byte> bytes = w.to_bytes();
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    CHECK(n % 8 == 0);
    CHECK(bytes.size() == 8 + n + 16);
    const SafetensorsFile f = SafetensorsFile::from_bytes(bytes, "mem");
    REQUIRE(f.tensors().size() == 2);
    CHECK(f.tensors()[0].name == "zeta");
    CHECK(f.tensors()[0].begin == 0);
    CHECK(f.tensors()[1].name == "alpha");
    CHECK(f.tensors()[1].begin == 12);
    CHECK(f.metadata().empty());
}

TEST_CASE("safetensors: metadata round-trips") {
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    w.set_metadata("note", "quotes \" and \\ and unicode \xc3\xa9 survive");
    w.set_metadata("format", "mpnet");  // the last value wins
    const SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes(), "mem");
    CHECK(f.metadata().size() == 2);
    CHECK(f.metadata().at("format") == "mpnet");
    CHECK(f.metadata_or("note", "") == "quotes \" and \\ and unicode \xc3\xa9 survive");
    CHECK(f.metadata_or("missing", "fallback") == "fallback");
    CHECK(f.tensors().empty());
}

TEST_CASE("safetensors: conversions on read") {
    SafetensorsWriter w;
    const std::vector<float> fractional{1.0f, 2.5f};
    const std::vector<double> whole{3.0, -4.0, 1e10};
    const std::vector<std::int64_t> big{300, -1};
    w.add<float>("fractional", {2}, fractional);
    w.add<double>("whole", {3}, whole);
    w.add<std::int64_t>("big", {2}, big);
    const SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes(), "conv");
    CHECK(f.read<std::int64_t>("whole") == std::vector<std::int64_t>{3, -4, 10000000000});
    CHECK(f.read<float>("big") == std::vector<float>{300.0f, -1.0f});
    CHECK_THROWS_WITH_AS(static_cast<void>(f.read<int>("fractional")),
                         doctest::Contains("element 1 is not representable as a signed 32-bit integer"),
                         mpnet::Error);
    CHECK_THROWS_WITH_AS(static_cast<void>(f.read<std::int32_t>("whole")), doctest::Contains("element 2"),
                         mpnet::Error);
    CHECK_THROWS_WITH_AS(static_cast<void>(f.read<std::uint8_t>("big")), doctest::Contains("'big'"),
                         mpnet::Error);
}

TEST_CASE("safetensors: lookup and size errors name the file and tensor") {
    SafetensorsWriter w;
    const std::vector<float> v(6, 1.0f);
    w.add<float>("w", {2, 3}, v);
    const SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes(), "model.st");
    CHECK(f.label() == "model.st");
    CHECK(f.contains("w"));
    CHECK_FALSE(f.contains("v"));
    CHECK_THROWS_WITH_AS(static_cast<void>(f.info("v")), "model.st: no tensor named 'v'", mpnet::Error);
    std::vector<float> small(5);
    CHECK_THROWS_WITH_AS(f.read_into<float>("w", small),
                         "model.st: tensor 'w' has shape [2,3] (6 elements), but the destination has 5 elements",
                         mpnet::Error);
    const std::vector<std::int64_t> expected{3, 2};
    CHECK_THROWS_WITH_AS(f.check_shape("w", expected), "model.st: tensor 'w' has shape [2,3], expected [3,2]",
                         mpnet::Error);
    const std::vector<std::int64_t> right{2, 3};
    CHECK_NOTHROW(f.check_shape("w", right));
}

TEST_CASE("safetensors: writer rejects bad tensors at add time") {
    SafetensorsWriter w;
    const std::vector<float> v(4);
    w.add<float>("a", {4}, v);
    CHECK_THROWS_WITH_AS(w.add<float>("a", {4}, v), doctest::Contains("'a': added twice"), mpnet::Error);
    CHECK_THROWS_WITH_AS(w.add<float>("b", {3}, v), doctest::Contains("needs 12 bytes, got 16"), mpnet::Error);
    CHECK_THROWS_WITH_AS(w.add<float>("c", {-1, -4}, v), doctest::Contains("negative or overflowing"),
                         mpnet::Error);
    CHECK_THROWS_WITH_AS(w.add<float>("__metadata__", {4}, v), doctest::Contains("reserved"), mpnet::Error);
    CHECK_THROWS_WITH_AS(w.add_converted("d", {4}, v, DType::I32), doctest::Contains("cannot convert"),
                         mpnet::Error);
    CHECK_THROWS_WITH_AS(w.add<float>("\xff", {4}, v), doctest::Contains("not valid UTF-8"), mpnet::Error);
    CHECK_THROWS_WITH_AS(w.set_metadata("k", "\xc3"), doctest::Contains("not valid UTF-8"), mpnet::Error);
    CHECK(SafetensorsFile::from_bytes(w.to_bytes(), "mem").tensors().size() == 1);
}

TEST_CASE("safetensors: golden reference file primitives.safetensors") {
    const fs::path path = fs::path(MPNET_TEST_DATA) / "reference" / "primitives.safetensors";
    const SafetensorsFile f = SafetensorsFile::open(path);
    CHECK(f.label() == path.string());
    CHECK(f.info("normalize.x").shape == std::vector<std::int64_t>{4, 6, 5, 5});
    CHECK(f.info("normalize.x").dtype == DType::F32);
    CHECK(f.info("mp_cat.b").shape == std::vector<std::int64_t>{2, 5, 4, 4});
    CHECK(f.info("mp_fourier.freqs").shape == std::vector<std::int64_t>{16});
    CHECK(f.metadata().contains("description"));
    CHECK(f.metadata_or("gradients", "") == "float64 autograd, rounded to float32");
    for (std::size_t i = 1; i < f.tensors().size(); ++i) CHECK(f.tensors()[i - 1].end <= f.tensors()[i].begin);

    // Widening to double and re-reading as float are exact.
    const std::vector<float> x = f.read<float>("normalize.x");
    const std::vector<double> xd = f.read<double>("normalize.x");
    REQUIRE(x.size() == 600);
    for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(static_cast<double>(x[i]) == xd[i]);

    // Rewriting every tensor reproduces the same tensors and metadata.
    SafetensorsWriter w;
    for (const auto& t : f.tensors()) w.add(t.name, t.dtype, t.shape, f.raw(t.name));
    for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
    const SafetensorsFile g = SafetensorsFile::from_bytes(w.to_bytes(), "rewritten");
    CHECK(g.metadata() == f.metadata());
    REQUIRE(g.tensors().size() == f.tensors().size());
    for (const auto& t : f.tensors()) {
        CHECK(g.info(t.name).shape == t.shape);
        const auto a = f.raw(t.name);
        const auto b = g.raw(t.name);
        CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
}

TEST_CASE("safetensors: golden F64 file schedule.safetensors") {
    const SafetensorsFile f = SafetensorsFile::open(fs::path(MPNET_TEST_DATA) / "reference" / "schedule.safetensors");
    CHECK(f.info("cur_nimg").dtype == DType::F64);
    CHECK(f.read<double>("cur_nimg").size() == 22);
    CHECK(f.read<double>("cur_nimg").front() == 0.0);
}

TEST_CASE("safetensors: open reports unreadable paths") {
    TempDir dir;
    CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.path / "missing.safetensors"),
                         doctest::Contains("missing.safetensors: cannot open"), mpnet::Error);
    CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.path), doctest::Contains("not a regular file"), mpnet::Error);
    spit(dir.path / "empty.safetensors", "");
    CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.path / "empty.safetensors"),
                         doctest::Contains("empty.safetensors: file too short"), mpnet::Error);
}

TEST_CASE("safetensors: a well-formed hand-built file parses (baseline for the fault cases)") {
    const auto f = SafetensorsFile::from_bytes(
        file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), 8), "ok");
    CHECK(f.info("t").numel() == 2);
}

TEST_CASE("safetensors: tensors tile the data section in any header order, empty ones included") {
    // The header lists them out of offset order; the empty tensor shares offset 4 with 'b'.
    const auto f = SafetensorsFile::from_bytes(
        file_bytes(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                   R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                   R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                   8),
        "tiled");
    REQUIRE(f.tensors().size() == 3);
    CHECK(f.tensors()[0].name == "a");
    CHECK(f.tensors()[1].name == "e");
    CHECK(f.tensors()[2].name == "b");
    // A file of empty tensors has an empty data section.
    const auto empty = SafetensorsFile::from_bytes(
        file_bytes(one_tensor(R"({"dtype":"F32","shape":[0,3],"data_offsets":[0,0]})"), 0), "empty");
    CHECK(empty.info("t").nbytes() == 0);
}

TEST_CASE("safetensors malformed: file shorter than 8 bytes") {
    expect_fault({}, "file too short");
    expect_fault(std::vector<std::byte>(7), "file too short (7 bytes)");
}

TEST_CASE("safetensors malformed: header length larger than the file") {
    expect_fault(file_bytes(100, "{}", 0), "header length 100 exceeds the 2 bytes");
}

TEST_CASE("safetensors malformed: absurd header length") {
    expect_fault(file_bytes(~std::uint64_t{0}, "{}", 0), "exceeds the limit");
}

TEST_CASE("safetensors malformed: header is not valid JSON") {
    expect_fault(file_bytes(R"({"t": {)", 0), "not valid JSON");
    expect_fault(file_bytes("{\"\xff\":1}", 0), "not valid JSON");  // invalid UTF-8
    expect_fault(file_bytes(std::string("{}\0\0", 4), 0), "not valid JSON");  // NUL padding
}

TEST_CASE("safetensors malformed: header is not an object") {
    expect_fault(file_bytes("[1,2]", 0), "header is not a JSON object");
    expect_fault(file_bytes("\"x\"  ", 0), "header is not a JSON object");
}

TEST_CASE("safetensors malformed: hostile nesting") {
    expect_fault(file_bytes(one_tensor(std::string(100, '[') + std::string(100, ']')), 0), "nested deeper");
}

TEST_CASE("safetensors malformed: entry is not an object") {
    expect_fault(file_bytes(one_tensor("[1]"), 0), "tensor 't': entry is not an object");
}

TEST_CASE("safetensors malformed: missing or wrong-typed fields") {
    expect_fault(file_bytes(one_tensor(R"({"shape":[2],"data_offsets":[0,8]})"), 8), "missing 'dtype'");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","data_offsets":[0,8]})"), 8), "missing 'shape'");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[2]})"), 8), "missing 'data_offsets'");
    expect_fault(file_bytes(one_tensor(R"({"dtype":7,"shape":[2],"data_offsets":[0,8]})"), 8),
                 "'dtype' must be a string");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), 8),
                 "'shape' must be an array");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), 8),
                 "not a non-negative 64-bit integer");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":"0-8"})"), 8),
                 "'data_offsets' must be two");
}

TEST_CASE("safetensors malformed: unknown dtype") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]})"), 2),
                 "unknown dtype 'F8_E4M3'");
}

TEST_CASE("safetensors malformed: negative shape dimension") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), 8),
                 "shape dimension '-2' is not a non-negative");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]})"), 8),
                 "not a non-negative 64-bit integer");
}

TEST_CASE("safetensors malformed: shape whose byte count overflows") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})"),
                            0),
                 "overflows");
    // A zero dimension makes the tensor empty, however large the others.
    const auto f = SafetensorsFile::from_bytes(
        file_bytes(one_tensor(R"({"dtype":"F32","shape":[9223372036854775807,9223372036854775807,0],)"
                              R"("data_offsets":[0,0]})"),
                   0),
        "zero");
    CHECK(f.info("t").numel() == 0);
}

TEST_CASE("safetensors malformed: data_offsets not two non-decreasing integers") {
    for (const char* offsets : {"[0]", "[0,8,8]", "[8,0]", "[-1,8]", "[0,8.5]", "[0,\"8\"]"})
        expect_fault(file_bytes(one_tensor(std::string(R"({"dtype":"F32","shape":[2],"data_offsets":)") + offsets +
                                           "}"),
                                8),
                     "'data_offsets' must be two non-decreasing non-negative integers");
}

TEST_CASE("safetensors malformed: tensor ends beyond the data section") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), 7),
                 "reach beyond the 7-byte data section");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,)"
                                       R"(18446744073709551615]})"),
                            0),
                 "beyond the 0-byte data section");
}

TEST_CASE("safetensors malformed: byte count differs from numel * dtype size") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), 8),
                 "data_offsets span 8 bytes, but dtype F32 with shape [3] needs 12");
}

TEST_CASE("safetensors malformed: overlapping tensors") {
    expect_fault(file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            12),
                 "tensors 'a' [0, 8) and 'b' [4, 12) overlap");
}

TEST_CASE("safetensors malformed: unused bytes between tensors") {
    expect_fault(file_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                            R"("b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}})",
                            4),
                 "tensor 'b' begins at byte 3, but 'a' ends at 1: 2 unused bytes between them");
    // An empty tensor does not close a hole: 'b' still begins 2 bytes after 'a' ends.
    expect_fault(file_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                            R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},)"
                            R"("b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}})",
                            4),
                 "tensor 'e' begins at byte 2, but 'a' ends at 1: 1 unused bytes between them");
}

TEST_CASE("safetensors malformed: unused bytes before the first tensor") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8,16]})"), 16),
                 "tensor 't' begins at byte 8: 8 unused bytes at the start of the data section");
}

TEST_CASE("safetensors malformed: an empty tensor inside another's range") {
    expect_fault(file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                            8),
                 "tensors 'a' [0, 8) and 'e' [4, 4) overlap");
}

TEST_CASE("safetensors malformed: duplicate names") {
    expect_fault(file_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                            R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                            2),
                 "duplicate key 'a'");
    expect_fault(file_bytes(one_tensor(R"({"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]})"), 1),
                 "duplicate key 'dtype'");
}

TEST_CASE("safetensors malformed: __metadata__ not an object of strings") {
    expect_fault(file_bytes(R"({"__metadata__":{"a":1}})", 0), "'__metadata__' must be an object of strings");
    expect_fault(file_bytes(R"({"__metadata__":"text"})", 0), "'__metadata__' must be an object of strings");
}

TEST_CASE("safetensors malformed: trailing bytes after the last tensor") {
    expect_fault(file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), 9),
                 "1 trailing bytes");
    expect_fault(file_bytes("{}", 3), "3 trailing bytes");
}

TEST_CASE("atomic write: replaces an existing file and leaves no temporary behind") {
    TempDir dir;
    const fs::path target = dir.path / "out.bin";
    spit(target, "old contents");
    const std::string text = "new";
    mpnet::io::write_file_atomic(target, std::as_bytes(std::span(text)));
    CHECK(slurp(target) == "new");
    CHECK(dir.count() == 1);
}

TEST_CASE("atomic write: a missing directory fails cleanly and creates nothing") {
    TempDir dir;
    const fs::path target = dir.path / "no" / "such" / "dir" / "out.bin";
    CHECK_THROWS_WITH_AS(mpnet::io::write_file_atomic(target, std::span<const std::byte>()),
                         doctest::Contains((target.string() + ": cannot create temporary file").c_str()), mpnet::Error);
    CHECK(dir.count() == 0);
}

TEST_CASE("atomic write: a failing producer leaves the old file untouched") {
    TempDir dir;
    const fs::path target = dir.path / "model.safetensors";
    spit(target, "previous model");
    const auto half_then_throw = [](mpnet::io::FileSink& sink) {
        const std::string text = "half of the new con";
        sink.write(std::as_bytes(std::span(text)));
        throw std::runtime_error("producer failed");
    };
    CHECK_THROWS_AS(mpnet::io::write_file_atomic(target, half_then_throw), std::runtime_error);
    CHECK(slurp(target) == "previous model");
    CHECK(dir.count() == 1);
}

TEST_CASE("atomic write: running out of space names the file and keeps the old one") {
    // RLIMIT_FSIZE makes writes past the limit fail (EFBIG) just as a full disk does (ENOSPC).
    TempDir dir;
    const fs::path target = dir.path / "big.safetensors";
    spit(target, "previous model");
    rlimit saved{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    rlimit small = saved;
    small.rlim_cur = 4096;
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    SafetensorsWriter w;
    const std::vector<float> big(1 << 16, 1.0f);
    w.add<float>("w", {1 << 16}, big);
    std::string message;
    try {
        w.write(target);
    } catch (const mpnet::Error& e) {
        message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, old_handler);
    CHECK(message.starts_with(target.string() + ": "));
    CHECK(message.find("File too large") != std::string::npos);
    CHECK(slurp(target) == "previous model");
    CHECK(dir.count() == 1);
}

TEST_CASE("atomic write: SafetensorsWriter output is readable after replacing a file") {
    TempDir dir;
    const fs::path target = dir.path / "m.safetensors";
    const std::vector<double> a{1, 2}, b{3, 4, 5};
    SafetensorsWriter w1;
    w1.add<double>("x", {2}, a);
    w1.write(target);
    SafetensorsWriter w2;
    w2.add<double>("x", {3}, b);
    w2.write(target);
    CHECK(SafetensorsFile::open(target).read<double>("x") == b);
    CHECK(dir.count() == 1);
}

TEST_SUITE_END();
