#!/usr/bin/env python3
"""Runs mpnet's benchmark suite and its PyTorch counterpart and prints one table:
layer, mpnet time, PyTorch time, ratio (PyTorch time / mpnet time: above 1, mpnet is
faster), and mpnet's achieved rate with its fraction of the machine's measured peak.

  python3 bench/compare.py --build build                      # the CPU suite, fmnist-s shapes
  python3 bench/compare.py --build build --filter 'mpconv3x3/fwd'
  python3 bench/compare.py --build build --preset edm2-img64-xs --filter block
  python3 bench/compare.py --build build --backend cuda --python python3   # the GPU suite
  python3 bench/compare.py --build build --python /usr/bin/python3 --python VENV/bin/python --compile
      # against several PyTorch installations, eager and (PyTorch 2) torch.compile'd:
      # each row is compared with the fastest, which the table names
  python3 bench/compare.py --build build --filter network --torch-bf16 ...
      # also PyTorch's autocast bf16 for the network rows: mpnet's bf16 rows (names ending
      # /bf16) are compared with the fastest PyTorch in any precision, float32 rows with the
      # fastest float32 PyTorch

Times are medians over --repetitions runs. The network benchmarks run one per process on
both sides, so that each process's memory figures are that benchmark's own. On the GPU,
layers with matrix work run in each math mode (names ending /fp32, /fp16, /bf16); PyTorch
runs float32 without TF32 and is paired with the /fp32 rows.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("fmnist-s", "edm2-img64-xs")
SUFFIX = re.compile(r"(/iterations:\d+|/real_time|/manual_time)+$")
MATH_MODE = re.compile(r"/(fp32|fp16|bf16)$")


def posix_alternation(names):
    """A POSIX extended regex (Google Benchmark's filter) matching exactly these names."""
    esc = lambda s: re.sub(r"([.+*?()\[\]{}|^$\\])", r"\\\1", s)  # noqa: E731
    return "^(" + "|".join(esc(n) for n in names) + ")((/iterations:[0-9]+)|(/real_time)|(/manual_time))*$"


def list_benchmarks(binary):
    out = subprocess.run([binary, "--benchmark_list_tests"], check=True, capture_output=True, text=True).stdout
    return list(dict.fromkeys(SUFFIX.sub("", line.strip()) for line in out.splitlines() if line.strip()))


def select(names, pattern, preset):
    keep = []
    for n in names:
        parts = n.split("/")
        in_preset = n.startswith("peak/") or preset == "all" or (len(parts) > 2 and preset in parts[2:4])
        if in_preset and re.search(pattern, n):
            keep.append(n)
    return keep


def run_mpnet(binary, names, args):
    """{name: (time_ms, counters)} from Google Benchmark's JSON (median aggregates)."""
    results = {}
    groups = [[n for n in names if not n.startswith("network/")]] + [[n] for n in names if n.startswith("network/")]
    for group in filter(None, groups):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [binary, f"--benchmark_filter={posix_alternation(group)}", f"--benchmark_out={out.name}",
                   "--benchmark_out_format=json", f"--benchmark_repetitions={args.repetitions}",
                   f"--benchmark_min_time={args.min_time}", "--benchmark_report_aggregates_only=true"]
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            data = json.load(open(out.name))
        if args.mpnet_json:
            with open(args.mpnet_json, "a") as f:
                json.dump(data, f)
                f.write("\n")
        for b in data["benchmarks"]:
            if b.get("error_occurred"):
                print(f"{b['name']}: {b.get('error_message', 'skipped')}", file=sys.stderr)
                continue
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue
            name = SUFFIX.sub("", b.get("run_name", b["name"]))
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
            counters = {k: v for k, v in b.items() if k in ("GFLOP/s", "GB/s", "peak", "TFLOP/s", "img/s", "peak_MiB",
                                                             "state_MiB", "rss_growth_MiB", "pool_held_MiB")}
            results[name] = (b["real_time"] * scale, counters)
    return results


def torch_name(name, backend="cpu"):
    """The PyTorch counterpart's name, without the math-mode suffix: on the GPU float32 rows
    only; on the CPU bf16 rows too (compared with PyTorch in any precision)."""
    mode = MATH_MODE.search(name)
    if name.startswith("peak/"):
        return None
    if mode and mode.group(1) != "fp32" and not (backend == "cpu" and mode.group(1) == "bf16"):
        return None
    return MATH_MODE.sub("", name)


def any_precision(name):
    """Whether an mpnet row is compared with PyTorch in any precision (a CPU bf16 row)."""
    mode = MATH_MODE.search(name)
    return bool(mode) and mode.group(1) == "bf16"


def torch_variants(args):
    """(label, python, compile, autocast) for every PyTorch run asked for: each --python eager,
    with --compile also compiled where its PyTorch has torch.compile, and with --torch-bf16
    each of those again under autocast bf16."""
    variants = []
    for python in args.python or ["/usr/bin/python3"]:
        probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            sys.exit(f"compare.py: --python {python} cannot import torch: "
                     f"{(probe.stderr.strip().splitlines() or ['no message'])[-1]}")
        version = probe.stdout.strip().split("+")[0]
        modes = [("eager", False)] + ([("compile", True)] if args.compile and int(version.split(".")[0]) >= 2 else [])
        for autocast in [None] + (["bf16"] if args.torch_bf16 else []):
            for mode, compiled in modes:
                variants.append((f"{version} {mode}" + (f" {autocast}" if autocast else ""), python, compiled, autocast))
    return variants


def run_torch_all(names, args, variants):
    """({name: (time_ms, extra, label)} of the fastest float32 variant of each row, the same
    over every variant (float32 or autocast), {name: [(label, time_ms)] of every variant})."""
    best, best_any, every = {}, {}, {}
    for label, python, compiled, autocast in variants:
        for name, (t, extra) in run_torch(names, args, python, compiled, autocast).items():
            if (compiled or autocast) and not name.startswith("network/"):
                continue  # layer rows are eager float32 in every variant
            every.setdefault(name, []).append((label, t))
            for table in ([best_any] if autocast else [best, best_any]):
                if name not in table or t < table[name][0]:
                    table[name] = (t, extra, label)
    return best, best_any, every


def run_torch(names, args, python, compiled, autocast):
    """{name: (time_ms, extra)} from bench/torch_layers.py, network cases one per process."""
    results = {}
    names = list(dict.fromkeys(t for t in (torch_name(n, args.backend) for n in names) if t))
    layers = [] if compiled or autocast else [n for n in names if not n.startswith("network/")]
    groups = [layers] + [[n] for n in names if n.startswith("network/")]
    for group in filter(None, groups):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            regex = "^(" + "|".join(re.escape(n) for n in group) + ")$"
            cmd = [python, os.path.join(HERE, "torch_layers.py"), "--filter", regex, "--json", out.name,
                   "--device", args.backend, "--threads", str(args.threads), "--min-time", str(args.min_time),
                   "--repetitions", str(args.repetitions)] + (["--compile"] if compiled else []) + \
                (["--autocast", autocast] if autocast else [])
            for p in PRESETS:
                if all(f"/{p}/" in n for n in group):
                    cmd += ["--preset", p]
                    break
            if subprocess.run(cmd).returncode != 0:
                # e.g. PyTorch 1.13's autocast fails inside the network: that variant has no time
                print(f"warning: {' '.join(cmd)} failed; those rows have no time from it", file=sys.stderr)
                continue
            data = json.load(open(out.name))
        if args.torch_json:
            with open(args.torch_json, "a") as f:
                json.dump(data, f)
                f.write("\n")
        for b in data["benchmarks"]:
            results[b["name"]] = (b["time_ms"], {k: v for k, v in b.items() if k in ("rss_growth_MiB", "peak_MiB")})
    return results


def fmt_time(ms):
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def rate(counters):
    for key, unit in (("GFLOP/s", "GFLOP/s"), ("GB/s", "GB/s"), ("TFLOP/s", "TFLOP/s")):
        if key in counters:
            value = f"{counters[key]:.1f} {unit}"
            if "peak" in counters:
                value += f" ({100 * counters['peak']:.0f}%)"
            return value
    return ""


def counterpart(n, th, backend):
    """(time_ms, extra, label) of the PyTorch row mpnet row n is compared with."""
    best, best_any, _ = th
    return (best_any if any_precision(n) else best).get(torch_name(n, backend), (None, {}, "-"))


def print_table(names, mp, th, markdown, backend):
    header = ["benchmark", "mpnet ms", "fastest PyTorch ms", "PyTorch", "ratio", "mpnet rate (of peak)"]
    rows = []
    for n in names:
        if n not in mp:
            continue
        t_mp, counters = mp[n]
        t_th, _, label = counterpart(n, th, backend)
        ratio = f"{t_th / t_mp:.2f}" if t_th else "-"
        rows.append([n, fmt_time(t_mp), fmt_time(t_th), label, ratio, rate(counters)])
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        for r in rows:
            print("| `" + r[0] + "` | " + " | ".join(r[1:]) + " |")
        return
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("-" * len(line(header)))
    for r in rows:
        print(line(r))


def print_network(names, mp, th, backend):
    for n in names:
        if n.startswith("network/") and n in mp:
            t_mp, c = mp[n]
            t_th, extra, label = counterpart(n, th, backend)
            mem = f"mpnet pool peak {c.get('peak_MiB', 0):.0f} MiB"
            if "pool_held_MiB" in c:
                mem += f" (held {c['pool_held_MiB']:.0f} MiB)"
            if "rss_growth_MiB" in c:
                mem += f", RSS growth {c['rss_growth_MiB']:.0f} MiB"
            if extra.get("rss_growth_MiB") is not None:
                mem += f"; PyTorch RSS growth {extra['rss_growth_MiB']:.0f} MiB"
            if extra.get("peak_MiB") is not None:
                mem += f"; PyTorch peak allocated {extra['peak_MiB']:.0f} MiB"
            speed = f"{t_th / t_mp:.2f}x the speed of PyTorch {label}" if t_th else "no PyTorch time"
            print(f"{n}: mpnet {fmt_time(t_mp)} ms, PyTorch {fmt_time(t_th)} ms ({speed}); {mem}")
            variants = th[2].get(torch_name(n, backend), [])
            if len(variants) > 1:
                print("    every PyTorch run: " + ", ".join(f"{label} {fmt_time(t)} ms" for label, t in variants))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="CMake build directory (default: build)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--filter", default=".", help="regex on benchmark names, e.g. 'mp_silu|attention'")
    ap.add_argument("--preset", default="fmnist-s", choices=["all", *PRESETS],
                    help="which network's shapes (default fmnist-s; edm2-img64-xs takes many minutes)")
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per repetition (default 0.1)")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (mpnet uses OpenMP's default)")
    ap.add_argument("--python", action="append",
                    help="a Python that has PyTorch (repeatable; default /usr/bin/python3)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the network rows under torch.compile (PyTorch 2 installations)")
    ap.add_argument("--torch-bf16", action="store_true",
                    help="also time PyTorch's network rows under autocast bf16 (CPU bf16 rows are compared with the fastest "
                         "PyTorch in any precision)")
    ap.add_argument("--no-torch", action="store_true", help="time mpnet only")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--mpnet-json", help="append Google Benchmark's JSON output to this file")
    ap.add_argument("--torch-json", help="append the PyTorch script's JSON output to this file")
    args = ap.parse_args()

    target = "bench_cuda_layers" if args.backend == "cuda" else "mpnet_bench"
    binary = os.path.join(args.build, "bench", *(["cuda"] if args.backend == "cuda" else []), target)
    if not os.path.exists(binary):
        sys.exit(f"{binary} not found: build it with  cmake --build {args.build} --target {target}")
    names = select(list_benchmarks(binary), args.filter, args.preset)
    if not names:
        sys.exit("no benchmark matches (the CUDA suite lists nothing without a GPU)")
    variants = [] if args.no_torch else torch_variants(args)  # a PyTorch that fails is refused before any timing
    mp = run_mpnet(binary, names, args)
    th = run_torch_all(names, args, variants)
    print()
    print_table(names, mp, th, args.markdown, args.backend)
    print()
    print_network(names, mp, th, args.backend)


if __name__ == "__main__":
    main()
