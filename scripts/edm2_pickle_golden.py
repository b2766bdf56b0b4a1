#!/usr/bin/env python3
"""Golden data for importing the authors' network pickles (tests/test_edm2_pickle.cpp).

    /usr/bin/python3 scripts/edm2_pickle_golden.py PATH/TO/NVlabs/edm2 tests/data/edm2_pickle

Runs the unmodified NVlabs/edm2 code (Debian's python3-torch and python3-numpy suffice):
builds two small Precond networks with random weights and saves them exactly as
training/training_loop.py saves a snapshot (an EasyDict with `ema` in float16, `encoder`,
`dataset_kwargs` and `loss_fn`, written by pickle.dump). Writes

  snapshot.pkl   conditional network with a StabilityVAEEncoder
  guide.pkl      smaller unconditional network with a StandardRGBEncoder
  evil.pkl       a pickle whose loading would call os.system
  golden.safetensors
      net.<name>, gnet.<name>  every state_dict tensor of both `ema` networks, as float32
      noise, labels            sampler inputs
      samples                  generate_images.edm_sampler(net, noise, labels, gnet, ...) with
                               both networks in float32
      metadata: net_config / gnet_config (the networks' init_kwargs as JSON),
                encoder_scale / encoder_bias, sampler settings.
"""
import copy
import json
import os
import pickle
import sys

import torch

from safetensors_file import write_safetensors

STEPS, GUIDANCE = 6, 1.8


def make_net(dnnlib, seed, label_dim, **network_kwargs):
    # As training_loop.py builds it: network_kwargs from train_edm2.py plus the interface.
    torch.manual_seed(seed)
    net = dnnlib.util.construct_class_by_name(class_name='training.networks_edm2.Precond', img_resolution=8,
                                              img_channels=4, label_dim=label_dim, **network_kwargs)
    # Fresh networks have zero gains (their output is c_skip * x): randomise every parameter
    # so that each one matters for the samples.
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return net


def snapshot(dnnlib, net, encoder):
    # training_loop.py, "Save network snapshot".
    from training.training_loop import EDM2Loss
    data = dnnlib.EasyDict(encoder=encoder, dataset_kwargs=dnnlib.EasyDict(
        class_name='training.dataset.ImageFolderDataset', path='img512-sd.zip', use_labels=True),
        loss_fn=EDM2Loss())
    data.ema = copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)
    return data


class Evil:
    def __reduce__(self):
        return os.system, ('touch mpnet-pickle-was-executed',)


def main(repo, out):
    sys.path.insert(0, repo)
    import dnnlib
    from training.encoders import StabilityVAEEncoder, StandardRGBEncoder
    from generate_images import edm_sampler

    os.makedirs(out, exist_ok=True)
    net = make_net(dnnlib, 1, 5, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   channels_per_head=8, dropout=0.1, use_fp16=True)
    gnet = make_net(dnnlib, 2, 0, model_channels=4, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                    channels_per_head=4, channel_mult_emb=3, logvar_channels=16, use_fp16=False)
    data = snapshot(dnnlib, net, StabilityVAEEncoder())
    gdata = snapshot(dnnlib, gnet, StandardRGBEncoder())
    for name, d in [('snapshot.pkl', data), ('guide.pkl', gdata)]:
        with open(os.path.join(out, name), 'wb') as f:
            pickle.dump(d, f)
    with open(os.path.join(out, 'evil.pkl'), 'wb') as f:
        pickle.dump({'ema': Evil()}, f)

    # Sample with the networks as generate_images.py loads them back.
    with open(os.path.join(out, 'snapshot.pkl'), 'rb') as f:
        loaded = pickle.load(f)
    with open(os.path.join(out, 'guide.pkl'), 'rb') as f:
        gloaded = pickle.load(f)
    torch.manual_seed(3)
    noise = torch.randn([3, 4, 8, 8], dtype=torch.float64)
    labels = torch.eye(5)[torch.tensor([4, 0, 2])]
    # In float32, as the networks train: with float16 parameters PyTorch computes the tensor
    # gains' gain / sqrt(fan_in) in float16, rounded differently by each version and device.
    samples = edm_sampler(net=loaded['ema'].float(), noise=noise, labels=labels, gnet=gloaded['ema'].float(),
                          num_steps=STEPS, guidance=GUIDANCE, dtype=torch.float32)

    tensors = {}
    for prefix, d in [('net.', loaded), ('gnet.', gloaded)]:
        for k, v in d['ema'].state_dict().items():
            tensors[prefix + k] = v.float().numpy()
    tensors['noise'] = noise.float().numpy()
    tensors['labels'] = labels.numpy()
    tensors['samples'] = samples.float().numpy()
    enc = loaded['encoder']
    metadata = {
        'net_config': json.dumps(dict(loaded['ema'].init_kwargs)),
        'gnet_config': json.dumps(dict(gloaded['ema'].init_kwargs)),
        'encoder_scale': json.dumps([float(v) for v in enc.scale]),
        'encoder_bias': json.dumps([float(v) for v in enc.bias]),
        'steps': str(STEPS), 'guidance': str(GUIDANCE), 'torch': torch.__version__,
    }
    write_safetensors(os.path.join(out, 'golden.safetensors'), tensors, metadata)


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
