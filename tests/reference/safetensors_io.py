"""safetensors encode/decode shared by the golden scripts in this folder (no safetensors package on
Debian): an 8-byte little-endian header length, a JSON header padded with spaces to a multiple of
8, then the tensors contiguous in sorted-name order."""
import json
import math
import struct

import torch

DTYPES = {torch.float64: ("F64", "d", 8), torch.float32: ("F32", "f", 4),
          torch.int64: ("I64", "q", 8)}
DTYPE_BY_NAME = {v[0]: (k, v) for k, v in DTYPES.items()}


def encode_safetensors(tensors, metadata):
    """Serializes {name: tensor} plus string metadata; deterministic bytes for equal inputs."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        code, fmt, _ = DTYPES[t.dtype]
        flat = t.reshape(-1).tolist()
        blob = struct.pack(f"<{len(flat)}{fmt}", *flat)
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def decode_safetensors(raw):
    """Parses and validates a safetensors blob; returns (tensors, metadata)."""
    (n,) = struct.unpack_from("<Q", raw, 0)
    assert n % 8 == 0 and 8 + n <= len(raw), "bad header length"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = raw[8 + n:]
    expected_begin = 0
    tensors = {}
    for name in sorted(header):
        info = header[name]
        dtype, (_, fmt, size) = DTYPE_BY_NAME[info["dtype"]]
        begin, end = info["data_offsets"]
        count = math.prod(info["shape"])
        assert begin == expected_begin, f"{name}: tensors not contiguous in sorted order"
        assert end - begin == count * size, f"{name}: byte range does not match its shape"
        values = struct.unpack_from(f"<{count}{fmt}", data, begin)
        tensors[name] = torch.tensor(values, dtype=dtype).reshape(info["shape"])
        expected_begin = end
    assert expected_begin == len(data), "trailing bytes after the last tensor"
    return tensors, metadata
