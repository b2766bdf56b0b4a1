#!/usr/bin/python3
"""The same EDM sampling as mpnet-generate and bench_sampler, in PyTorch, for comparison.

A compact re-implementation of the EDM2 network (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models"): the magnitude-preserving layers,
Block, UNet and Precond exactly as in the authors' networks_edm2.py (inference path only),
plus their edm_sampler. Parameter names are the reference state_dict names, so the golden
sampler data of tests/data/reference loads into it.

  /usr/bin/python3 bench/torch_sampler.py            # s/image: fmnist-s, 32 steps, batch 64
  /usr/bin/python3 bench/torch_sampler.py --check    # reproduce the golden sampler outputs
"""
import argparse
import json
import os
import struct
import time

import numpy as np
import torch

# ---- magnitude-preserving primitives ------------------------------------------------


def normalize(x, dim=None, eps=1e-4):
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=np.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x, f=(1, 1), mode='keep'):
    if mode == 'keep':
        return x
    f = np.float32(f)
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    f = torch.as_tensor(np.outer(f, f)[np.newaxis, np.newaxis], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == 'down':
        return torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    return torch.nn.functional.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))


def mp_silu(x):
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a, b, t=0.5):
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a, b, dim=1, t=0.5):
    na, nb = a.shape[dim], b.shape[dim]
    c = np.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([(c / np.sqrt(na) * (1 - t)) * a, (c / np.sqrt(nb) * t) * b], dim=dim)


class MPFourier(torch.nn.Module):
    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        self.register_buffer('freqs', 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer('phases', 2 * np.pi * torch.rand(num_channels))

    def forward(self, x):
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * np.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1):
        w = normalize(self.weight.to(torch.float32))
        w = (w * (gain / np.sqrt(w[0].numel()))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))

# ---- network --------------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, flavor='enc', resample_mode='keep',
                 resample_filter=(1, 1), attention=False, channels_per_head=64, dropout=0,
                 res_balance=0.3, attn_balance=0.3, clip_act=256):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == 'enc' else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x, emb):
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == 'enc':
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        y = self.conv_res1(y)
        if self.flavor == 'dec' and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum('nhcq,nhck->nhqk', q, k / np.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum('nhqk,nhck->nhcq', w, v)
            x = mp_sum(x, self.attn_proj(y.reshape(*x.shape)), t=self.attn_balance)
        return x.clip_(-self.clip_act, self.clip_act)


class UNet(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, model_channels=192, channel_mult=(1, 2, 3, 4),
                 num_blocks=3, attn_resolutions=(16, 8), label_balance=0.5, concat_balance=0.5, **block_kwargs):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise, cemb = cblock[0], max(cblock)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f'{res}x{res}_conv'] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f'{res}x{res}_down'] = Block(cout, cout, cemb, flavor='enc', resample_mode='down',
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='enc',
                                                            attention=(res in attn_resolutions), **block_kwargs)

        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f'{res}x{res}_in0'] = Block(cout, cout, cemb, flavor='dec', attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = Block(cout, cout, cemb, flavor='dec', **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = Block(cout, cout, cemb, flavor='dec', resample_mode='up',
                                                    **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='dec',
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
            x = block(x) if 'conv' in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if 'block' in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, sigma_data=0.5, logvar_channels=128,
                 **unet_kwargs):
        super().__init__()
        self.label_dim, self.sigma_data = label_dim, sigma_data
        self.unet = UNet(img_resolution, img_channels, label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        F_x = self.unet(c_in * x, c_noise, class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

# ---- sampler --------------------------------------------------------------------------


def edm_sampler(net, noise, labels=None, gnet=None, num_steps=32, sigma_min=0.002, sigma_max=80, rho=7,
                guidance=1, dtype=torch.float32):
    def denoise(x, t):
        Dx = net(x, t, labels).to(dtype)
        if guidance == 1:
            return Dx
        return gnet(x, t, labels).to(dtype).lerp(Dx, guidance)

    step_indices = torch.arange(num_steps, dtype=torch.float64, device=noise.device)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
               * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    x_next = noise.to(dtype) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        d_cur = (x_cur - denoise(x_cur, t_cur)) / t_cur
        x_next = x_cur + (t_next - t_cur) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next

# ---- golden check and benchmark -------------------------------------------------------


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {'F32': np.float32, 'F64': np.float64}
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        b, e = info['data_offsets']
        out[name] = torch.from_numpy(np.frombuffer(data[b:e], dtype=dtypes[info['dtype']]).reshape(info['shape']).copy())
    return out, header.get('__metadata__', {})


def check_golden(path):
    tensors, meta = read_safetensors(path)
    config = json.loads(meta['config'])
    cfg = config['net']
    kwargs = {k: cfg[k] for k in ('img_resolution', 'img_channels', 'label_dim', 'sigma_data', 'logvar_channels',
                                  'model_channels', 'channel_mult', 'num_blocks', 'attn_resolutions',
                                  'label_balance', 'concat_balance', 'resample_filter', 'channels_per_head',
                                  'res_balance', 'attn_balance', 'clip_act')}
    net, gnet = Precond(**kwargs).eval(), Precond(**kwargs).eval()
    net_tensors, _ = read_safetensors(os.path.join(os.path.dirname(path), config['net_file']))
    net.load_state_dict({k: v for k, v in net_tensors.items() if k.startswith(('unet.', 'logvar_'))})
    gnet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith('gnet.')})
    ok = True
    with torch.no_grad():
        for name, g, w in (('plain', None, 1), ('guided', gnet, 1.7)):
            out = edm_sampler(net, tensors['noise'], tensors['labels'], gnet=g, num_steps=6, guidance=w)
            ref = tensors[f'{name}.out']
            err = float((out - ref).abs().max() / ref.abs().max())
            print(f'{name}.out: max|torch - golden| / max|golden| = {err:.2e}')
            ok &= err <= 1e-4
    return ok


FMNIST_S = dict(img_resolution=32, img_channels=1, label_dim=10, model_channels=32, channel_mult=[1, 2, 3],
                num_blocks=1, attn_resolutions=[8], channels_per_head=32, logvar_channels=64)


def benchmark(batch, steps, repeats):
    torch.manual_seed(0)
    net = Precond(**FMNIST_S).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith('gain'):
                p.fill_(1.0)  # a trained network's gains are nonzero; cost is the same either way
        noise = torch.randn(batch, 1, 32, 32)
        labels = torch.eye(10)[torch.randint(0, 10, (batch,))]
        edm_sampler(net, noise[:2], labels[:2], num_steps=2)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            edm_sampler(net, noise, labels, num_steps=steps)
            times.append(time.perf_counter() - start)
    best = min(times)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads: fmnist-s, {steps} steps '
          f'({2 * steps - 1} evaluations), batch {batch}: {best:.2f} s per batch, '
          f'{best / batch:.4f} s/image (best of {repeats})')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='compare with the golden sampler outputs')
    parser.add_argument('--golden', default=os.path.join(os.path.dirname(__file__), '..', 'tests', 'data',
                                                         'reference', 'sampler.safetensors'))
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        raise SystemExit(0 if check_golden(args.golden) else 1)
    benchmark(args.batch, args.steps, args.repeats)


if __name__ == '__main__':
    main()
