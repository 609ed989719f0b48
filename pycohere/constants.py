"""Every table and size that more than one module needs, in one place (as gguf-py's ``constants.py``)."""
from __future__ import annotations

import numpy as np

#: Storage dtype name -> NumPy dtype of the raw buffer. The names are safetensors' (GGUF's F32, F16
#: and BF16 are the same); bf16 is kept as its uint16 bits, since NumPy has no bfloat16.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
#: The float storage dtypes a dense weight may have.
FLOAT_STORAGE = ("F64", "F32", "F16", "BF16")
#: NumPy dtype -> storage name, for writing (uint16 is U16: bf16 bits are named by their writer).
STORAGE_NAMES: dict[np.dtype, str] = {dt: name for name, dt in STORAGE_DTYPES.items() if name != "BF16"}

#: Compute dtypes a model runs in, by the names ``from_pretrained(dtype=...)`` accepts.
COMPUTE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
                                       "fp32": np.dtype(np.float32), "fp64": np.dtype(np.float64)}

#: The NumPy spec widens or dequantizes a weight in row chunks of at most this many values
#: (64 MiB of float32), so a 256000 x 8192 head never needs an 8 GB float32 temporary.
CHUNK_ELEMENTS = 1 << 24
#: Quantizing, repacking and streaming rows of a tensor go in chunks of about this many values (a few
#: MiB of temporaries whatever the tensor). Chunks are whole rows, so they never change a result.
ROW_CHUNK_VALUES = 1 << 20
#: Kernels: prefill multiplies weight tiles of this many values (16 MiB of float32) with BLAS.
TILE_ELEMENTS = 1 << 22
