// Writing a zip archive of stored (uncompressed) members one at a time, as the reference
// dataset tool's archives are: each member goes to disk when it is added, so an archive of a
// million images never sits in memory, and ZIP64 records are written when the member count
// or the offsets outgrow the classic format (ImageNet has 1.28 M members).
//
// The archive is built under a temporary name beside the destination and renamed into place
// by finish(): an interrupted run (Ctrl-C, a full disk) leaves no half-written archive.
#pragma once
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/io/atomic_file.hpp"

namespace mpnet::io {

class ZipWriter {
public:
    explicit ZipWriter(std::filesystem::path dest)
        : dest_(std::move(dest)), temp_(detail::temp_path_for(dest_)) {
        file_ = std::fopen(temp_.c_str(), "wb");
        check(file_ != nullptr, temp_.string(), ": cannot create: ", std::strerror(errno));
    }
    ZipWriter(const ZipWriter&) = delete;
    ZipWriter& operator=(const ZipWriter&) = delete;
    ~ZipWriter() {
        if (file_ != nullptr) {  // not finished: an error or an interruption; nothing is left behind
            std::fclose(file_);
            std::error_code ec;
            std::filesystem::remove(temp_, ec);
        }
    }

    void add(const std::string& name, std::span<const uint8_t> data) {
        check(!name.empty() && name.size() < 0xFFFF, dest_.string(), ": member name '", name, "' is empty or too long");
        check(data.size() < 0xFFFFFFFFu, dest_.string(), ": member ", name, " is 4 GiB or larger");
        Entry e{name, uint32_t(crc32(0L, data.data(), uInt(data.size()))), uint32_t(data.size()), offset_};
        std::vector<uint8_t> h;
        put32(h, 0x04034b50);
        put16(h, 20);      // version needed: 2.0
        put16(h, 0x0800);  // names are UTF-8
        put16(h, 0);       // stored
        put16(h, 0);       // time 00:00
        put16(h, 0x21);    // date 1980-01-01
        put32(h, e.crc);
        put32(h, e.size);
        put32(h, e.size);
        put16(h, uint16_t(name.size()));
        put16(h, 0);
        h.insert(h.end(), name.begin(), name.end());
        write(h);
        write(data);
        entries_.push_back(std::move(e));
    }

    // Writes the central directory and moves the archive into place.
    void finish() {
        const uint64_t directory_at = offset_;
        for (const Entry& e : entries_) {
            const bool far = e.offset >= 0xFFFFFFFFu;
            std::vector<uint8_t> h;
            put32(h, 0x02014b50);
            put16(h, 0x0300 | 45);  // made by: Unix, 4.5
            put16(h, far ? 45 : 20);
            put16(h, 0x0800);
            put16(h, 0);
            put16(h, 0);
            put16(h, 0x21);
            put32(h, e.crc);
            put32(h, e.size);
            put32(h, e.size);
            put16(h, uint16_t(e.name.size()));
            put16(h, far ? 12 : 0);  // extra: the ZIP64 offset
            put16(h, 0);             // comment
            put16(h, 0);             // disk
            put16(h, 0);             // internal attributes
            put32(h, 0100644u << 16);
            put32(h, far ? 0xFFFFFFFFu : uint32_t(e.offset));
            h.insert(h.end(), e.name.begin(), e.name.end());
            if (far) {
                put16(h, 0x0001);
                put16(h, 8);
                put64(h, e.offset);
            }
            write(h);
        }
        const uint64_t directory_size = offset_ - directory_at, count = entries_.size();
        std::vector<uint8_t> h;
        const bool zip64 = count >= 0xFFFF || directory_at >= 0xFFFFFFFFu || directory_size >= 0xFFFFFFFFu;
        if (zip64) {
            const uint64_t record_at = offset_;
            put32(h, 0x06064b50);
            put64(h, 44);
            put16(h, 0x0300 | 45);
            put16(h, 45);
            put32(h, 0);
            put32(h, 0);
            put64(h, count);
            put64(h, count);
            put64(h, directory_size);
            put64(h, directory_at);
            put32(h, 0x07064b50);
            put32(h, 0);
            put64(h, record_at);
            put32(h, 1);
        }
        put32(h, 0x06054b50);
        put16(h, 0);
        put16(h, 0);
        put16(h, zip64 ? 0xFFFF : uint16_t(count));
        put16(h, zip64 ? 0xFFFF : uint16_t(count));
        put32(h, zip64 ? 0xFFFFFFFFu : uint32_t(directory_size));
        put32(h, zip64 ? 0xFFFFFFFFu : uint32_t(directory_at));
        put16(h, 0);
        write(h);
        const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
        const int closed = std::fclose(file_);
        file_ = nullptr;
        if (!flushed || closed != 0) {
            std::error_code ec;
            std::filesystem::remove(temp_, ec);
            fail(dest_.string(), ": cannot finish writing the archive: ", std::strerror(errno));
        }
        std::error_code ec;
        std::filesystem::rename(temp_, dest_, ec);
        if (ec) {
            std::filesystem::remove(temp_, ec);
            fail(dest_.string(), ": cannot move the finished archive into place: ", ec.message());
        }
        detail::sync_directory(dest_);
    }

    [[nodiscard]] uint64_t bytes_written() const { return offset_; }

private:
    struct Entry {
        std::string name;
        uint32_t crc = 0, size = 0;
        uint64_t offset = 0;
    };

    static void put16(std::vector<uint8_t>& b, uint16_t v) {
        b.push_back(uint8_t(v)), b.push_back(uint8_t(v >> 8));
    }
    static void put32(std::vector<uint8_t>& b, uint32_t v) { put16(b, uint16_t(v)), put16(b, uint16_t(v >> 16)); }
    static void put64(std::vector<uint8_t>& b, uint64_t v) { put32(b, uint32_t(v)), put32(b, uint32_t(v >> 32)); }

    void write(std::span<const uint8_t> bytes) {
        if (bytes.empty()) return;
        check(std::fwrite(bytes.data(), 1, bytes.size(), file_) == bytes.size(), temp_.string(),
              ": write failed (disk full?): ", std::strerror(errno));
        offset_ += bytes.size();
    }

    std::filesystem::path dest_, temp_;
    std::FILE* file_ = nullptr;
    uint64_t offset_ = 0;
    std::vector<Entry> entries_;
};

}  // namespace mpnet::io
