#!/usr/bin/python3
"""PyTorch timings of the layers and the whole network that mpnet_bench times.

The network is bench/torch_edm2.py, the EDM2 reference's modules written as the
reference writes them, so that it runs the kernels a PyTorch user of EDM2 runs. Each benchmark has the name of its mpnet_bench counterpart
(<layer>/<fwd|bwd>/<preset>/<shape>), which is how bench/compare.py pairs them.

  fwd: the layer's forward with autograd recording (inputs and parameters require grad);
  bwd: torch.autograd.grad of a recorded forward, gradients of the input(s) and parameters;
  network/inference: eval mode under torch.no_grad();
  network/train_step: the EDM2 training step (noise, forward with logvar, loss, backward,
      non-finite gradients zeroed, torch.optim.Adam step).

With --autocast bf16 the network cases run their forward (and loss) under
torch.autocast(dtype=torch.bfloat16): PyTorch's own mixed precision, matrix products and
convolutions in bf16, weights and optimizer in float32.

Run with Debian's PyTorch:  /usr/bin/python3 bench/torch_layers.py --filter 'mp_silu' --threads 2
On a GPU (--device cuda) every call is followed by torch.cuda.synchronize(), TF32 is off
(float32 as mpnet's fp32 mode computes it), and the network cases report
torch.cuda.max_memory_allocated.
"""
import argparse
import json
import os
import re
import resource
import statistics
import sys
import time

import numpy as np
import torch

from torch_edm2 import (PRESETS, Block, MPConv, MPFourier, Precond, attention, mp_cat, mp_silu, mp_sum, normalize,
                        resample)

DEVICE = torch.device("cpu")  # set by --device
COMPILE = False  # set by --compile: the network cases run torch.compile'd (inductor)
AUTOCAST = None  # set by --autocast bf16: the network cases' forward runs under torch.autocast


def mixed_precision():
    """The context the network cases' forward runs in: autocast to AUTOCAST, or nothing."""
    if AUTOCAST is None:
        return torch.autocast(DEVICE.type, enabled=False)
    return torch.autocast(DEVICE.type, dtype=AUTOCAST)


def edm2_loss(net, images, labels, P_mean, P_std, sigma_data=0.5):
    rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
    sigma = (rnd_normal * P_std + P_mean).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    noise = torch.randn_like(images) * sigma
    denoised, logvar = net(images + noise, sigma, labels, return_logvar=True)
    return (weight / logvar.exp()) * ((denoised - images) ** 2) + logvar


def learning_rate(nimg, batch, ref_lr, ref_batches, rampup_img):
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(nimg / (ref_batches * batch), 1))
    if rampup_img > 0:
        lr *= min(nimg / rampup_img, 1)
    return lr


# ---- benchmark cases ---------------------------------------------------------------------


def build_precond(cfg):
    net = Precond(**cfg)
    with torch.no_grad():  # weights ~ N(0, 1), gains 0, as the reference initialises them
        for name, p in net.named_parameters():
            p.copy_(torch.zeros_like(p) if name.endswith("gain") else torch.randn_like(p))
    return net.to(DEVICE)


def dims(shape):
    return "x".join(str(int(s)) for s in shape)


def grad_case(forward, inputs, params=()):
    """(fwd, bwd) callables for a layer: forward(*inputs) recorded by autograd, and the
    gradients of every input and parameter from a fixed upstream gradient."""
    inputs = [t.requires_grad_(True) for t in inputs]
    wrt = inputs + list(params)

    def fwd():
        return forward(*inputs)

    def bwd_setup():
        y = forward(*inputs)
        dy = torch.randn_like(y)
        return lambda: torch.autograd.grad(y, wrt, dy, retain_graph=True)

    return fwd, bwd_setup


class Cases:
    """Named benchmark setups; each setup returns the callable to time."""

    def __init__(self):
        self.items = []

    def add(self, name, setup, expensive):
        if name not in (n for n, _, _ in self.items):
            self.items.append((name, setup, expensive))

    def add_pair(self, layer, preset, shape, make, expensive):
        """make() -> (forward, inputs, params)."""
        base = f"{preset}/{shape}"

        def fwd():
            f, inputs, params = make()
            return grad_case(f, inputs, params)[0]

        def bwd():
            f, inputs, params = make()
            return grad_case(f, inputs, params)[1]()

        self.add(f"{layer}/fwd/{base}", fwd, expensive)
        self.add(f"{layer}/bwd/{base}", bwd, expensive)


