"""safetensors files for the golden-data and benchmark scripts, without the safetensors package."""
import json
import struct

import numpy as np


def write_safetensors(path, tensors, metadata=None, float_dtype=np.float32):
    """Writes NumPy arrays: uint8 ones as U8, every other as float_dtype (float64, float32 or float16)."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        kind = np.uint8 if array.dtype == np.uint8 else float_dtype
        code = {np.float64: 'F64', np.float32: 'F32', np.float16: 'F16', np.uint8: 'U8'}[kind]
        data = np.ascontiguousarray(array, dtype=kind).tobytes()
        header[name] = {'dtype': code, 'shape': list(array.shape), 'data_offsets': [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header['__metadata__'] = metadata
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def read_safetensors(path):
    """{name: float32 array} of a file of F32 tensors."""
    with open(path, 'rb') as f:
        b = f.read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]], dtype=np.float32)
            .reshape(v['shape']).copy() for k, v in h.items() if k != '__metadata__'}
