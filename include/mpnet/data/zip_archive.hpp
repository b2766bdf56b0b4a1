// Read-only access to the members of a .zip archive through libzip.
//
// The archive is opened with ZIP_CHECKCONS (consistency of the central directory against the
// local headers), and every member is read to its end, so libzip verifies its CRC.
#pragma once
#include <zip.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mpnet/core/error.hpp"

namespace mpnet::data {

class ZipArchive {
public:
    explicit ZipArchive(const std::filesystem::path& path) : path_(path.string()) {
        int code = 0;
        zip_t* z = zip_open(path_.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
        if (z == nullptr) {
            zip_error_t error;
            zip_error_init_with_code(&error, code);
            const std::string message = zip_error_strerror(&error);
            zip_error_fini(&error);
            fail(path_, ": cannot open as a zip archive: ", message);
        }
        zip_.reset(z);
    }

    // Names of the file members (directories left out), in archive order.
    [[nodiscard]] std::vector<std::string> file_names() const {
        std::vector<std::string> names;
        const zip_int64_t count = zip_get_num_entries(zip_.get(), 0);
        for (zip_int64_t i = 0; i < count; ++i) {
            const char* name = zip_get_name(zip_.get(), static_cast<zip_uint64_t>(i), ZIP_FL_ENC_GUESS);
            if (name == nullptr) fail(path_, ": member ", i, ": ", zip_strerror(zip_.get()));
            if (std::string s = name; !s.empty() && s.back() != '/') names.push_back(std::move(s));
        }
        return names;
    }

    [[nodiscard]] std::vector<uint8_t> read(const std::string& name) const {
        const std::string where = path_ + ":" + name;
        zip_stat_t st;
        zip_stat_init(&st);
        if (zip_stat(zip_.get(), name.c_str(), 0, &st) != 0 || (st.valid & ZIP_STAT_SIZE) == 0)
            fail(where, ": cannot stat: ", zip_strerror(zip_.get()));
        const std::unique_ptr<zip_file_t, decltype(&zip_fclose)> file(zip_fopen(zip_.get(), name.c_str(), 0),
                                                                       &zip_fclose);
        if (!file) fail(where, ": cannot open: ", zip_strerror(zip_.get()));
        std::vector<uint8_t> bytes(st.size);
        std::size_t got = 0;
        for (;;) {
            // Reading past the declared size makes libzip hit the end and check the CRC.
            uint8_t spare;
            uint8_t* dst = got < bytes.size() ? bytes.data() + got : &spare;
            const zip_uint64_t want = got < bytes.size() ? bytes.size() - got : 1;
            const zip_int64_t n = zip_fread(file.get(), dst, want);
            if (n < 0) fail(where, ": corrupt member: ", zip_file_strerror(file.get()));
            if (n == 0) break;
            got += static_cast<std::size_t>(n);
            check(got <= bytes.size(), where, ": member is larger than its declared ", bytes.size(), " bytes");
        }
        check(got == bytes.size(), where, ": member is shorter (", got, " bytes) than declared (", bytes.size(),
              ")");
        return bytes;
    }

private:
    struct Close {
        void operator()(zip_t* z) const { zip_discard(z); }  // read-only: nothing to write back
    };
    std::string path_;
    std::unique_ptr<zip_t, Close> zip_;
};

}  // namespace mpnet::data
