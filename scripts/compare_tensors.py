#!/usr/bin/env python3
"""Compares the float32 tensors of two safetensors files (e.g. mpnet-generate --out-tensor
on the GPU and on the CPU): for each tensor, the largest absolute difference relative to
the second file's largest magnitude. Prints the tensors over --tolerance and a summary, and
exits 1 when any is over it (or the files hold other tensors or shapes)."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_file import read_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("a")
    ap.add_argument("b", help="the reference")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest relative difference (default 1e-3)")
    args = ap.parse_args()
    a, b = read_safetensors(args.a), read_safetensors(args.b)
    if sorted(a) != sorted(b):
        sys.exit(f"the files hold different tensors: {sorted(a)} and {sorted(b)}")
    worst, worst_name = 0.0, ""
    for name in sorted(a):
        if a[name].shape != b[name].shape:
            sys.exit(f"{name}: shape {a[name].shape} against {b[name].shape}")
        diff = float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) if a[name].size else 0.0
        scale = float(np.max(np.abs(b[name]))) if b[name].size else 0.0
        rel = diff / scale if scale > 0 else diff
        if not rel <= args.tolerance or len(a) == 1:  # NaN too
            print(f"{name} {list(a[name].shape)}: max |difference| {diff:.3g}, relative to max |value| {rel:.3g}")
        if not rel <= worst:
            worst, worst_name = rel, name
    print(f"{len(a)} tensor(s); largest relative difference {worst:.3g}" + (f" ({worst_name})" if worst_name else ""))
    if not worst <= args.tolerance:
        sys.exit(f"relative difference {worst:.3g} exceeds the tolerance {args.tolerance:g}")
    print(f"within the tolerance {args.tolerance:g}")


if __name__ == "__main__":
    main()
