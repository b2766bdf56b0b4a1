#!/usr/bin/env python3
"""Golden data for mpnet-dataset from the reference implementation's dataset_tool.py.

    /usr/bin/python3 scripts/dataset_tool_golden.py PATH/TO/NVlabs/edm2 tests/data/dataset_tool.safetensors

Runs the reference `convert` (NVlabs/edm2 dataset_tool.py, unmodified) on a small source of
PNG images of every kind Pillow opens (RGB, gray, gray+alpha, RGBA, palette) and JPEG images
(4:2:0 colour, gray, CMYK, progressive), odd sizes, portrait and landscape, in class folders,
with each --transform, and Pillow's Image.resize with
each filter the tool uses on one image, and stores the sources, the arguments and every
output (names, dataset.json, pixels) in one safetensors file for tests/test_dataset_tool.cpp.

Needs Pillow, NumPy and click (Debian: python3-pil python3-numpy python3-click python3-tqdm).
torch is not needed: `convert` never touches the VAE, so the modules dataset_tool.py imports
for `encode` are stubbed.
"""
import io
import json
import os
import sys
import tempfile
import types
import zipfile

import numpy as np
import PIL.Image

from safetensors_file import write_safetensors


def import_dataset_tool(repo):
    sys.modules.setdefault('torch', types.ModuleType('torch'))
    encoders = types.ModuleType('training.encoders')
    encoders.StabilityVAEEncoder = None
    training = types.ModuleType('training')
    training.encoders = encoders
    sys.modules['training'] = training
    sys.modules['training.encoders'] = encoders
    sys.path.insert(0, repo)
    import dataset_tool
    return dataset_tool


def make_sources(root):
    """The source folder: {relative path: PNG bytes}, written under root."""
    rng = np.random.RandomState(2024)
    images = {
        'cat/a_rgb_portrait.png': PIL.Image.fromarray(rng.randint(0, 256, (53, 37, 3), dtype=np.uint8), 'RGB'),
        'cat/b_gray.png': PIL.Image.fromarray(rng.randint(0, 256, (64, 64), dtype=np.uint8), 'L'),
        'dog/c_rgba.png': PIL.Image.fromarray(rng.randint(0, 256, (60, 45, 4), dtype=np.uint8), 'RGBA'),
        'dog/d_palette.png': PIL.Image.fromarray(rng.randint(0, 256, (50, 70, 3), dtype=np.uint8), 'RGB').convert(
            'P', palette=PIL.Image.Palette.ADAPTIVE, colors=37),
        'dog/e_large.png': PIL.Image.fromarray(rng.randint(0, 256, (130, 161, 3), dtype=np.uint8), 'RGB'),
        'fish/f_small.png': PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8), 'RGB'),
        'fish/g_gray_alpha.png': PIL.Image.fromarray(rng.randint(0, 256, (40, 33, 2), dtype=np.uint8), 'LA'),
    }
    # Smooth content too: noise alone would hide an error in the filter's shape.
    yy, xx = np.mgrid[0:97, 0:130]
    smooth = np.stack([128 + 127 * np.sin(xx / 9.0), 128 + 127 * np.cos(yy / 7.0), (xx + yy) % 256], -1)
    images['fish/h_smooth.png'] = PIL.Image.fromarray(smooth.astype(np.uint8), 'RGB')
    # JPEG, as ImageNet is: 4:2:0 colour, gray, CMYK (Adobe), progressive; odd sizes.
    photo = np.clip(smooth[:51, :75] + rng.randint(-20, 21, (51, 75, 3)), 0, 255).astype(np.uint8)
    jpegs = {
        'fish/i_photo.jpg': (PIL.Image.fromarray(photo, 'RGB'), {'quality': 90}),
        'cat/j_gray.jpg': (PIL.Image.fromarray(photo[:41, :40, 0], 'L'), {'quality': 85}),
        'dog/k_cmyk.jpg': (PIL.Image.fromarray(photo[:50, :30], 'RGB').convert('CMYK'), {'quality': 95}),
        'dog/l_progressive.jpeg': (PIL.Image.fromarray(photo[:48, :64], 'RGB'), {'quality': 80, 'progressive': True}),
    }
    files = {}
    for rel, (img, options) in jpegs.items():
        buf = io.BytesIO()
        img.save(buf, format='jpeg', **options)
        files[rel] = buf.getvalue()
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), 'wb') as f:
            f.write(files[rel])
    for rel, img in images.items():
        buf = io.BytesIO()
        img.save(buf, format='png')
        files[rel] = buf.getvalue()
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), 'wb') as f:
            f.write(files[rel])
    return files


