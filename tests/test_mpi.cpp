// Data parallelism under a real MPI launcher (docs/distributed.md): mpnet-train over 2 and 4
// processes ends bit-identical to one process, a run whose rank dies resumes exactly, ranks
// started with other options or a stalled rank stop the job with a clear error instead of
// hanging, and mpnet-generate over 3 processes writes the files one process writes.
//
// Every launch runs under `timeout`, so that a hang fails the test instead of the suite.
// Built only when the programs were built with MPI (MPNET_MPIEXEC).
#ifdef MPNET_MPIEXEC
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "bars_data.hpp"
#include "scratch_dir.hpp"

namespace fs = std::filesystem;

namespace {

struct Run {
    int exit_code = -1;
    std::string output;
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

fs::path fresh_dir(const std::string& name) {
    return mpnet::testing::fresh_dir("mpnet-test-mpi", name);
}

// Runs a shell command (stdout and stderr captured) with one OpenMP thread per process, so
// that ranks do not fight over the cores, and with what OpenMPI needs in a container run as
// root on a machine with fewer cores than ranks.
Run shell(const std::string& command) {
    const fs::path out = mpnet::testing::scratch_path("mpnet-test-mpi", "output.txt");
    const std::string cmd = "export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                            "OMPI_MCA_rmaps_base_oversubscribe=1; (" + command + ") > " + out.string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    Run r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.output = slurp(out);
    fs::remove(out);
    return r;
}

// "timeout 300 mpirun -np K PROGRAM ARGS": a hang becomes exit status 124.
std::string mpirun(int processes, const std::string& program, const std::string& args) {
    return "timeout 300 " + std::string(MPNET_MPIEXEC) + " -np " + std::to_string(processes) + " " + program + " " + args;
}

const std::string train_exe = MPNET_TRAIN_EXE;
const std::string generate_exe = MPNET_GENERATE_EXE;

// Batch 16 in rounds of 4 (--batch-gpu): 4 chunks per step, 2 per rank over 2 processes and
// 1 over 4, so that both the within-rank and the across-rank tree sums are exercised.
std::string train_args(const fs::path& outdir, const fs::path& data, int duration) {
    return "--outdir " + outdir.string() + " --data " + data.string() +
           " --preset fmnist-xs --batch 16 --batch-gpu 4 --duration " + std::to_string(duration) +
           " --status 16 --checkpoint 16 --snapshot 1000 --lr 0.01 --rampup 16 --dropout 0.1 --quiet";
}

fs::path bars_folder() {
    const auto dir = fresh_dir("data");
    mpnet::testing::write_bars_folder(dir);
    return dir;
}

// The files of a run directory that must not depend on the process count.
std::map<std::string, std::string> run_files(const fs::path& dir) {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") out[e.path().filename().string()] = slurp(e.path());
    return out;
}

std::vector<double> losses(const fs::path& dir) {
    std::vector<double> out;
    std::ifstream in(dir / "stats.jsonl");
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
    return out;
}

}  // namespace

TEST_CASE("mpi: mpnet-train over 2 and 4 processes gives one process's losses, snapshots and checkpoints bit for bit") {
    const auto data = bars_folder();
    const auto one = fresh_dir("np1");
    const Run r1 = shell(mpirun(1, train_exe, train_args(one, data, 64)));
    INFO(r1.output);
    REQUIRE(r1.exit_code == 0);
    const auto want = run_files(one);
    REQUIRE(want.size() == 4);  // 2 checkpoints, 2 EMA snapshots
    REQUIRE(losses(one).size() == 4);
    for (int processes : {2, 4}) {
        CAPTURE(processes);
        const auto dir = fresh_dir("np" + std::to_string(processes));
        const Run r = shell(mpirun(processes, train_exe, train_args(dir, data, 64)));
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        CHECK(slurp(dir / "log.txt").find("data parallel over " + std::to_string(processes) + " processes") !=
              std::string::npos);
        CHECK(losses(dir) == losses(one));
        const auto got = run_files(dir);
        REQUIRE(got.size() == want.size());
        for (const auto& [name, bytes] : want) {
            CAPTURE(name);
            CHECK(got.at(name) == bytes);
        }
    }
}

TEST_CASE("mpi: a run whose rank 0 is killed while writing a checkpoint stops, and resumes, over another "
          "number of processes, to the bits of an uninterrupted run") {
    const auto data = bars_folder();
    const auto straight = fresh_dir("straight"), crashed = fresh_dir("crashed");
    REQUIRE(shell(train_exe + " " + train_args(straight, data, 96)).exit_code == 0);

    // Rank 0 kills itself (SIGKILL) just before renaming the checkpoint at 48 images into place.
    const Run killed = shell("MPNET_FAULT_KILL_BEFORE_RENAME=training-state-000000000048 " +
                             mpirun(2, train_exe, train_args(crashed, data, 96)));
    INFO(killed.output);
    CHECK(killed.exit_code != 0);
    CHECK(killed.exit_code != 124);  // the launcher ended the job: rank 1 did not hang
    CHECK(!fs::exists(crashed / "training-state-000000000048.safetensors"));
    REQUIRE(fs::exists(crashed / "training-state-000000000032.safetensors"));

    // Resumed over 4 processes: the checkpoint holds the global state, whatever the process count.
    const Run resumed = shell(mpirun(4, train_exe, train_args(crashed, data, 96)));
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(slurp(crashed / "log.txt").find("resuming from") != std::string::npos);
    const std::string a = slurp(straight / "training-state-000000000096.safetensors"),
                      b = slurp(crashed / "training-state-000000000096.safetensors");
    REQUIRE(!a.empty());
    CHECK(a == b);
    CHECK(losses(crashed) == losses(straight));
}

TEST_CASE("mpi: ranks started with other options or other arithmetic stop the job, rank 0 naming the difference") {
    const auto data = bars_folder();
    const struct {
        std::string rank0, rank1, named;
    } cases[] = {
        {" --seed 1", " --seed 2", "options: seed 1 vs 2"},
        {"", " --precision bf16", "arithmetic: precision \"fp32\" vs \"bf16\""},
    };
    for (const auto& c : cases) {
        CAPTURE(c.named);
        const auto dir = fresh_dir("mixed");
        const std::string args = train_args(dir, data, 32);
        const Run r = shell("timeout 300 " + std::string(MPNET_MPIEXEC) + " -np 1 " + train_exe + " " + args + c.rank0 +
                            " : -np 1 " + train_exe + " " + args + c.rank1);
        INFO(r.output);
        CHECK(r.exit_code == 1);
        CHECK(r.output.find("rank 1 was started with other settings than rank 0 (" + c.named +
                            ", rank 0's value first); every rank must run the same command") != std::string::npos);
        CHECK(!fs::exists(dir / "options.json"));  // nothing was started
    }
}

TEST_CASE("mpi: a stalled rank stops the job after --collective-timeout instead of hanging it") {
    const auto data = bars_folder();
    const auto dir = fresh_dir("stalled");
    // Rank 0 (the pid in DIR/.lock) is stopped once the run is under way; rank 1 then waits
    // in the gradient sum until its watchdog ends the job.
    const Run r = shell(mpirun(2, train_exe, train_args(dir, data, 1000000) + " --collective-timeout 2") +
                        " & job=$!; for i in $(seq 600); do [ -s " + (dir / "stats.jsonl").string() +
                        " ] && break; sleep 0.1; done; kill -STOP $(cat " + (dir / ".lock").string() +
                        "); wait $job");
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != 124);
    // Rank 1 waits in the gradient sum or in the loss gather, depending on where rank 0 stopped.
    CHECK(r.output.find("error: rank 1 of 2: ") != std::string::npos);
    CHECK(r.output.find(" did not finish within 2 s: another rank stopped or stalled; ending the job") !=
          std::string::npos);
}

