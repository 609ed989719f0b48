"""Quantizing a float tensor streamed in row chunks: for quantize-on-load and ``pycohere quantize``.

Same chunks and the same ``quantize_blocks`` as :func:`pycohere.quant.quantize`, hence the same bytes;
memory stays a few MiB whatever the tensor.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import QuantizationError
from ..io.safetensors import RowReader, TensorRef
from .config import QuantizationConfig
from .schemes import QuantizedTensor, array_shapes, check_finite, get_scheme, row_chunks


def quantize_stream(name: str, fetch: Callable[[int, int], np.ndarray], shape, scheme: str, group_size: int,
                    emit: Callable[[str, int, np.ndarray], None]) -> None:
    """Quantize a float [out, in] tensor chunk by chunk: ``emit(array, row_start, rows)``.

    Same chunks and the same ``quantize_blocks`` as :func:`pycohere.quant.quantize`, hence the
    same bytes; memory stays a few MiB whatever the tensor."""
    cls = get_scheme(scheme)
    rows, cols = shape
    for start, stop in row_chunks(rows, cols):
        values = fetch(start, stop)
        try:
            check_finite(values, start)
        except QuantizationError as e:
            raise QuantizationError(f"{name}: {e}") from None
        for array, packed in cls.quantize_blocks(values.reshape(-1, group_size)).items():
            emit(array, start, packed.reshape(stop - start, -1))


def resolve_group(name: str, shape, qc: QuantizationConfig) -> int:
    """The group size for tensor ``name``, or a QuantizationError naming the tensor."""
    if len(shape) != 2:
        raise QuantizationError(f"{name} has shape {list(shape)}; only 2-D weights can be quantized")
    try:
        return get_scheme(qc.scheme).resolve_group_size(qc.group_size, shape[1])
    except QuantizationError as e:
        raise QuantizationError(f"cannot quantize {name} {list(shape)}: {e}") from None


def quantize_rows(name: str, fetch: Callable[[int, int], np.ndarray], shape, qc: QuantizationConfig) -> QuantizedTensor:
    """Quantize the float [out, in] matrix read by ``fetch(start, stop)`` into owned arrays."""
    group = resolve_group(name, shape, qc)
    out = {a: np.empty(s, dtype) for a, (s, dtype) in array_shapes(qc.scheme, shape, group).items()}

    def emit(array, start, rows):
        out[array][start:start + len(rows)] = rows
    quantize_stream(name, fetch, shape, qc.scheme, group, emit)
    return QuantizedTensor(qc.scheme, group, shape, out)


def quantize_tensor(ref: TensorRef, qc: QuantizationConfig) -> QuantizedTensor:
    """Quantize one float tensor of a safetensors checkpoint (quantize-on-load), read with ``os.pread``."""
    return quantize_rows(ref.name, RowReader(ref), ref.shape, qc)
