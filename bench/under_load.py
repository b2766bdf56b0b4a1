#!/usr/bin/env python3
"""Times one network benchmark of mpnet and of PyTorch on a quiet machine and beside two kinds
of competitor, and prints how much each slows down:

  quiet        nothing else running;
  beside yes   a single-threaded busy loop (`yes > /dev/null`) takes one core;
  beside twin  a second copy of the same benchmark (same program, same threads) runs
               alongside, restarted as often as it ends.

Each side runs twice: with OpenMP's default spinning (GNU OpenMP spins about 300 000
iterations at a barrier before it sleeps) and with GOMP_SPINCOUNT=10000, the bound that
mpnet's programs set for themselves (examples/openmp_spin.hpp). Bounding it for PyTorch too
keeps the comparison about the code, not the setting.

  python3 bench/under_load.py --build build/release --python /usr/bin/python3 --python VENV/bin/python
  python3 bench/under_load.py --build build/release --case network/inference/fmnist-s/64 --markdown

With one of two cores taken, a program's fair share is about half its quiet speed, so
"x quiet" near 2 beside a competitor is graceful; far above 2 means threads waiting at
barriers for a descheduled peer.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import PRESETS, posix_alternation, torch_variants  # noqa: E402

SPIN_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def environment(spin):
    env = {k: v for k, v in os.environ.items() if k not in SPIN_ENV}
    if spin is not None:
        env["GOMP_SPINCOUNT"] = str(spin)
    return env


def mpnet_command(binary, case, repetitions, out):
    return [binary, f"--benchmark_filter={posix_alternation([case])}", f"--benchmark_out={out}",
            "--benchmark_out_format=json", f"--benchmark_repetitions={repetitions}", "--benchmark_min_time=0.1",
            "--benchmark_report_aggregates_only=true"]


def torch_command(python, compiled, threads, case, repetitions, out):
    preset = next(p for p in PRESETS if f"/{p}/" in case)
    return [python, os.path.join(HERE, "torch_layers.py"), "--filter", f"^{case}$", "--preset", preset,
            "--threads", str(threads), "--repetitions", str(repetitions), "--min-time", "0.1",
            "--json", out] + (["--compile"] if compiled else [])


def mpnet_time(path):
    """The median's time (one repetition reports no aggregates: its run's time)."""
    runs = json.load(open(path))["benchmarks"]
    for b in runs:
        if b.get("error_occurred"):
            sys.exit(f"under_load.py: {b['name']}: {b.get('error_message', 'skipped')}")
    chosen = [b for b in runs if b.get("aggregate_name") == "median"] or [b for b in runs if b.get("run_type") == "iteration"]
    if not chosen:
        sys.exit(f"under_load.py: no time in {path}")
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[chosen[0].get("time_unit", "ns")]
    return chosen[0]["real_time"] * scale


def torch_time(path):
    return json.load(open(path))["benchmarks"][0]["time_ms"]


class Competitor:
    """A process (restarted whenever it ends) that runs while the measured one does."""

    def __init__(self, command, env):
        self.command, self.env, self.proc = command, env, None

    def __enter__(self):
        if self.command:
            self.proc = subprocess.Popen(["bash", "-c", f"while true; do {self.command}; done"], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(2)  # let it reach its busy part (a twin's own start-up is mostly single-threaded)
        return self

    def __exit__(self, *exc):
        if self.proc:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def measure(make_command, read_time, env, load):
    """Milliseconds per call of the measured command under the given load."""
    with tempfile.TemporaryDirectory() as tmp:
        out, twin_out = os.path.join(tmp, "out.json"), os.path.join(tmp, "twin.json")
        competitor = {"quiet": None, "yes": "yes > /dev/null", "twin": shlex.join(make_command(twin_out)) +
                      " > /dev/null 2>&1"}[load]
        with Competitor(competitor, env):
            result = subprocess.run(make_command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
        if result.returncode != 0:
            sys.exit(f"under_load.py: {' '.join(make_command(out))} failed:\n{result.stderr[-2000:]}")
        return read_time(out)


def sides(args):
    """(label, command maker, time reader) for mpnet and each PyTorch variant asked for."""
    binary = os.path.join(args.build, "bench", "mpnet_bench")
    if not os.access(binary, os.X_OK):
        sys.exit(f"under_load.py: {binary} not found; build the project first")
    out = [("mpnet", lambda o: mpnet_command(binary, args.case, args.repetitions, o), mpnet_time)]
    args.torch_bf16 = False  # float32 only: compare.py's variants, eager and (with --compile) compiled
    for label, python, compiled, _ in torch_variants(args):
        out.append((f"PyTorch {label}", lambda o, p=python, c=compiled: torch_command(p, c, args.threads, args.case,
                                                                                   args.repetitions, o), torch_time))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="CMake build directory (default: build)")
    ap.add_argument("--case", default="network/train_step/fmnist-s/64", help="the benchmark (both sides' name)")
    ap.add_argument("--python", action="append", help="a Python that has PyTorch (repeatable)")
    ap.add_argument("--compile", action="store_true", help="also PyTorch 2's torch.compile")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (mpnet uses OpenMP's default)")
    ap.add_argument("--repetitions", type=int, default=5, help="calls timed per run; the median is reported")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    rows = []
    for label, make_command, read_time in sides(args):
        for spin_label, spin in (("default spin", None), ("spin 10 000", 10000)):
            times = {}
            for load in ("quiet", "yes", "twin"):
                times[load] = measure(make_command, read_time, environment(spin), load)
                print(f"{label}, {spin_label}, {load}: {times[load]:.0f} ms", file=sys.stderr, flush=True)
            rows.append((f"{label}, {spin_label}", times))

    cell = lambda t, q: f"{t:.0f} ms ({t / q:.1f}x)"  # noqa: E731
    header = ["", "quiet", "beside yes (x quiet)", "beside twin (x quiet)"]
    if args.markdown:
        print(f"`{args.case}`, medians of {args.repetitions}\n")
        print("| " + " | ".join(header) + " |\n|---|--:|--:|--:|")
        for name, t in rows:
            print(f"| {name} | {t['quiet']:.0f} ms | {cell(t['yes'], t['quiet'])} | {cell(t['twin'], t['quiet'])} |")
    else:
        print(f"{args.case}, medians of {args.repetitions}")
        print(f"{header[0]:<40} {header[1]:>10} {header[2]:>24} {header[3]:>24}")
        for name, t in rows:
            print(f"{name:<40} {t['quiet']:>7.0f} ms {cell(t['yes'], t['quiet']):>24} {cell(t['twin'], t['quiet']):>24}")


if __name__ == "__main__":
    main()