TEST_CASE("mpi: mpnet-generate over 3 processes writes the PNGs, grid and tensor of one process") {
    const auto data = bars_folder();
    const auto run = fresh_dir("net");
    REQUIRE(shell(train_exe + " " + train_args(run, data, 16)).exit_code == 0);
    const auto net = run / "network-snapshot-0000000-0.100.safetensors";
    REQUIRE(fs::exists(net));
    std::map<std::string, std::string> outputs[2];
    for (int i = 0; i < 2; ++i) {
        const int processes = i == 0 ? 1 : 3;
        CAPTURE(processes);
        const auto out = fresh_dir("generated" + std::to_string(processes));
        // 11 seeds in batches of 2: 6 batches, dealt 2 to each rank, the last one short.
        const Run r = shell(mpirun(processes, generate_exe,
                                   "--net " + net.string() + " --seeds 0-10 --batch 2 --steps 6 --S-churn 10 --outdir " +
                                       (out / "images").string() + " --grid " + (out / "grid.png").string() +
                                       " --out-tensor " + (out / "images.safetensors").string() + " --quiet"));
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        for (const auto& e : fs::recursive_directory_iterator(out))
            if (e.is_regular_file()) outputs[i][fs::relative(e.path(), out).string()] = slurp(e.path());
    }
    CHECK(outputs[0].size() == 13);  // 11 images, the grid, the tensor
    CHECK(outputs[0] == outputs[1]);
}

TEST_CASE("mpi: mpnet-generate ranks started with other arguments stop the job, rank 0 naming the difference") {
    const auto data = bars_folder();
    const auto run = fresh_dir("net-mixed");
    REQUIRE(shell(train_exe + " " + train_args(run, data, 16)).exit_code == 0);
    const auto net = run / "network-snapshot-0000000-0.100.safetensors";
    const auto out = fresh_dir("generated-mixed");
    const std::string args = "--net " + net.string() + " --seeds 0-3 --batch 2 --outdir " + out.string() + " --quiet";
    const Run r = shell("timeout 300 " + std::string(MPNET_MPIEXEC) + " -np 1 " + generate_exe + " " + args +
                        " --steps 6 : -np 1 " + generate_exe + " " + args + " --steps 8");
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("rank 1 was started with other arguments than rank 0 (argument 11: '6' vs '8', rank 0's "
                        "value first); every rank must run the same command") != std::string::npos);
    CHECK(fs::is_empty(out));  // no image was written
}
#endif
