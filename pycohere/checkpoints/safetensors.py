"""safetensors checkpoints: plain float ones, pycohere's quantized ones, and the base of every
safetensors-backed source (``pycohere.checkpoints.hf_quantized`` builds on it too).

A pycohere quantized checkpoint (written by ``pycohere quantize``, :mod:`pycohere.export.quantized`) is
ordinary safetensors plus metadata naming the scheme per tensor::

    config.json                  the source config + "quantization_config": {"quant_method":
                                 "pycohere", "scheme", "group_size", "keep_embeddings", "format_version"}
    model.safetensors            (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer.json, ...          copied from the source

A quantized weight ``W`` (a transformers parameter name such as ``model.layers.0.mlp.up_proj.weight``)
is stored as the plain arrays of its scheme's storage contract (``pycohere.quant.schemes``), named
``W.qweight``, ``W.scales`` (and ``W.mins``), each ``[out, (in / group) * width]``; the record is
described in ``pycohere.quant.config``. Norms, biases (and the embedding with ``keep_embeddings``) stay
under their own names in their float dtype.

Loading maps the files like any checkpoint and wraps the packed views in ``QuantizedWeight`` without
copying; :class:`QuantizedSafetensorsSource` checks them against the manifest in the *logical* names,
so a missing or misshaped tensor is reported as ``model.layers.0.mlp.up_proj.weight``, together with
every other problem. Offsets and sizes are Python integers throughout (64-bit safe).
"""
from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from ..errors import CorruptCheckpointError, QuantizationError, UnsupportedFormatError
from ..io.dtypes import widen
from ..io.safetensors import SAFETENSORS_DTYPES, Checkpoint, RowReader, TensorRef, safetensors_dtype
from ..quant.config import METADATA_KEY, QUANT_METHOD, STORAGE_VERSION, QuantizationConfig, array_name
from ..quant.schemes import SCHEMES, array_shapes, get_scheme
from ..quant.stream import quantize_tensor, resolve_group
from ..quant.weight import QuantizedWeight
from ..spec.weights import DenseWeight
from .source import RowFetch, TensorInfo, WeightSource


