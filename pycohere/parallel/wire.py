"""The bytes of a command or result sent between the ranks of an MPI job: JSON, never pickle.

Ranks exchange small structured values (commands such as ``("step", ids, kv_valid, positions)``, generation
results, error descriptions, memory readings). Unpickling runs code, so even a peer's bytes are decoded as
data only: JSON for the structure, NumPy arrays as dtype + shape + raw little-endian bytes (base64), and the
one result class the protocol sends (``GenerateDecoderOnlyOutput``) by its fields. Anything else is refused
when encoding (a programming error, named) and when decoding (corrupt bytes: ``ValueError``).
"""
from __future__ import annotations

import base64
import json

import numpy as np

from ..generation.config import GenerateDecoderOnlyOutput


def _enc(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return {"__float__": float(v).hex()}  # exact, and NaN / inf survive
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"arrays of dtype {a.dtype} are not sent between ranks")
        return {"__array__": [a.dtype.newbyteorder("<").str, list(a.shape),
                              base64.b64encode(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).decode()]}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _enc(x) for k, x in v.items()}}
    if isinstance(v, GenerateDecoderOnlyOutput):
        return {"__generate__": [_enc(v.sequences), _enc(v.scores), _enc(v.logits)]}
    raise TypeError(f"{type(v).__name__} is not sent between ranks (wire.py encodes plain data only)")


def _dec(v):
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    (kind, body), = v.items()
    if kind == "__float__":
        return float.fromhex(body)
    if kind == "__array__":
        dtype, shape, data = body
        if np.dtype(dtype).kind not in "biuf":
            raise ValueError(f"an array of dtype {dtype} on the wire")
        return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
    if kind == "__tuple__":
        return tuple(_dec(x) for x in body)
    if kind == "__dict__":
        return {k: _dec(x) for k, x in body.items()}
    if kind == "__generate__":
        sequences, scores, logits = (_dec(x) for x in body)
        return GenerateDecoderOnlyOutput(sequences, scores, logits, None)
    raise ValueError(f"unknown value kind {kind!r} on the wire")


def encode(obj) -> bytes:
    return json.dumps(_enc(obj), separators=(",", ":")).encode()


def decode(data: bytes):
    return _dec(json.loads(data.decode()))
