#!/usr/bin/python3
"""PyTorch timings of the layers and the whole network that mpnet_bench times.

The network is a compact re-implementation of the EDM2 reference (Karras et al., CVPR
2024: Precond, UNet, Block, MPConv, MPFourier and the magnitude-preserving primitives),
written as the reference writes it, so that it runs the kernels a PyTorch user of EDM2
runs. Each benchmark has the name of its mpnet_bench counterpart
(<layer>/<fwd|bwd>/<preset>/<shape>), which is how bench/compare.py pairs them.

  fwd: the layer's forward with autograd recording (inputs and parameters require grad);
  bwd: torch.autograd.grad of a recorded forward, gradients of the input(s) and parameters;
  network/inference: eval mode under torch.no_grad();
  network/train_step: the EDM2 training step (noise, forward with logvar, loss, backward,
      non-finite gradients zeroed, torch.optim.Adam step).

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

DEVICE = torch.device("cpu")  # set by --device

# ---- the networks (the presets of include/mpnet/nn/presets.hpp) ---------------------------

PRESETS = {
    "fmnist-s": dict(
        net=dict(img_resolution=32, img_channels=1, label_dim=10, model_channels=32, channel_mult=[1, 2, 3],
                 num_blocks=1, attn_resolutions=[8], channels_per_head=32, logvar_channels=64),
        train=dict(lr=0.01, decay=2000, rampup=0.01e6, P_mean=-0.8, P_std=1.6),
        batch=64, expensive=False),
    "edm2-img64-xs": dict(
        net=dict(img_resolution=64, img_channels=3, label_dim=1000, model_channels=128, channel_mult=[1, 2, 3, 4],
                 num_blocks=3, attn_resolutions=[16, 8], channels_per_head=64, logvar_channels=128),
        train=dict(lr=0.012, decay=35000, rampup=10e6, P_mean=-0.8, P_std=1.6),
        batch=32, expensive=True),
}

# ---- EDM2 primitives and modules, as the reference implementation writes them -------------


def normalize(x, dim=None, eps=1e-4):
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=np.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x, f=(1, 1), mode="keep"):
    if mode == "keep":
        return x
    f = np.float32(f)
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    f = torch.as_tensor(np.outer(f, f)[np.newaxis, np.newaxis, :, :], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == "down":
        return torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    return torch.nn.functional.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))


def mp_silu(x):
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a, b, t=0.5):
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a, b, dim=1, t=0.5):
    na, nb = a.shape[dim], b.shape[dim]
    c = np.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    wa = c / np.sqrt(na) * (1 - t)
    wb = c / np.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


def attention(qkv, heads):
    """The attention core of a Block: qkv [N, 3C, H, W] -> [N, C, H, W]."""
    y = qkv.reshape(qkv.shape[0], heads, -1, 3, qkv.shape[2] * qkv.shape[3])
    q, k, v = normalize(y, dim=2).unbind(3)
    w = torch.einsum("nhcq,nhck->nhqk", q, k / np.sqrt(q.shape[2])).softmax(dim=3)
    y = torch.einsum("nhqk,nhck->nhcq", w, v)
    return y.reshape(qkv.shape[0], -1, qkv.shape[2], qkv.shape[3])


class MPFourier(torch.nn.Module):
    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        self.register_buffer("freqs", 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * np.pi * torch.rand(num_channels))

    def forward(self, x):
        y = x.to(torch.float32)
        y = y.ger(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        y = y.cos() * np.sqrt(2)
        return y.to(x.dtype)


class MPConv(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1):
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced weight normalization
        w = normalize(w)
        w = w * (gain / np.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))


class Block(torch.nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, flavor="enc", resample_mode="keep",
                 resample_filter=(1, 1), attention=False, channels_per_head=64, dropout=0, res_balance=0.3,
                 attn_balance=0.3, clip_act=256):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x, emb):
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads != 0:
            y = self.attn_proj(attention(self.attn_qkv(x), self.num_heads))
            x = mp_sum(x, y, t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x


class UNet(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, model_channels=192, channel_mult=(1, 2, 3, 4),
                 num_blocks=3, attn_resolutions=(16, 8), label_balance=0.5, concat_balance=0.5, **block_kwargs):
        super().__init__()
        cblock = [model_channels * x for x in channel_mult]
        cnoise = cblock[0]
        cemb = max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                                            attention=(res in attn_resolutions), **block_kwargs)
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up",
                                                    **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                                            attention=(res in attn_resolutions), **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * np.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, sigma_data=0.5, logvar_channels=128, **unet_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x, sigma, class_labels=None, return_logvar=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        class_labels = None if self.label_dim == 0 else class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        f_x = self.unet(c_in * x, c_noise, class_labels)
        d_x = c_skip * x + c_out * f_x
        if return_logvar:
            logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
            return d_x, logvar
        return d_x


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
        images, labels = data()
        sigma = (torch.randn(n, device=DEVICE) * 1.2 - 1.2).exp()

        def run():
            with torch.no_grad():
                return net(images, sigma, labels)
        return run

    def train_step():
        net = build_precond(cfg).train()
        optimizer = torch.optim.Adam(net.parameters(), betas=(0.9, 0.99), eps=1e-8)
        images, labels = data()
        state = {"nimg": 0}

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss = edm2_loss(net, images, labels, t["P_mean"], t["P_std"])
            loss.sum().mul(1 / n).backward()
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
    args = ap.parse_args()

    global DEVICE
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
    out = {"context": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(DEVICE),
                       "parallel_info": torch.__config__.parallel_info()}, "benchmarks": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    else:
        json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
