#!/usr/bin/env python3
"""The reference feature networks on the CPU, beside bench_metrics (docs/metrics.md).

    python bench/torch_metrics.py --pytorch-fid PATH/TO/pytorch-fid/src --dinov2 PATH/TO/dinov2

Times pytorch-fid's InceptionV3 (FID blocks, no resize or normalisation: the input is
already preprocessed, as in bench_metrics) and dinov2's ViT-L/14 on batches of 16, eager
and torch.compile (inductor), and prints images per second. Random weights: the timing does
not depend on them.
"""
import argparse
import functools
import sys
import time

import torch


def timed(fn, x, repeats):
    with torch.no_grad():
        fn(x)  # warm-up (and compilation)
        best = float('inf')
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--pytorch-fid', required=True)
    p.add_argument('--dinov2', required=True)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--no-compile', action='store_true')
    a = p.parse_args()
    sys.path[:0] = [a.pytorch_fid, a.dinov2]
    import pytorch_fid.inception as fid_inception
    from dinov2.layers import MemEffAttention, NestedTensorBlock as Block
    from dinov2.models.vision_transformer import DinoVisionTransformer

    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: sys._getframe(1).f_locals['inception'].state_dict()
    inception = fid_inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    vit = DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                                block_fn=functools.partial(Block, attn_class=MemEffAttention), init_values=1.0,
                                ffn_layer='mlp', block_chunks=0, interpolate_antialias=False,
                                interpolate_offset=0.1).eval()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch}')
    rows = [('inception_v3', inception, 299, 5), ('dinov2_vitl14', vit, 224, 2)]
    for name, model, side, repeats in rows:
        x = torch.randn(a.batch, 3, side, side)
        variants = [('eager', model)]
        if not a.no_compile:
            variants.append(('compile', torch.compile(model)))
        for variant, fn in variants:
            s = timed(fn, x, repeats)
            print(f'{name:15s} {variant:8s} {s * 1e3:9.1f} ms/batch  {a.batch / s:7.2f} images/s')


if __name__ == '__main__':
    main()
