#!/usr/bin/env python3
"""Writes the EDM2 authors' configuration presets as JSON, for tests/test_presets.cpp.

Usage (plain python3, no other packages):

    git clone https://github.com/NVlabs/edm2 /tmp/edm2
    python3 scripts/edm2_presets.py /tmp/edm2 > tests/data/edm2_presets.json

The source files are parsed, never imported or executed:
  * train_edm2.py: config_presets, the recipe of every preset (duration, batch, channels, lr,
    decay, dropout, P_mean, P_std), and the network settings it passes (channels, dropout);
  * training/networks_edm2.py: the defaults of Precond, UNet and Block, which give every other
    network setting;
  * training/training_loop.py: the defaults the presets leave alone (the learning-rate warm-up,
    the loss's sigma_data).
"""

import ast
import json
import operator
import subprocess
import sys
from pathlib import Path

# The image shape and label count do not appear in the code: the training loop takes them from
# the first encoded dataset image. The img512 presets train on 512x512 ImageNet encoded by the
# Stable Diffusion VAE (dataset_tool.py encode, 8x downsampling; StabilityVAEEncoder keeps the
# 4 mean channels of the stored mean and std), the img64 ones on 64x64 RGB ImageNet, both with
# the 1000 ImageNet classes as one-hot labels.
DATASETS = {
    'img512': dict(img_resolution=64, img_channels=4, label_dim=1000),
    'img64': dict(img_resolution=64, img_channels=3, label_dim=1000),
}

# A precision switch of the reference trainer, not a property of the network.
NOT_NETWORK = {'use_fp16'}

_OPERATORS = {ast.LShift: operator.lshift, ast.Mult: operator.mul, ast.Add: operator.add,
              ast.Sub: operator.sub, ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate(node):
    """Value of a literal, also allowing integer arithmetic such as 2048<<20."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](evaluate(node.operand))
    return ast.literal_eval(node)


def parse(path):
    return ast.parse(path.read_text(), filename=str(path))


def find(tree, kind, name):
    """The first node of the given type with the given name, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, kind) and node.name == name:
            return node
    raise SystemExit(f'{name} not found')


def defaults(function):
    """Keyword defaults of a function definition, as a dict."""
    args = function.args.args[len(function.args.args) - len(function.args.defaults):]
    return {a.arg: evaluate(d) for a, d in zip(args, function.args.defaults)}


def init_defaults(tree, cls):
    return defaults(find(find(tree, ast.ClassDef, cls), ast.FunctionDef, '__init__'))


def keywords_passed(tree, caller, callee):
    """Keyword names that the body of class `caller` passes explicitly to `callee(...)`."""
    names = set()
    for node in ast.walk(find(tree, ast.ClassDef, caller)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == callee:
            names.update(k.arg for k in node.keywords if k.arg is not None)
    return names


def config_presets(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'config_presets' for t in node.targets):
            return {evaluate(k): {kw.arg: evaluate(kw.value) for kw in v.keywords}
                    for k, v in zip(node.value.keys, node.value.values)}
    raise SystemExit('config_presets not found')


def network_defaults(tree):
    """Every Precond/UNet/Block setting that a preset does not choose, at its default."""
    block = init_defaults(tree, 'Block')
    for per_block in keywords_passed(tree, 'UNet', 'Block'):  # set by UNet block by block
        block.pop(per_block)
    net = {**init_defaults(tree, 'Precond'), **init_defaults(tree, 'UNet'), **block}
    return {k: v for k, v in net.items() if k not in NOT_NETWORK}


def commit(root):
    result = subprocess.run(['git', '-C', str(root), 'rev-parse', 'HEAD'], capture_output=True, text=True)
    return result.stdout.strip() or None


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    root = Path(sys.argv[1])
    network = network_defaults(parse(root / 'training/networks_edm2.py'))
    loop = parse(root / 'training/training_loop.py')
    schedule = defaults(find(loop, ast.FunctionDef, 'learning_rate_schedule'))
    loss = init_defaults(loop, 'EDM2Loss')
    presets = {}
    for name, p in config_presets(parse(root / 'train_edm2.py')).items():
        dataset = name.split('-')[1]
        presets[name] = {
            # train_edm2.py passes model_channels and dropout; the rest are defaults.
            'network': {**network, **DATASETS[dataset], 'model_channels': p['channels'], 'dropout': p['dropout']},
            'training': {'duration_nimg': p['duration'], 'batch': p['batch'], 'lr': p['lr'], 'decay': p['decay'],
                         'rampup_mimg': schedule['rampup_Mimg'], 'P_mean': p['P_mean'], 'P_std': p['P_std'],
                         'sigma_data': loss['sigma_data']},
        }
    out = {'source': 'https://github.com/NVlabs/edm2', 'commit': commit(root), 'presets': presets}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
