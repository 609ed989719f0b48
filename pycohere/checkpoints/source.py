"""The weight-source interface every checkpoint format implements (``WeightSource``), and ``TensorInfo``.

A source serves one checkpoint's tensors under transformers' (logical) parameter names
(``model.layers.0.mlp.up_proj.weight``), whatever the file format, so that the model
(``pycohere.model.params``) never looks at a file:

=====================================  ==========================================================
checkpoint (``Probe.format``)          source
=====================================  ==========================================================
float safetensors (``safetensors``)    ``pycohere.checkpoints.safetensors.SafetensorsSource``
                                       (also quantize-on-load with a ``QuantizationConfig``)
pycohere quantized (``pycohere``)      ``pycohere.checkpoints.safetensors.QuantizedSafetensorsSource``
bitsandbytes / GPTQ / AWQ              ``pycohere.checkpoints.hf_quantized.HFQuantizedSource``
GGUF (``gguf``), single or split       ``pycohere.checkpoints.gguf.GGUFSource``
=====================================  ==========================================================
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..spec.weights import Weight

#: ``fetch(start, stop) -> rows`` of a matrix: float32 values, or the stored block bytes.
RowFetch = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class TensorInfo:
    """One logical tensor as stored: ``storage`` is a dtype (F32, BF16, ...) or a scheme / ggml
    type (int8, nf4, Q4_K, ...); ``block_size`` values share one scale (None for float tensors
    and per-channel scales over the whole row)."""

    name: str
    shape: tuple[int, ...]
    storage: str
    bits_per_weight: float
    block_size: int | None
    nbytes: int


class WeightSource(ABC):
    """The tensors of one checkpoint in transformers' names.

    ``shapes`` (logical name -> logical shape) and ``problems`` (packed arrays missing or misshaped)
    feed the manifest check (``pycohere.checkpoints.manifest.check_manifest``) before anything loads.
    """

    shapes: dict[str, tuple[int, ...]]
    problems: list[str]
    #: the parsed files (``pycohere.io.safetensors.Checkpoint`` or ``pycohere.checkpoints.gguf.GGUFModelFile``):
    #: ``path`` (the folder or first file), ``files`` and ``nbytes`` (bytes of weights on disk)
    container: object

    @property
    def path(self) -> Path:
        return self.container.path

    @property
    def files(self) -> list[Path]:
        return self.container.files

    @property
    def nbytes(self) -> int:
        return self.container.nbytes

    # --- what every format provides ---------------------------------------------------------------
    @abstractmethod
    def weight(self, name: str, dtype, materialize: bool = False) -> Weight:
        """The spec ``Weight`` of the [out, in] matrix ``name`` (dense or quantized; never copied unless
        quantized on load, repacked, or ``materialize``)."""

    @abstractmethod
    def vector(self, name: str, dtype) -> np.ndarray:
        """A small float tensor (norm, bias) in the compute dtype."""

    @abstractmethod
    def tensor_table(self) -> list[TensorInfo]:
        """One row per logical tensor (``pycohere inspect``)."""

    # --- shared behaviour ---------------------------------------------------------------------------
    def matrix(self, name: str, dtype, backend: str = "numpy", materialize: bool = False) -> Weight:
        """``weight(name)``, wrapped in its Numba twins for ``backend="numba"`` (chosen in one place:
        ``pycohere.kernels.dispatch``)."""
        w = self.weight(name, dtype, materialize)
        if backend == "numba":
            from ..kernels.dispatch import fast_weight
            return fast_weight(w)
        return w

    def check_quantization_plan(self) -> None:
        """Before quantizing anything on load: every group size must fit (one clear error)."""

    def float_rows(self, name: str) -> RowFetch | None:
        """float32 rows of a *float* matrix read with ``os.pread`` (streaming a whole model then leaves
        the pages in the page cache, not in the resident set), or None for other tensors."""
        return None

    def stored_rows(self, name: str) -> RowFetch | None:
        """The stored ggml block bytes of a matrix kept in a GGUF block type (``pycohere convert`` copies
        them unchanged), or None."""
        return None

    def describe(self) -> str:
        kinds = sorted({r.storage for r in self.tensor_table()})
        return ", ".join(kinds)
