#!/usr/bin/env python3
"""Golden data for the latent autoencoder (tests/test_autoencoder.cpp).

    python3 -m venv --system-site-packages VENV      # with Debian's python3-torch
    VENV/bin/pip install "diffusers==0.27.2" "huggingface_hub<0.26"
    VENV/bin/python scripts/vae_golden.py PATH/TO/NVlabs/edm2 tests/data/vae

Builds diffusers' AutoencoderKL (the architecture of stabilityai/sd-vae-ft-mse: DownEncoderBlock2D
and UpDecoderBlock2D levels, two resnets per level, mid-block attention) at reduced width
(block_out_channels 16, 32, 32; 8 groups) with random weights, and runs it through the
unmodified EDM2 StabilityVAEEncoder (training/encoders.py) as generate_images.py and
dataset_tool.py do. Writes

  vae.safetensors       the model's state_dict in float32, under diffusers' names, with
                        metadata norm_num_groups (8; the real files have 32 and no metadata)
  vae_f16.safetensors   the same in float16
  golden.safetensors    pixels [2, 3, 32, 32] (uint8 values as float32);
                        raw_latents = encoder.encode_pixels(pixels): mean and std [2, 8, 8, 8];
                        latents [2, 4, 8, 8] (final latents, drawn);
                        decoded = the VAE's float output for them before quantisation;
                        decoded_pixels = encoder.decode(latents) (uint8 values);
                        decoded_f16 = the float output of the float16 weights (run in float32);
                        metadata: scale, bias (the encoder's), groups
  encode.safetensors    dataset_tool.py encode run on a folder of three 32x32 PNGs in two
                        class folders (with this VAE; the tool's .to('cuda') kept on the CPU):
                        source/<path> the PNG files' bytes, out/<name> every file of the
                        archive it wrote (the .npy files and dataset.json), as bytes
"""
import json
import os
import tempfile
import zipfile
import sys

import numpy as np
import torch

from safetensors_file import write_safetensors

GROUPS = 8


def main(repo, out):
    sys.path.insert(0, repo)
    from diffusers import AutoencoderKL
    from training.encoders import StabilityVAEEncoder

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=['DownEncoderBlock2D'] * 3,
                        up_block_types=['UpDecoderBlock2D'] * 3, block_out_channels=[16, 32, 32],
                        layers_per_block=2, latent_channels=4, norm_num_groups=GROUPS, sample_size=32)
    with torch.no_grad():  # group norms away from the identity, so that their affine parts matter
        for name, p in vae.named_parameters():
            if 'norm' in name:
                p.copy_((1 if name.endswith('weight') else 0) + 0.2 * torch.randn_like(p))
    vae = vae.eval().requires_grad_(False)
    state = {k: v.numpy() for k, v in vae.state_dict().items()}
    # diffusers keeps the group count in config.json; these files carry it as metadata.
    groups = {'norm_num_groups': str(GROUPS)}
    write_safetensors(os.path.join(out, 'vae.safetensors'), state, groups)
    write_safetensors(os.path.join(out, 'vae_f16.safetensors'), state, groups, float_dtype=np.float16)

    encoder = StabilityVAEEncoder()
    encoder._vae = vae
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand([2, 3, 8, 8], generator=g), scale_factor=4, mode='bilinear')
    pixels = (smooth * 255).to(torch.uint8)
    raw = encoder.encode_pixels(pixels)
    latents = encoder.encode_latents(raw)  # mean + N(0, 1) std, normalised
    z = (latents - torch.as_tensor(encoder.bias).reshape(1, -1, 1, 1)) / torch.as_tensor(encoder.scale).reshape(1, -1, 1, 1)
    decoded = vae.decode(z)['sample']
    decoded_pixels = encoder.decode(latents)
    vae16 = AutoencoderKL.from_config(vae.config)
    vae16.load_state_dict({k: v.half().float() for k, v in vae.state_dict().items()})
    decoded_f16 = vae16.eval().decode(z)['sample']

    tensors = {
        'pixels': pixels.float().numpy(), 'raw_latents': raw.numpy(), 'latents': latents.numpy(),
        'decoded': decoded.detach().numpy(), 'decoded_pixels': decoded_pixels.float().numpy(),
        'decoded_f16': decoded_f16.detach().numpy(),
    }
    metadata = {'scale': json.dumps([float(v) for v in encoder.scale]),
                'bias': json.dumps([float(v) for v in encoder.bias]), 'groups': str(GROUPS),
                'torch': torch.__version__}
    write_safetensors(os.path.join(out, 'golden.safetensors'), tensors, metadata)
    encode_golden(vae, out)


def encode_golden(vae, out):
    import PIL.Image
    import dataset_tool
    import training.encoders
    training.encoders.load_stability_vae = lambda *args, **kwargs: vae  # the test VAE for any name
    to = torch.Tensor.to
    torch.Tensor.to = lambda self, *a, **k: self if a and a[0] == 'cuda' else to(self, *a, **k)
    tensors = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'source')
        rng = np.random.RandomState(4)
        for rel in ['cat/a.png', 'cat/b.png', 'dog/c.png']:
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            img = np.clip(rng.rand(1, 1, 3) * 255 + rng.randint(-30, 31, (32, 32, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(img).save(os.path.join(src, rel))
            with open(os.path.join(src, rel), 'rb') as f:
                tensors['source/' + rel] = np.frombuffer(f.read(), dtype=np.uint8)
        dest = os.path.join(tmp, 'latents.zip')
        dataset_tool.encode.callback(model_url='stabilityai/sd-vae-ft-mse', source=src, dest=dest, max_images=None)
        with zipfile.ZipFile(dest) as z:
            for name in z.namelist():
                tensors['out/' + name] = np.frombuffer(z.read(name), dtype=np.uint8)
    torch.Tensor.to = to
    write_safetensors(os.path.join(out, 'encode.safetensors'), tensors)


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
