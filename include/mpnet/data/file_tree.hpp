// The files of a dataset, whether they sit in a directory tree or in a .zip archive.
//
// Files are named by their path relative to the root with '/' separators, the names that
// dataset.json uses. Directory symlinks are not followed (as Python's os.walk does not).
#pragma once
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "mpnet/core/error.hpp"
#include "mpnet/data/zip_archive.hpp"

namespace mpnet::data {

class FileTree {
public:
    // `root` is a directory or a .zip archive.
    explicit FileTree(const std::filesystem::path& root) : root_(root) {
        std::error_code ec;
        const auto status = std::filesystem::status(root, ec);
        if (status.type() == std::filesystem::file_type::not_found) fail(root.string(), ": no such file or directory");
        if (ec) fail(root.string(), ": cannot access: ", ec.message());
        if (std::filesystem::is_directory(status)) {
            list_directory();
        } else {
            zip_.emplace(root);
            files_ = zip_->file_names();
        }
        std::ranges::sort(files_);
    }

    // Relative paths of all files, sorted by byte value (Python's sort order of str for UTF-8).
    [[nodiscard]] const std::vector<std::string>& files() const { return files_; }

    [[nodiscard]] bool contains(const std::string& name) const { return std::ranges::binary_search(files_, name); }

    // How messages refer to a file: "dir/rel/path.png" or "archive.zip:rel/path.png".
    [[nodiscard]] std::string describe(const std::string& name) const {
        return zip_ ? root_.string() + ":" + name : (root_ / name).string();
    }

    [[nodiscard]] std::vector<uint8_t> read(const std::string& name) const {
        return zip_ ? zip_->read(name) : read_plain(root_ / name);
    }

private:
    void list_directory() {
        std::error_code ec;
        std::filesystem::recursive_directory_iterator it(root_, ec), end;
        for (; !ec && it != end; it.increment(ec))
            if (!it->is_directory(ec)) files_.push_back(it->path().lexically_relative(root_).generic_string());
        if (ec) fail(root_.string(), ": cannot list the directory: ", ec.message());
    }

    // Only regular files are read: a FIFO or a device named *.png would block or never end.
    static std::vector<uint8_t> read_plain(const std::filesystem::path& path) {
        struct stat st {};
        if (::stat(path.c_str(), &st) != 0) fail(path.string(), ": cannot read: ", std::strerror(errno));
        check(S_ISREG(st.st_mode), path.string(), ": not a regular file");
        std::ifstream in(path, std::ios::binary);
        if (!in) fail(path.string(), ": cannot read: ", std::strerror(errno));
        std::vector<uint8_t> bytes(static_cast<std::size_t>(st.st_size));
        in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        check(in.gcount() == static_cast<std::streamsize>(bytes.size()), path.string(), ": read failed after ",
              in.gcount(), " of ", bytes.size(), " bytes");
        return bytes;
    }

    std::filesystem::path root_;
    std::optional<ZipArchive> zip_;
    std::vector<std::string> files_;
};

}  // namespace mpnet::data