def read_dest(path):
    """Names, dataset.json text and pixels [N, H, W, 3] of a converted zip."""
    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if n.endswith('.png'))
        meta = z.read('dataset.json').decode()
        pixels = np.stack([np.array(PIL.Image.open(io.BytesIO(z.read(n)))) for n in names])
    return names, meta, pixels


def main(repo, out):
    tool = import_dataset_tool(repo)
    tensors, metadata, runs = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'source')
        files = make_sources(src)
        for rel, data in files.items():
            tensors['source/' + rel] = np.frombuffer(data, dtype=np.uint8)

        # The same images in a zip with a dataset.json of their own labels.
        zip_labels = {'labels': [[rel, i % 3] for i, rel in enumerate(sorted(files))]}
        zip_src = os.path.join(tmp, 'source.zip')
        with zipfile.ZipFile(zip_src, 'w') as z:
            for rel, data in files.items():
                z.writestr(rel, data)
            z.writestr('dataset.json', json.dumps(zip_labels))
        metadata['zip_dataset_json'] = json.dumps(zip_labels)

        cases = [
            ('folder', None, (32, 32), None),
            ('folder', 'center-crop', (32, 32), None),
            ('folder', 'center-crop-wide', (32, 16), None),
            ('folder', 'center-crop-dhariwal', (32, 32), None),
            ('folder', 'center-crop-dhariwal', (64, 64), None),
            ('zip', 'center-crop', (16, 16), 5),
        ]
        for k, (source, transform, resolution, max_images) in enumerate(cases):
            dest = os.path.join(tmp, f'out{k}.zip')
            tool.convert.callback(source=src if source == 'folder' else zip_src, dest=dest, max_images=max_images,
                                  transform=transform, resolution=resolution)
            names, meta, pixels = read_dest(dest)
            tensors[f'run{k}'] = pixels
            runs.append({'source': source, 'transform': transform or '', 'resolution': list(resolution),
                         'max_images': max_images or 0, 'names': names, 'dataset_json': meta})

    # Image.resize alone, every filter the tool uses, down and up, on the smooth image.
    base = np.array(PIL.Image.open(io.BytesIO(files['fish/h_smooth.png'])))
    tensors['resize/input'] = base
    resizes = []
    for filt, name in [(PIL.Image.Resampling.LANCZOS, 'lanczos'), (PIL.Image.Resampling.BICUBIC, 'bicubic'),
                       (PIL.Image.Resampling.BOX, 'box')]:
        for size in [(64, 48), (13, 29), (130, 40), (150, 110), (65, 48)]:
            key = f'resize/{name}/{size[0]}x{size[1]}'
            tensors[key] = np.array(PIL.Image.fromarray(base).resize(size, filt))
            resizes.append(key)
    # .npy files as np.save writes them (the reference's `encode` stores latents this way):
    # a [8, 4, 4] float32 latent, float16 and float64 arrays, and NumPy's format 2.0 header.
    rng = np.random.RandomState(7)
    npys = {'latent_f4': rng.randn(8, 4, 4).astype(np.float32), 'half_f2': rng.randn(2, 3).astype(np.float16),
            'double_f8': rng.randn(3).astype(np.float64), 'scalar_f4': np.float32(1.5).reshape(())}
    for name, array in npys.items():
        buf = io.BytesIO()
        np.save(buf, array)
        tensors[f'npy/{name}'] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        tensors[f'npy/{name}.values'] = array.astype(np.float32).reshape(-1)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, npys['latent_f4'], version=(2, 0))
    tensors['npy/latent_f4_v2'] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    metadata['runs'] = json.dumps(runs)
    metadata['resizes'] = json.dumps(resizes)
    metadata['pillow'] = PIL.__version__
    write_safetensors(out, tensors, metadata)
    print(f'wrote {out}: {len(runs)} conversions, {len(resizes)} resizes (Pillow {PIL.__version__})')


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
