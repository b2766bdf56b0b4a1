#!/usr/bin/env python3
"""Writes the EDM2 authors' generation presets as JSON, for tests/test_generation_presets.cpp.

Usage (plain python3, no other packages):

    git clone https://github.com/NVlabs/edm2 /tmp/edm2
    python3 scripts/edm2_generate_presets.py /tmp/edm2 > tests/data/edm2_generate_presets.json

generate_images.py is parsed, never imported: its config_presets give each preset's main
network, guiding network and guidance weight. Networks are named by their pickle's file name
without the extension (the folder is the authors' download site).
"""
import ast
import json
import sys
from pathlib import Path


def file_stem(node):
    # f'{model_root}/edm2-img512-xs-2147483-0.135.pkl' -> 'edm2-img512-xs-2147483-0.135'
    text = ''.join(part.value for part in node.values if isinstance(part, ast.Constant))
    assert text.startswith('/') and text.endswith('.pkl'), text
    return text[1:-len('.pkl')]


def main(repo):
    tree = ast.parse(Path(repo, 'generate_images.py').read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == 'config_presets')
    presets = {}
    for key, call in zip(table.keys, table.values):
        kw = {k.arg: k.value for k in call.keywords}
        assert set(kw) <= {'net', 'gnet', 'guidance'}, kw.keys()
        presets[key.value] = {
            'net': file_stem(kw['net']),
            'gnet': file_stem(kw['gnet']) if 'gnet' in kw else None,
            'guidance': kw['guidance'].value if 'guidance' in kw else 1.0,
        }
    json.dump(presets, sys.stdout, indent=1)
    print()


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
