#!/usr/bin/env python3
"""The PyTorch side of docs/pretrained.md's measurements, and the files for mpnet's side.

    python3 -m venv VENV && VENV/bin/pip install torch diffusers numpy click pillow tqdm psutil
    VENV/bin/python scripts/bench_pretrained_torch.py PATH/TO/NVlabs/edm2 OUTDIR [--compile]

With random weights of the real shapes (no download needed):
  OUTDIR/vae/diffusion_pytorch_model.safetensors   sd-vae-ft-mse's architecture (AutoencoderKL,
                                                   128-256-512-512 channels, 32 groups), float32
  OUTDIR/edm2-img512-xs-2147483-0.045.pkl          img512-xs (conditional) and its
  OUTDIR/edm2-img512-xs-uncond-2147483-0.045.pkl   unconditional guide, saved as the authors'
                                                   training loop saves snapshots (float16 ema)
Then times, on this machine's threads:
  decode   one 64x64x4 latent to a 512x512 image: diffusers' AutoencoderKL.decode in float32
  xs       one img512-xs image as generate_images.py makes it for preset
           edm2-img512-xs-guid-fid (32 steps, guidance 1.4): edm_sampler, then the decode
and the peak resident memory of each (VmHWM, one process per measurement).
--compile also times torch.compile'd versions.
"""
import copy
import json
import os
import pickle
import subprocess
import sys
import time

import torch

from safetensors_file import read_safetensors, write_safetensors


def make_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=['DownEncoderBlock2D'] * 4,
                         up_block_types=['UpDecoderBlock2D'] * 4, block_out_channels=[128, 256, 512, 512],
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512).eval()


def make_files(repo, out):
    import dnnlib
    from training.encoders import StabilityVAEEncoder
    from training.training_loop import EDM2Loss
    os.makedirs(os.path.join(out, 'vae'), exist_ok=True)
    write_safetensors(os.path.join(out, 'vae', 'diffusion_pytorch_model.safetensors'),
                      {k: v.detach().float().numpy() for k, v in make_vae().state_dict().items()})
    for name, label_dim, seed in [('edm2-img512-xs-2147483-0.045', 1000, 1), ('edm2-img512-xs-uncond-2147483-0.045', 0, 2)]:
        torch.manual_seed(seed)
        net = dnnlib.util.construct_class_by_name(class_name='training.networks_edm2.Precond', img_resolution=64,
                                                  img_channels=4, label_dim=label_dim, model_channels=128,
                                                  dropout=0.0, use_fp16=True)
        with torch.no_grad():
            for n, p in net.named_parameters():
                if n.endswith('gain'):
                    p.copy_(torch.randn_like(p) * 0.3)
        data = dnnlib.EasyDict(encoder=StabilityVAEEncoder(), dataset_kwargs={}, loss_fn=EDM2Loss())
        data.ema = copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)
        with open(os.path.join(out, name + '.pkl'), 'wb') as f:
            pickle.dump(data, f)


def timed(f, repeats):
    f()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(repo, out, what, compile_):
    torch.manual_seed(0)
    if what == 'decode':
        vae = make_vae()
        vae.load_state_dict({k: torch.as_tensor(v) for k, v in read_safetensors(
            os.path.join(out, 'vae', 'diffusion_pytorch_model.safetensors')).items()})
        decode = torch.compile(vae.decode) if compile_ else vae.decode
        z = torch.randn([1, 4, 64, 64])
        with torch.no_grad():
            t = timed(lambda: decode(z), 3)
    else:
        from generate_images import edm_sampler
        with open(os.path.join(out, 'edm2-img512-xs-2147483-0.045.pkl'), 'rb') as f:
            net = pickle.load(f)['ema']
        with open(os.path.join(out, 'edm2-img512-xs-uncond-2147483-0.045.pkl'), 'rb') as f:
            gnet = pickle.load(f)['ema']
        if compile_:
            net, gnet = torch.compile(net), torch.compile(gnet)
        noise = torch.randn([1, 4, 64, 64])
        labels = torch.eye(1000)[[7]]
        with torch.no_grad():
            t = timed(lambda: edm_sampler(net, noise, labels, gnet, num_steps=32, guidance=1.4), 1)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    with open('/proc/self/status') as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith('VmHWM')) / 1024
    print(json.dumps({'what': what, 'compile': compile_, 'seconds': round(t, 2), 'peak_rss_mib': round(peak),
                      'torch': torch.__version__, 'threads': torch.get_num_threads()}))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    if len(args) < 2:
        sys.exit(__doc__)
    repo, out = args[0], args[1]
    sys.path.insert(0, repo)
    if '--measure' in sys.argv:
        measure(repo, out, args[2], '--compile' in sys.argv)
        return
    if not os.path.exists(os.path.join(out, 'vae', 'diffusion_pytorch_model.safetensors')):
        make_files(repo, out)
    for compile_ in [False, True] if '--compile' in sys.argv else [False]:
        for what in ['decode', 'xs']:
            cmd = [sys.executable, __file__, repo, out, what, '--measure'] + (['--compile'] if compile_ else [])
            subprocess.run(cmd, check=True)


if __name__ == '__main__':
    main()
