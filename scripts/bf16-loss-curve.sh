#!/usr/bin/env bash
# Trains fmnist-s on Fashion-MNIST four times (float32 and bf16 products, seeds 0 and 1) and
# prints their loss curves side by side: bf16 training matches float32 when its difference
# from the float32 run of the same seed is within the float32 runs' difference between seeds.
#   MPNET_LOSS_IMAGES  training length in images (default 40960: 640 steps of 64)
#   MPNET_LOSS_OUT     where the four run directories go (default out/bf16-loss)
# Needs a CPU with AVX512-BF16 and the programs built (scripts/demo.sh or scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
images=${MPNET_LOSS_IMAGES:-40960}
out=${MPNET_LOSS_OUT:-out/bf16-loss}
bin=build/release/examples/mpnet-train
for seed in 0 1; do
    for math in fp32 bf16; do
        dir="$out/$math-seed$seed"
        start=$(date +%s)
        "$bin" --outdir "$dir" --data fashion-mnist --preset fmnist-s --batch 64 --duration "$images" \
            --status 1280 --snapshot "$images" --checkpoint "$images" --seed "$seed" --math "$math" --quiet
        echo "$math seed $seed: $(($(date +%s) - start)) s" >&2
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
runs = {f"{m} s{s}": [json.loads(l)["loss"] for l in open(f"{out}/{m}-seed{s}/stats.jsonl")]
        for s in (0, 1) for m in ("fp32", "bf16")}
names = list(runs)
n = min(map(len, runs.values()))
print("images  " + "  ".join(f"{k:>8}" for k in names) + "   bf16-fp32 (same seed)   fp32 s1-s0")
for i in range(n):
    r = [runs[k][i] for k in names]
    print(f"{(i + 1) * 1280:6d}  " + "  ".join(f"{v:8.4f}" for v in r) +
          f"   {r[1] - r[0]:+8.4f} {r[3] - r[2]:+8.4f}     {r[2] - r[0]:+8.4f}")
half = range(n // 2, n)
mean = {k: statistics.fmean(runs[k][i] for i in half) for k in names}
print(f"\nmean loss over the second half ({len(half)} intervals): " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
precision = statistics.fmean(abs(runs[f"bf16 s{s}"][i] - runs[f"fp32 s{s}"][i]) for s in (0, 1) for i in half)
seeds = statistics.fmean(abs(runs[f"{m} s1"][i] - runs[f"{m} s0"][i]) for m in ("fp32", "bf16") for i in half)
print(f"mean |bf16 - fp32| at the same seed: {precision:.4f}; mean |seed 1 - seed 0| at the same math: {seeds:.4f}")
PY