def layer_cases(cases, preset_name):
    spec = PRESETS[preset_name]
    cfg, n, expensive = spec["net"], spec["batch"], spec["expensive"]
    unet = build_precond(cfg).unet.eval()
    cblock = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
    cemb, cnoise, res_top = max(cblock), cblock[0], cfg["img_resolution"]
    add = lambda layer, shape, make: cases.add_pair(layer, preset_name, shape, make, expensive)  # noqa: E731
    rand = lambda *shape: torch.randn(*shape, device=DEVICE)  # noqa: E731

    for level, c in enumerate(cblock):
        r = res_top >> level
        s = (n, c, r, r)
        add("mp_silu", dims(s), lambda s=s: (mp_silu, [rand(s)], []))
        add("mp_sum", dims(s), lambda s=s: (lambda a, b: mp_sum(a, b, 0.3), [rand(s), rand(s)], []))
        add("pixel_norm", dims(s), lambda s=s: (lambda x: normalize(x, dim=1), [rand(s)], []))
        w = (c, c, 3, 3)
        add("normalize", dims(w), lambda w=w: (normalize, [rand(w)], []))

    # mp_cat: the first skip concatenation at each resolution; resampling by its input.
    resolution = lambda name: int(name.split("x")[0])  # noqa: E731
    main, cat_res, up_inputs, down_inputs = list(unet.enc.values())[-1].out_channels, set(), [], []
    for name, b in unet.dec.items():
        r = resolution(name)
        if "block" in name and r not in cat_res:
            cat_res.add(r)
            ca, cb = main, b.in_channels - main
            add("mp_cat", f"{n}x{ca}+{cb}x{r}x{r}",
                lambda ca=ca, cb=cb, r=r: (lambda a, b: mp_cat(a, b, t=0.5), [rand(n, ca, r, r), rand(n, cb, r, r)],
                                           []))
        if b.resample_mode == "up":
            up_inputs.append((n, b.in_channels, r // 2, r // 2))
        main = b.out_channels
    for name, b in unet.enc.items():
        if isinstance(b, Block) and b.resample_mode == "down":
            r = resolution(name)
            down_inputs.append((n, b.in_channels, 2 * r, 2 * r))
    for s in down_inputs:
        add("resample_down", dims(s), lambda s=s: (lambda x: resample(x, mode="down"), [rand(s)], []))
    for s in up_inputs:
        add("resample_up", dims(s), lambda s=s: (lambda x: resample(x, mode="up"), [rand(s)], []))

    for ch in dict.fromkeys([cnoise, cfg["logvar_channels"]]):
        def make(ch=ch):
            f = MPFourier(ch).to(DEVICE)
            return f, [rand(n)], []
        add("mp_fourier", f"{n}->{ch}", make)

    # Every distinct MPConv shape, in the order mpnet_bench registers them.
    convs = []
    def conv(cin, cout, r, k):
        if (cin, cout, r, k) not in convs:
            convs.append((cin, cout, r, k))
    for name, b in unet.enc.items():
        r = resolution(name)
        if isinstance(b, MPConv):
            conv(b.in_channels, b.out_channels, r, 3)
            continue
        if b.in_channels != b.out_channels:
            conv(b.in_channels, b.out_channels, r, 1)
        conv(b.out_channels, b.out_channels, r, 3)
    for name, b in unet.dec.items():
        r = resolution(name)
        conv(b.in_channels, b.out_channels, r, 3)
        conv(b.out_channels, b.out_channels, r, 3)
        if b.in_channels != b.out_channels:
            conv(b.in_channels, b.out_channels, r, 1)
    attentions = []
    for blocks in (unet.enc, unet.dec):
        for name, b in blocks.items():
            if isinstance(b, Block) and b.num_heads:
                r = resolution(name)
                conv(b.out_channels, 3 * b.out_channels, r, 1)
                conv(b.out_channels, b.out_channels, r, 1)
                if (b.out_channels, r, b.num_heads) not in attentions:
                    attentions.append((b.out_channels, r, b.num_heads))
    conv(cblock[0], cfg["img_channels"], res_top, 3)
    for blocks in (unet.enc, unet.dec):
        for b in blocks.values():
            if isinstance(b, Block):
                conv(cemb, b.out_channels, 0, 0)
    conv(cnoise, cemb, 0, 0)
    if cfg["label_dim"]:
        conv(cfg["label_dim"], cemb, 0, 0)
    conv(cfg["logvar_channels"], 1, 0, 0)
    for cin, cout, r, k in convs:
        layer = {3: "mpconv3x3", 1: "mpconv1x1", 0: "mpconv_linear"}[k]
        xs = (n, cin, r, r) if k else (n, cin)

        def make(cin=cin, cout=cout, k=k, xs=xs):
            m = MPConv(cin, cout, kernel=[k, k] if k else []).to(DEVICE).eval()
            return m, [rand(xs)], list(m.parameters())
        add(layer, f"{dims(xs)}->{cout}", make)

    for ch, r, heads in attentions:
        add("attention", f"{dims((n, ch, r, r))}_h{heads}",
            lambda ch=ch, r=r, heads=heads: (lambda q: attention(q, heads), [rand(n, 3 * ch, r, r)], []))

    for flavor, blocks in (("enc", unet.enc), ("dec", unet.dec)):
        for name, b in blocks.items():
            if not isinstance(b, Block):
                continue
            r = resolution(name)
            r_in = 2 * r if b.resample_mode == "down" else r // 2 if b.resample_mode == "up" else r

            def make(b=b, r_in=r_in):
                b.eval()
                return b, [rand(n, b.in_channels, r_in, r_in), rand(n, cemb)], list(b.parameters())
            add("block", f"{flavor}.{name}", make)


def network_cases(cases, preset_name):
    spec = PRESETS[preset_name]
    cfg, n, expensive, t = spec["net"], spec["batch"], spec["expensive"], spec["train"]

    def data():
        images = torch.randn(n, cfg["img_channels"], cfg["img_resolution"], cfg["img_resolution"], device=DEVICE) * 0.5
        labels = torch.nn.functional.one_hot(torch.arange(n, device=DEVICE) % cfg["label_dim"], cfg["label_dim"])
        labels = labels.float()
        return images, labels

    def inference():
        net = build_precond(cfg).eval()
        if COMPILE:
            net = torch.compile(net)
        images, labels = data()
        sigma = (torch.randn(n, device=DEVICE) * 1.2 - 1.2).exp()

        def run():
            with torch.no_grad(), mixed_precision():
                return net(images, sigma, labels)
        return run

    def train_step():
        net = build_precond(cfg).train()
        optimizer = torch.optim.Adam(net.parameters(), betas=(0.9, 0.99), eps=1e-8)
        if COMPILE:
            net = torch.compile(net)
        images, labels = data()
        state = {"nimg": 0}

        def run():
            optimizer.zero_grad(set_to_none=True)
            with mixed_precision():
                loss = edm2_loss(net, images, labels, t["P_mean"], t["P_std"])
            loss.float().sum().mul(1 / n).backward()
            state["nimg"] += n
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(state["nimg"], n, t["lr"], t["decay"], t["rampup"])
            for p in net.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=0, neginf=0, out=p.grad)
            optimizer.step()
        return run

    cases.add(f"network/inference/{preset_name}/{n}", inference, expensive)
    cases.add(f"network/train_step/{preset_name}/{n}", train_step, expensive)


# ---- timing ------------------------------------------------------------------------------


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_case(setup, expensive, min_time, repetitions):
    """Seconds per call, one value per repetition (median taken by the caller), and the
    memory the case took: RSS growth on the CPU, peak allocated bytes on a GPU (MiB)."""
    cuda = DEVICE.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss_before, peak_before = rss_mib(), max_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fn = setup()
    fn()  # warm-up: allocator caches, oneDNN primitive creation, cuDNN heuristics
    sync()
    times = []
    for _ in range(repetitions):
        iters, start = 0, time.perf_counter()
        while True:
            fn()
            sync()
            iters += 1
            elapsed = time.perf_counter() - start
            if expensive or elapsed >= min_time:
                break
        times.append(elapsed / iters)
    if cuda:
        return times, torch.cuda.max_memory_allocated() / 2**20
    # RSS growth is meaningful only while this case set the process's high-water mark.
    growth = max_rss_mib() - rss_before if max_rss_mib() > peak_before else None
    return times, growth


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default=".", help="regex on benchmark names (default: all)")
    ap.add_argument("--preset", default="all", choices=["all", *PRESETS], help="which network's shapes")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition (default 0.2)")
    ap.add_argument("--repetitions", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--list", action="store_true", help="list the benchmark names and exit")
    ap.add_argument("--compile", action="store_true",
                    help="run the network cases through torch.compile (PyTorch 2; the layer cases stay eager)")
    ap.add_argument("--autocast", choices=["bf16"],
                    help="run the network cases' forward under torch.autocast to this type (the layer cases stay float32)")
    args = ap.parse_args()

    global DEVICE, COMPILE, AUTOCAST
    COMPILE = args.compile
    AUTOCAST = torch.bfloat16 if args.autocast == "bf16" else None
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cases = Cases()
    for p in PRESETS if args.preset == "all" else [args.preset]:
        layer_cases(cases, p)
        network_cases(cases, p)
    pattern = re.compile(args.filter)
    selected = [c for c in cases.items if pattern.search(c[0])]
    if args.list:
        print("\n".join(name for name, _, _ in selected))
        return
    results = []
    for name, setup, expensive in selected:
        times, growth = time_case(setup, expensive, args.min_time, args.repetitions)
        row = {"name": name, "time_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times]}
        if name.startswith("network/"):
            row["peak_MiB" if DEVICE.type == "cuda" else "rss_growth_MiB"] = growth
        results.append(row)
        print(f"{name:60s} {row['time_ms']:10.3f} ms", file=sys.stderr, flush=True)
    out = {"context": {"torch": torch.__version__, "compile": COMPILE, "autocast": args.autocast, "threads": torch.get_num_threads(), "device": str(DEVICE),
                       "parallel_info": torch.__config__.parallel_info()}, "benchmarks": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    else:
        json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
