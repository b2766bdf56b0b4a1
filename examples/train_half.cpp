// mpnet-train's trainers on the CPU with activations stored in 16 bits (--precision).
#include "mpnet/backend/cpu/cpu.hpp"
#include "train_on.hpp"

namespace mpnet::cli {

double train_on_cpu_half(const train::ResolvedRun& run, const data::Dataset& ds,
                         const std::function<void(const std::string&)>& log, dist::Communicator& comm,
                         const std::function<void()>& holding_dir, const std::string& precision) {
    if (precision == "fp16") return train_on<CpuBackend, float16>(run, ds, log, comm, holding_dir);
    check(precision == "bf16", "train_on_cpu_half: precision '", precision, "' is not fp16 or bf16");
    return train_on<CpuBackend, bfloat16>(run, ds, log, comm, holding_dir);
}

}  // namespace mpnet::cli
