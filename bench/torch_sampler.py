#!/usr/bin/python3
"""The same EDM sampling as mpnet-generate and bench_sampler, in PyTorch, for comparison.

The network is bench/torch_edm2.py (the reference's modules under its state_dict names,
so the golden sampler data of tests/data/reference loads into it); the sampler below is
the authors' edm_sampler.

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

from torch_edm2 import PRESETS, Precond

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


def benchmark(batch, steps, repeats):
    torch.manual_seed(0)
    net = Precond(**PRESETS['fmnist-s']['net']).eval()
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
