// Runs a shell command for the command-line tests and returns its exit status and its
// stdout and stderr together.
#pragma once
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace mpnet::test {

struct CommandResult {
    int status;          // the exit status, or -1 when the command did not exit normally
    std::string output;  // stdout and stderr together
};

inline CommandResult run_command(const std::string& command) {
    const std::string cmd = command + " 2>&1";
    FILE* pipe = ::popen(cmd.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::string out;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
    const int status = ::pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace mpnet::test
