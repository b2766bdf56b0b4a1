#!/usr/bin/env python3
"""The feature networks' published weights as the safetensors files mpnet-metrics loads.

    python scripts/convert_feature_weights.py inception pt_inception-2015-12-05-6726825d.pth inception.safetensors
    python scripts/convert_feature_weights.py dinov2 dinov2_vitl14_pretrain.pth dinov2_vitl14.safetensors

Both checkpoints are torch.save'd state_dicts. They are opened with
torch.load(weights_only=True), PyTorch's restricted unpickler, which refuses any pickle
that would construct anything but tensors and plain containers, so no code from the file
runs. Every floating-point tensor is written as float32 under its own name; integer
buffers (batch-norm counters) are left out. Needs PyTorch (any version with weights_only).
See docs/metrics.md.
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

from safetensors_file import write_safetensors

REQUIRED = {
    'inception': ['Conv2d_1a_3x3.conv.weight', 'Mixed_7c.branch_pool.bn.running_var'],
    'dinov2': ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight', 'norm.weight'],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('network', choices=sorted(REQUIRED))
    p.add_argument('checkpoint')
    p.add_argument('out')
    a = p.parse_args()
    try:
        state = torch.load(a.checkpoint, map_location='cpu', weights_only=True)
    except Exception as e:  # a pickle that names anything else, or not a checkpoint at all
        sys.exit(f'{a.checkpoint}: cannot be read as a plain state_dict: {e}')
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    if not isinstance(state, dict):
        sys.exit(f'{a.checkpoint}: holds a {type(state).__name__}, not a state_dict')
    missing = [k for k in REQUIRED[a.network] if k not in state]
    if missing:
        sys.exit(f'{a.checkpoint}: not {a.network} weights (missing {", ".join(missing)})')
    tensors = {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
               if torch.is_tensor(v) and v.is_floating_point()}
    # Written under a temporary name and moved into place: never a half-written file.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(a.out)), suffix='.tmp')
    os.close(fd)
    try:
        write_safetensors(tmp, tensors, float_dtype=np.float32)
        os.replace(tmp, a.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f'{a.out}: {len(tensors)} tensors, {sum(t.size for t in tensors.values()):,} values')


if __name__ == '__main__':
    main()
