#!/usr/bin/env python3
"""Golden data for the sample-quality metrics (tests/test_metrics.cpp).

    python scripts/metrics_golden.py --dinov2 PATH/TO/facebookresearch/dinov2 \\
        --pytorch-fid PATH/TO/mseitzer/pytorch-fid/src tests/data

Needs PyPI's torch, torchvision, scipy and numpy. Runs the reference code unmodified:

  Inception-v3   pytorch-fid's InceptionV3 (FIDInceptionV3 blocks on torchvision's
                 Inception3), its pretrained weights replaced by the formula weights below;
                 its input prepared as the EDM2 authors' TorchScript detector does
                 (affine_grid + grid_sample: TensorFlow's legacy bilinear resize, then
                 (x - 128) / 128).
  DINOv2         dinov2's DinoVisionTransformer with ViT-L/14's width, heads, layer scale,
                 position grid (518 px) and interpolation settings, at depth 2, formula
                 weights; input prepared as calculate_metrics.py's DINOv2Detector does
                 (bicubic antialiased resize to 224, ImageNet normalisation).
  Fréchet        calculate_metrics.py's formula (scipy.linalg.sqrtm) on random statistics,
                 well- and ill-conditioned.

Formula weights keep the golden files small: tensor <name> of n elements holds
offset + scale * u(i), u(i) in [-1, 1) a 32-bit hash of (i, FNV-1a of the name), with
(offset, scale) chosen by the name (formula_spec). tests/test_metrics.cpp computes the same
values in C++ and writes them to a safetensors file that the networks load.

Writes metrics_golden.safetensors (images, preprocessed samples every 13th pixel, features;
metadata: each network's state_dict names and shapes), metrics_fd.safetensors (statistics
and their distances) and metrics_stats.pkl (statistics pickled as calculate_metrics.py saves them).
"""
import argparse
import functools
import json
import math
import os
import pickle
import sys

import numpy as np
import scipy.linalg
import torch

from safetensors_file import write_safetensors

MASK = 0xFFFFFFFF


def fnv1a(name):
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & MASK
    return h


def hash_uniform(name, n):
    """u(i) in [-1, 1) for i < n, computed in exact integer arithmetic."""
    i = np.arange(n, dtype=np.uint64)
    u = ((i + np.uint64(1)) * np.uint64(0x9E3779B1) + np.uint64(fnv1a(name)) * np.uint64(0x85EBCA77)) & np.uint64(MASK)
    u ^= u >> np.uint64(15)
    u = (u * np.uint64(0x2C1B3C6D)) & np.uint64(MASK)
    u ^= u >> np.uint64(12)
    return u.astype(np.float64) / 2.0**32 * 2.0 - 1.0


def formula_spec(name, shape):
    """(offset, scale) of a tensor; mirrored by formula_spec in tests/test_metrics.cpp."""
    last = name.rsplit('.', 1)[-1]
    if last in ('running_var',):
        return 1.0, 0.5
    if last in ('running_mean', 'bias') or name in ('cls_token', 'pos_embed', 'mask_token'):
        return 0.0, 0.1
    if last == 'gamma':  # layer scale
        return 0.5, 0.25
    if len(shape) >= 2:  # conv or linear weight: variance about 1 / fan_in (2 / fan_in after ReLU)
        fan_in = int(np.prod(shape[1:]))
        return 0.0, math.sqrt(6.0 / fan_in) if '.conv.' in name else math.sqrt(3.0 / fan_in)
    return 1.0, 0.1  # norm weights


def formula_state(model):
    state = {}
    for name, t in model.state_dict().items():
        if t.dtype == torch.int64:  # num_batches_tracked
            state[name] = t.clone()
            continue
        offset, scale = formula_spec(name, list(t.shape))
        v = (offset + scale * hash_uniform(name, t.numel())).astype(np.float32)
        state[name] = torch.from_numpy(v.reshape(t.shape))
    return state


def nvlabs_inception_input(x):
    """The TorchScript detector's resize and normalisation of uint8 images [N, 3, H, W]."""
    x = x.to(torch.float32)
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
    theta = theta.unsqueeze(0).repeat([n, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [n, c, 299, 299], align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    return (x - 128) / 128


SHAPES = {}  # network -> {tensor name: shape} of the state_dict, for the C++ side's formula weights


def shapes_of(state):
    return {k: list(v.shape) for k, v in state.items() if v.dtype != torch.int64}


def inception_golden(pfid_src, images):
    sys.path.insert(0, pfid_src)
    import pytorch_fid.inception as fid_inception

    def formula_weights(*args, **kwargs):
        # fid_inception_v3() builds the network, then fetches its weights through this
        # function: hand it formula weights for the network it just built (the caller's
        # local `inception`), so that nothing is downloaded.
        state = formula_state(sys._getframe(1).f_locals['inception'])
        SHAPES['inception'] = shapes_of(state)
        return state

    fid_inception.load_state_dict_from_url = formula_weights
    model = fid_inception.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True).eval()
    x = nvlabs_inception_input(images)
    with torch.no_grad():
        features = model(x)[0].reshape(images.shape[0], -1)
    return x, features


def dinov2_golden(dinov2_root, images, depth):
    sys.path.insert(0, dinov2_root)
    from dinov2.layers import MemEffAttention
    from dinov2.layers import NestedTensorBlock as Block
    from dinov2.models.vision_transformer import DinoVisionTransformer
    # vit_large's settings and hubconf's (_make_dinov2_model), at reduced depth.
    model = DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=1024, depth=depth, num_heads=16, mlp_ratio=4,
                                  block_fn=functools.partial(Block, attn_class=MemEffAttention), init_values=1.0,
                                  ffn_layer='mlp', block_chunks=0, num_register_tokens=0,
                                  interpolate_antialias=False, interpolate_offset=0.1).eval()
    state = formula_state(model)
    SHAPES['dinov2'] = shapes_of(state)
    model.load_state_dict(state)
    # calculate_metrics.py, DINOv2Detector with resize_mode='torch'.
    x = torch.nn.functional.interpolate(images.to(torch.float32), size=(224, 224), mode='bicubic', antialias=True)
    x = x / 255
    x = x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    x = x / torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)
    with torch.no_grad():
        features = model(x)
    return x, features