def read_metadata(ckpt: Checkpoint) -> dict | None:
    """The checkpoint's quantization metadata ``{"format_version", "tensors"}``, or None."""
    raw = ckpt.metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CorruptCheckpointError(f"{ckpt.path}: the {METADATA_KEY} metadata is not valid JSON ({e}); "
                                     "re-run `pycohere quantize`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), dict):
        raise CorruptCheckpointError(f"{ckpt.path}: the {METADATA_KEY} metadata lacks its 'tensors' table")
    if meta.get("format_version") != STORAGE_VERSION:
        raise UnsupportedFormatError(
            f"{ckpt.path} is a pycohere quantized checkpoint of format version {meta.get('format_version')!r}; "
            f"this pycohere reads version {STORAGE_VERSION}: upgrade pycohere or re-quantize")
    return meta


def _config_quantization(config) -> dict | None:
    entry = getattr(config, "quantization_config", None)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or entry.get("quant_method") != QUANT_METHOD:
        method = entry.get("quant_method") if isinstance(entry, Mapping) else entry
        raise UnsupportedFormatError(
            f"config.json says the weights are quantized with {method!r}; pycohere reads float "
            f"checkpoints, its own quantized format ({QUANT_METHOD!r}), bitsandbytes, GPTQ and AWQ "
            f"checkpoints and GGUF files: load the float checkpoint, optionally with "
            f"quantization_config=pycohere.QuantizationConfig(...)")
    return dict(entry)


def _array_problems(scheme: str, expected: dict, stored: dict[str, TensorRef]) -> list[str]:
    """Missing, misshaped and unexpected packed arrays of one quantized tensor."""
    bad = []
    for array, (shape, dtype) in expected.items():
        ref = stored.get(array)
        if ref is None:
            bad.append(f"{array} missing")
        elif ref.array.dtype != dtype or tuple(ref.shape) != shape:
            bad.append(f"{array} is {ref.dtype} {list(ref.shape)}, {scheme} needs "
                       f"{safetensors_dtype(dtype)} {list(shape)}")
    return bad + [f"unexpected array {a}" for a in sorted(set(stored) - set(expected))]


class SafetensorsSource(WeightSource):
    """A float safetensors checkpoint (F32/F16/BF16 tensors), optionally quantized tensor by tensor while
    loading (``quantization``); also the base of the other safetensors-backed sources: the checkpoint's
    path, files and size, float vectors widened to the compute dtype, float matrices as DenseWeight over
    the mmap view, the table row of a float tensor and pread rows of a float matrix."""

    def __init__(self, ckpt: Checkpoint, config, quantization: QuantizationConfig | None = None):
        self.ckpt = self.container = ckpt
        self.quantization = quantization
        self.problems: list[str] = []
        self.shapes = {n: t.shape for n, t in ckpt.tensors.items()}
        self._check_declared(config)

    def _check_declared(self, config) -> None:
        """config.json may not declare a quantization this source does not read."""
        if _config_quantization(config) is not None or read_metadata(self.ckpt) is not None:
            raise CorruptCheckpointError(  # (the probe sends such checkpoints to QuantizedSafetensorsSource)
                f"{self.ckpt.path} is a pycohere quantized checkpoint; open it with pycohere.checkpoints.open_weights")

    def vector(self, name: str, dtype) -> np.ndarray:
        t = self.ckpt[name]
        return widen(t.array, t.dtype, dtype)

    def dense(self, name: str, dtype, materialize: bool = False) -> DenseWeight:
        ref = self.ckpt[name]
        return DenseWeight(ref.array, ref.dtype, compute_dtype=dtype, materialize=materialize)

    def float_info(self, name: str) -> TensorInfo:
        t = self.ckpt[name]
        return TensorInfo(name, tuple(t.shape), t.dtype, 8.0 * SAFETENSORS_DTYPES[t.dtype].itemsize, None, t.nbytes)

    def float_rows(self, name: str) -> RowFetch | None:
        return RowReader(self.ckpt[name]) if name in self.ckpt else None

    def weight(self, name: str, dtype, materialize: bool = False):
        """The Weight of the [out, in] matrix ``name``: the float tensor quantized now (``quantization``),
        or a DenseWeight over the float view."""
        if self.quantization is not None and self.quantization.applies_to(name):
            q = quantize_tensor(self.ckpt[name], self.quantization)
            return QuantizedWeight.from_tensor(q, compute_dtype=dtype)
        return self.dense(name, dtype, materialize)

    def tensor_table(self) -> list[TensorInfo]:
        return [self.float_info(name) for name in sorted(self.shapes) if name in self.ckpt]

    def check_quantization_plan(self) -> None:
        """Before quantizing anything on load: every group size must fit (one clear error)."""
        if self.quantization is None:
            return
        for name in self.shapes:
            if self.quantization.applies_to(name):
                resolve_group(name, self.ckpt[name].shape, self.quantization)


class QuantizedSafetensorsSource(SafetensorsSource):
    """A pycohere quantized checkpoint: ``shapes`` (logical name -> shape) and ``problems`` (packed arrays
    missing or misshaped) feed the manifest check; :meth:`weight` wraps the stored quantized arrays (mmap
    views) in a QuantizedWeight, and float tensors as the base class does."""

    def _check_declared(self, config) -> None:
        ckpt = self.ckpt
        self.meta = read_metadata(ckpt)
        declared = _config_quantization(config)
        if declared is not None and self.meta is None:
            raise CorruptCheckpointError(
                f"{ckpt.path}: config.json declares a pycohere quantized checkpoint but the safetensors "
                f"files carry no {METADATA_KEY} metadata; the files were replaced or damaged: re-quantize")
        if self.quantization is not None:
            raise QuantizationError(
                f"{ckpt.path} is already quantized ({self.describe()}); load it without "
                f"quantization_config / load_in_8bit / load_in_4bit, or quantize the float checkpoint")
        self.quantized: dict[str, tuple[dict[str, np.ndarray], dict]] = {}
        self._collect_quantized()

    def tensor_table(self) -> list[TensorInfo]:
        """Every logical tensor: float ones with their dtype, quantized ones with their scheme."""
        rows = []
        for name, shape in sorted(self.shapes.items()):
            if name in self.quantized:
                arrays, entry = self.quantized[name]
                cls = get_scheme(entry["scheme"])
                g = int(entry["group_size"])
                rows.append(TensorInfo(name, tuple(shape), entry["scheme"], cls.bits_per_weight(g),
                                       None if g == shape[-1] and cls.block_size is None else g,
                                       int(sum(a.nbytes for a in arrays.values()))))
            elif name in self.ckpt:
                rows.append(self.float_info(name))
        return rows

    def describe(self) -> str:
        schemes = sorted({str(e.get("scheme")) for e in self.meta["tensors"].values() if isinstance(e, dict)})
        return f"{', '.join(schemes)}, {len(self.meta['tensors'])} tensors"

    def _collect_quantized(self) -> None:
        for name, entry in sorted(self.meta["tensors"].items()):
            expected = self._expected_arrays(name, entry)
            prefix = name + "."
            stored = {n[len(prefix):]: ref for n, ref in self.ckpt.tensors.items()
                      if n.startswith(prefix) and "." not in n[len(prefix):]}
            for array in stored:  # the packed arrays stand for one logical tensor in the manifest
                self.shapes.pop(prefix + array, None)
            self.shapes[name] = tuple(entry["shape"])
            bad = _array_problems(entry["scheme"], expected, stored)
            if bad:
                self.problems.append(f"{name} ({entry['scheme']}): " + "; ".join(bad))
            else:
                self.quantized[name] = ({a: stored[a].array for a in expected}, entry)

    def _expected_arrays(self, name: str, entry) -> dict:
        """{array: (shape, dtype)} the metadata entry of ``name`` promises (validated)."""
        where = f"{self.ckpt.path}: {name}"
        if not isinstance(entry, dict) or not {"scheme", "group_size", "shape"} <= set(entry):
            raise CorruptCheckpointError(f"{where}: quantization metadata {entry!r} needs scheme, group_size "
                                         "and shape")
        if entry["scheme"] not in SCHEMES:
            raise UnsupportedFormatError(
                f"{where} uses quantization scheme {entry['scheme']!r}, unknown to this pycohere (it reads "
                f"{', '.join(sorted(SCHEMES))}); upgrade pycohere")
        try:
            return array_shapes(entry["scheme"], entry["shape"], entry["group_size"])
        except QuantizationError as e:
            raise CorruptCheckpointError(f"{where}: inconsistent quantization metadata: {e}") from None

    def weight(self, name: str, dtype, materialize: bool = False):
        if name in self.quantized:
            arrays, entry = self.quantized[name]
            return QuantizedWeight(arrays, entry, compute_dtype=dtype)
        return self.dense(name, dtype, materialize)

    def float_rows(self, name: str) -> RowFetch | None:
        return None if name in self.quantized else super().float_rows(name)

    def dequantized_rows(self, name: str) -> RowFetch:
        """float32 rows of a quantized matrix, from packed rows read with ``os.pread``."""
        arrays, entry = self.quantized[name]
        readers = {a: RowReader(self.ckpt[array_name(name, a)]).raw for a in arrays}
        cls = get_scheme(entry["scheme"])
        widths = {a: w for a, (w, _) in cls.block_layout(int(entry["group_size"])).items()}

        def floats(start, stop):
            packed = {a: read(start, stop).reshape(-1, widths[a]) for a, read in readers.items()}
            return cls.dequantize_blocks(packed).reshape(stop - start, -1)
        return floats

    def stored_rows(self, name: str) -> RowFetch | None:
        # ggml block schemes (q8_0, q4_0, ...) store the GGUF bytes themselves in qweight
        if name not in self.quantized:
            return None
        arrays, entry = self.quantized[name]
        if get_scheme(entry["scheme"]).bytes_per_block is None:
            return None
        return RowReader(self.ckpt[array_name(name, "qweight")]).raw

    def check_quantization_plan(self) -> None:
        """Nothing to plan: a quantize-on-load request was refused in the constructor."""