def authors_fd(mu1, s1, mu2, s2):
    """calculate_metrics.calculate_metrics_from_stats for one metric."""
    m = np.square(mu1 - mu2).sum()
    s, _ = scipy.linalg.sqrtm(np.dot(s1, s2), disp=False)
    return float(np.real(m + np.trace(s1 + s2 - s * 2)))


def random_stats(rng, dim, count, spread):
    """mu, sigma of `count` random features whose axes scale over `spread` decades."""
    scales = 10.0 ** (-spread * rng.random(dim))
    f = rng.standard_normal((count, dim)) * scales + rng.standard_normal(dim)
    mu = f.mean(0)
    sigma = (f.T @ f - count * np.outer(mu, mu)) / (count - 1)
    return mu, sigma


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--dinov2', required=True, help='a checkout of facebookresearch/dinov2')
    p.add_argument('--pytorch-fid', required=True, help="pytorch-fid's src directory")
    p.add_argument('out')
    a = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = {}

    images = torch.randint(0, 256, (2, 3, 37, 45), dtype=torch.uint8)
    t['images'] = images.numpy()
    x, f = inception_golden(a.pytorch_fid, images)
    t['inception.input_sample'] = x[:, :, ::13, ::13].numpy()
    t['inception.features'] = f.numpy()
    # One channel, taller than 299 (a downscale in height, an upscale in width).
    gray = torch.randint(0, 256, (1, 1, 310, 150), dtype=torch.uint8)
    t['gray'] = gray.numpy()
    t['inception.gray_sample'] = nvlabs_inception_input(gray.repeat(1, 3, 1, 1))[:, :, ::13, ::13].numpy()

    x, f = dinov2_golden(a.dinov2, images, depth=2)
    t['dinov2.input_sample'] = x[:, :, ::13, ::13].numpy()
    t['dinov2.features'] = f.numpy()
    # The antialiasing filter stretched where the gray image shrinks.
    x = torch.nn.functional.interpolate(gray.repeat(1, 3, 1, 1).to(torch.float32), size=(224, 224), mode='bicubic',
                                        antialias=True)
    t['dinov2.gray_resized_sample'] = x[:, :, ::13, ::13].numpy()

    floats = {k: v for k, v in t.items() if v.dtype != np.uint8}
    u8 = {k: v for k, v in t.items() if v.dtype == np.uint8}

    # Fréchet distances: (count, spread) per case; fewer images than features makes the
    # covariances singular, a wide spread makes them ill-conditioned.
    stats, meta = {}, {}
    for case, (count, spread) in enumerate([(200, 0.5), (20, 0.5), (400, 6.0)]):
        mu1, s1 = random_stats(rng, 48, count, spread)
        mu2, s2 = random_stats(rng, 48, count, spread)
        stats[f'fd{case}.mu1'], stats[f'fd{case}.sigma1'] = mu1, s1
        stats[f'fd{case}.mu2'], stats[f'fd{case}.sigma2'] = mu2, s2
        stats[f'fd{case}.value'] = np.array([authors_fd(mu1, s1, mu2, s2)])
        stats[f'fd{case}.self'] = np.array([authors_fd(mu1, s1, mu1, s1)])

    # Statistics saved as calculate_metrics.save_stats does.
    mu_a, s_a = random_stats(rng, 16, 50, 1.0)
    mu_b, s_b = random_stats(rng, 8, 50, 1.0)
    pkl = dict(num_images=50, fid=dict(mu=mu_a, sigma=s_a), fd_dinov2=dict(mu=mu_b, sigma=s_b))
    with open(os.path.join(a.out, 'metrics_stats.pkl'), 'wb') as fh:
        pickle.dump(pkl, fh)
    stats.update({'pkl.fid.mu': mu_a, 'pkl.fid.sigma': s_a, 'pkl.fd_dinov2.mu': mu_b, 'pkl.fd_dinov2.sigma': s_b})

    write_safetensors(os.path.join(a.out, 'metrics_golden.safetensors'), {**u8, **floats},
                      metadata={f'{k}_shapes': json.dumps(v) for k, v in SHAPES.items()})
    write_safetensors(os.path.join(a.out, 'metrics_fd.safetensors'), stats, float_dtype=np.float64)
    for k, v in stats.items():
        if k.endswith('value') or k.endswith('self'):
            print(k, v[0])


if __name__ == '__main__':
    main()
