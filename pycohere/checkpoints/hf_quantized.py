"""Hugging Face quantized checkpoints: bitsandbytes, GPTQ and AWQ (GEMM) safetensors.

``pycohere.checkpoints.open_weights`` hands a checkpoint whose config.json has
``quantization_config.quant_method`` bitsandbytes, gptq or awq to :class:`HFQuantizedSource`, which
serves it through the ``WeightSource`` interface (``pycohere.checkpoints.source``) (logical transformers names,
``matrix`` / ``vector`` / ``tensor_table``). Each quantized linear weight ``P.weight`` is found from
its tensor names and repacked *once, tensor by tensor, when the model asks for it* into a pycohere
scheme (``pycohere.quant.schemes``) whose Numba kernels stream it:

=========================  ==================================================  ====================
on disk (names under P)    layout (shared/reference/quantized-formats.md)      pycohere scheme
=========================  ==================================================  ====================
bitsandbytes 4-bit         ``weight`` u8 [(out*in+1)//2, 1], flat, element 2j  ``nf4`` / ``fp4``:
``weight`` + ``.absmax``,  in the HIGH nibble; ``absmax`` f32 [n/B] (u8 codes  ``weight`` and
``.quant_map``,            + ``nested_absmax``/``nested_quant_map`` with       ``absmax`` used as
``.quant_state.bitsand-    double quantization); the quant_state JSON gives    zero-copy views
bytes__nf4`` (or fp4)      quant_type, blocksize, shape (authoritative)
bitsandbytes 8-bit         ``weight`` i8 [out, in], ``SCB`` f32 [out]          ``bnb-int8`` (views)
(LLM.int8)                 (``weight_format`` u8: 0 = row-major)
GPTQ 4-bit (v1, v2)        ``qweight`` i32 [in/8, out], ``qzeros`` i32          ``int4-asym``
                           [G, out/8], ``scales`` f16 [G, out], ``g_idx`` [in]  (+ input permutation)
AWQ GEMM 4-bit             ``qweight`` i32 [in, out/8] (nibble order            ``int4-asym``
                           0,2,4,6,1,3,5,7), ``qzeros`` [in/G, out/8], scales
=========================  ==================================================  ====================

GPTQ/AWQ arrays are read with ``os.pread`` (not through the memory map) and transposed in chunks,
so loading grows the resident set by the repacked arrays only (their size on disk), never by a
float copy. Everything else (embeddings, norms, biases, an unquantized lm_head) is read as in
``pycohere.checkpoints.safetensors.SafetensorsSource``. Values are bit-identical to the reference dequantizers:
bitsandbytes' CPU ``dequantize_4bit`` / ``int8_vectorwise_dequant`` in float32, and the GPTQ/AWQ
formulas ``s * (q - z)`` (see :func:`_int4_asym_arrays` for why the repacked ``n * s + m`` is exact).
Unsupported variants raise ``UnsupportedFormatError`` naming the tensor; missing or misshaped arrays
are listed in ``problems`` and reported with the manifest check (``WeightMismatchError``).
"""
from __future__ import annotations

import json
import re
from typing import Mapping

import numpy as np

from ..constants import ROW_CHUNK_VALUES
from ..errors import CorruptCheckpointError, QuantizationError, UnsupportedFormatError
from ..io.dtypes import widen
from ..io.safetensors import Checkpoint, RowReader, TensorRef
from ..kernels.hf import permute_codes
from ..quant.config import METADATA_KEY
from ..quant.schemes import FP4_TABLE, NF4_TABLE, pack_nibbles
from ..quant.weight import PermutedWeight, QuantizedWeight
from ..spec.weights import Weight
from .safetensors import SafetensorsSource
from .source import TensorInfo

SUPPORTED = ("bitsandbytes 4-bit (nf4/fp4, with or without double quantization) and 8-bit (LLM.int8), "
             "GPTQ 4-bit (checkpoint_format gptq or gptq_v2, any g_idx) and AWQ 4-bit GEMM")
# Group sizes of pycohere's 4-bit kernels; a larger group (or one per row) is served by repeating
# its scale over sub-groups of the largest of these that divides it (exact: same scale values).
KERNEL_GROUPS = (128, 64, 32)
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # bitsandbytes quantize_4bit's list
BNB_TABLES = {"nf4": NF4_TABLE, "fp4": FP4_TABLE}
AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # nibble i of a word holds column 8c + AWQ_ORDER[i]
_SHIFTS = np.arange(0, 32, 4, dtype=np.uint32)


# --- helpers ---------------------------------------------------------------------------------------
def _kernel_group(name: str, group: int, in_features: int, fmt: str) -> int:
    """The pycohere group size serving a stored group of ``group`` inputs (exact: scales repeat)."""
    for g in KERNEL_GROUPS:
        if group % g == 0 and in_features % g == 0:
            return g
    raise UnsupportedFormatError(
        f"{name}: {fmt} with groups of {group} input values over rows of {in_features}; pycohere's "
        f"4-bit kernels need groups that are a multiple of 32 (32, 64, 128, 256, ... or one per row of "
        f"a multiple of 32 values)")


def _repeat_groups(a: np.ndarray, factor: int) -> np.ndarray:
    return a if factor == 1 else np.repeat(a, factor, axis=1)


def _describe(ref: TensorRef) -> str:
    return f"{ref.dtype} {list(ref.shape)}"


def _check_array(problems: list, ref: TensorRef | None, full_name: str, dtypes: tuple, shape) -> None:
    """Append a problem when the array is missing or has another dtype / shape."""
    if ref is None:
        problems.append(f"{full_name} missing")
    elif ref.dtype not in dtypes or tuple(ref.shape) != tuple(shape):
        problems.append(f"{full_name} is {_describe(ref)}, expected {'/'.join(dtypes)} {list(shape)}")


def _unpack_words(words: np.ndarray, awq: bool = False) -> np.ndarray:
    """int32 words [r, c] -> 4-bit codes u8 [r, 8c]: nibble i (bits 4i..4i+3) of word c is column
    8c + i (GPTQ), or column 8c + AWQ_ORDER[i] (AWQ)."""
    u = np.ascontiguousarray(words).view(np.uint32)
    nib = ((u[:, :, None] >> _SHIFTS) & np.uint32(15)).astype(np.uint8)
    if awq:  # column j of a word group is nibble i with AWQ_ORDER[i] = j
        nib = nib[:, :, np.argsort(AWQ_ORDER)]
    return nib.reshape(u.shape[0], -1)


def _int4_asym_arrays(scales: np.ndarray, zeros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ/AWQ ``w = s * (q - z)`` as int4-asym's ``w = q * s + m`` with ``m = -(s * z)``.

    Exact, bit for bit, for finite positive f16/bf16 scales and codes q in 0..15, z in 0..16:
    a half-precision s is M * 2^e with |M| < 2^11 (e >= -24, or -133 for bf16: both far above
    float32's subnormal limit), so q*s, z*s and (q - z)*s have integer multiples of 2^e with fewer
    than 2^16 steps: every one is a float32 (24-bit significand), computed without rounding. Then
    q*s + m is the sum of two exact float32 values whose exact result (q - z)*s is representable,
    and IEEE addition returns a representable sum exactly. When q == z the sum is x + (-x) = +0,
    and 0 * s is +0 too for s > 0; for s <= 0 the two can differ only in the sign of a zero.
    (Non-finite scales are refused before this is called.) tests/test_hf_formats.py checks it
    exhaustively over every positive f16 scale.
    scales: float [G, out] (f16 values), zeros: integer [G, out] -> (scales, mins) f32 [out, G].
    """
    s = np.ascontiguousarray(scales.astype(np.float32).T)
    m = -(s * np.ascontiguousarray(zeros.T).astype(np.float32))
    return s, m


def _read(ref: TensorRef, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows of a stored array as stored, read with ``os.pread`` (storage.RowReader) rather than
    through the memory map: the bytes a repacked tensor came from then stay in the page cache
    instead of being counted, a second time, in this process's resident set."""
    return RowReader(ref).raw(start, ref.shape[0] if stop is None else stop)


def _finite_scales(name: str, ref: TensorRef) -> np.ndarray:
    """The stored f16/bf16 scales as float32 (exact), refusing inf/NaN."""
    s = widen(_read(ref), ref.dtype, np.float32)
    if not np.isfinite(s).all():
        raise CorruptCheckpointError(f"{ref.name} (the scales of {name}) holds inf or NaN values; the "
                                     f"checkpoint is broken: re-download or re-quantize it")
    return s


# --- one quantized tensor per format -----------------------------------------------------------------
class _Entry:
    """A quantized logical tensor: the stored arrays (``refs``: suffix -> TensorRef), its logical
    [out, in] shape, the on-disk format label and block size (``tensor_table``), and ``build`` ->
    a pycohere Weight."""

    storage: str
    block_size: int | None

    def __init__(self, name: str, prefix: str, refs: dict[str, TensorRef]):
        self.name, self.prefix, self.refs = name, prefix, refs
        self.problems: list[str] = []

    def ref(self, suffix: str) -> TensorRef | None:
        return self.refs.get(suffix)

    def full(self, suffix: str) -> str:
        return self.prefix + suffix

    @property
    def nbytes(self) -> int:
        return int(sum(r.nbytes for r in self.refs.values()))

    def info(self) -> TensorInfo:
        out, inp = self.shape
        return TensorInfo(self.name, tuple(self.shape), self.storage, 8 * self.nbytes / max(1, out * inp),
                          self.block_size, self.nbytes)


class _Bnb4(_Entry):
    """bitsandbytes 4-bit: ``prefix`` is ``P.weight`` (the packed tensor's own name)."""

    def __init__(self, name, refs, quant_type: str, state_ref: TensorRef):
        super().__init__(name, name, refs)
        if quant_type not in BNB_TABLES:
            raise UnsupportedFormatError(
                f"{name}: bitsandbytes 4-bit type {quant_type!r}; pycohere reads nf4 and fp4 ({SUPPORTED})")
        state = self._state(state_ref)
        if state.get("quant_type") != quant_type:
            raise CorruptCheckpointError(
                f"{state_ref.name} says quant_type {state.get('quant_type')!r}, its name says {quant_type!r}: "
                "the checkpoint is inconsistent; re-save it with bitsandbytes")
        shape, bs = state.get("shape"), state.get("blocksize")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise UnsupportedFormatError(f"{name}: bitsandbytes quant_state shape {shape!r}; pycohere reads 2-D "
                                         f"[out, in] linear weights")
        if bs not in BNB_BLOCKSIZES:
            raise UnsupportedFormatError(f"{name}: bitsandbytes blocksize {bs!r}; bitsandbytes itself accepts "
                                         f"{', '.join(map(str, BNB_BLOCKSIZES))}")
        self.quant_type, self.blocksize, self.shape = quant_type, bs, tuple(shape)
        out, inp = self.shape
        if inp % bs or inp % 2:
            raise UnsupportedFormatError(
                f"{name} {list(shape)}: bitsandbytes blocks of {bs} do not divide its rows of {inp} values "
                f"(blocks would span two output rows); pycohere reads 4-bit tensors whose row length is a "
                f"multiple of the blocksize")
        self.kernel_group = _kernel_group(name, bs, inp, "bitsandbytes 4-bit")
        self.nested = "nested_offset" in state
        if self.nested:
            if state.get("nested_dtype", "float32") != "float32" or not isinstance(state.get("nested_blocksize"), int) \
                    or state["nested_blocksize"] <= 0 or not isinstance(state["nested_offset"], (int, float)):
                raise UnsupportedFormatError(
                    f"{name}: double quantization with nested_dtype {state.get('nested_dtype')!r}, nested_blocksize "
                    f"{state.get('nested_blocksize')!r}, nested_offset {state.get('nested_offset')!r}; pycohere reads "
                    f"bitsandbytes' own (float32 nested absmax, integer blocksize, float offset)")
            self.nested_blocksize, self.offset = state["nested_blocksize"], np.float32(state["nested_offset"])
        self.storage = f"bnb-{quant_type}" + ("+dq" if self.nested else "")
        self.block_size = bs
        self._check(out * inp)

    def _state(self, ref: TensorRef) -> dict:
        try:
            state = json.loads(bytes(np.asarray(ref.array).reshape(-1).view(np.uint8)).decode("utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not an object")
            return state
        except (UnicodeDecodeError, ValueError) as e:
            raise CorruptCheckpointError(f"{ref.name} is not bitsandbytes' quant_state JSON ({e}); the "
                                         "checkpoint is damaged: re-download or re-save it") from None

    def _check(self, n: int) -> None:
        nblocks = n // self.blocksize
        w = self.ref("")
        if w is None:
            self.problems.append(f"{self.name} missing")
        elif w.nbytes != (n + 1) // 2:
            self.problems.append(f"{self.name} is {_describe(w)} ({w.nbytes} bytes), expected {(n + 1) // 2} "
                                 f"bytes of packed 4-bit codes for {list(self.shape)}")
        _check_array(self.problems, self.ref(".absmax"), self.full(".absmax"),
                     ("U8",) if self.nested else ("F32",), (nblocks,))
        _check_array(self.problems, self.ref(".quant_map"), self.full(".quant_map"), ("F32",), (16,))
        nested = (".nested_absmax", ".nested_quant_map")
        if self.nested:
            _check_array(self.problems, self.ref(nested[0]), self.full(nested[0]), ("F32",),
                         (-(-nblocks // self.nested_blocksize),))
            _check_array(self.problems, self.ref(nested[1]), self.full(nested[1]), ("F32",), (256,))
        else:
            self.problems += [f"unexpected {self.full(s)} (the quant_state has no nested_offset)"
                              for s in nested if s in self.refs]
        qmap = self.ref(".quant_map")
        if not self.problems and not np.allclose(qmap.array, BNB_TABLES[self.quant_type], rtol=0, atol=1e-6):
            raise UnsupportedFormatError(
                f"{qmap.name} is not bitsandbytes' {self.quant_type} code book (bitsandbytes' kernels decode "
                f"with their built-in table, so this file was not written by bitsandbytes); pycohere reads "
                f"the standard nf4/fp4 tables only")

    def absmax(self) -> np.ndarray:
        """float32 [n / blocksize]: stored, or expanded from double quantization exactly as
        bitsandbytes does on CPU (functional.dequantize_4bit -> dequantize_blockwise, whose fp32
        kernel computes ``code[A[i]] * absmax[i // blocksize]``, then ``absmax += offset``; both
        steps round to float32)."""
        stored = self.ref(".absmax").array
        if not self.nested:
            return stored
        code = self.ref(".nested_quant_map").array
        nested = self.ref(".nested_absmax").array
        blocks = np.arange(stored.shape[0], dtype=np.int64) // self.nested_blocksize
        return (code[stored] * nested[blocks]) + self.offset

    def build(self, dtype) -> Weight:
        out, inp = self.shape
        # The packed bytes are already nf4's layout (rows of in/2 bytes, element 2j high): a view.
        q = self.ref("").array.reshape(-1).view(np.uint8).reshape(out, inp // 2)
        group = self.kernel_group
        scales = _repeat_groups(self.absmax().reshape(out, inp // self.blocksize), self.blocksize // group)
        return QuantizedWeight({"qweight": q, "scales": scales},
                               {"scheme": self.quant_type, "group_size": group, "shape": [out, inp]},
                               compute_dtype=dtype)


class _Bnb8(_Entry):
    """LLM.int8: ``P.weight`` i8 [out, in] and ``P.SCB`` f32 [out] (``prefix`` is ``P``)."""

    storage = "bnb-int8"
    block_size = None

    def __init__(self, name, prefix, refs):
        super().__init__(name, prefix, refs)
        w = self.ref(".weight")
        scb = self.ref(".SCB")
        if w is not None and w.dtype == "I8" and len(w.shape) == 2:
            self.shape = tuple(w.shape)
        else:  # the logical shape is then unknown: [len(SCB), 0] keeps the manifest check going
            self.shape = (scb.shape[0] if len(scb.shape) == 1 else 0, 0)
            self.problems.append(f"{name} is {_describe(w) if w else 'missing'}, expected I8 [out, in] (LLM.int8 "
                                 f"codes beside {scb.name})")
        _check_array(self.problems, scb, self.full(".SCB"), ("F32",), (self.shape[0],))
        fmt = self.ref(".weight_format")
        if fmt is not None:
            value = int(np.asarray(fmt.array).reshape(-1)[0]) if fmt.array.size == 1 else None
            if value != 0:
                raise UnsupportedFormatError(
                    f"{name}: bitsandbytes weight_format {value!r} (a GPU tile layout: col32/col_turing/"
                    f"col_ampere); pycohere reads row-major LLM.int8 weights (weight_format 0), as recent "
                    f"bitsandbytes saves them: re-save the checkpoint with bitsandbytes >= 0.45")

    def build(self, dtype) -> Weight:
        out, inp = self.shape
        return QuantizedWeight({"qweight": self.ref(".weight").array, "scales": self.ref(".SCB").array.reshape(out, 1)},
                               {"scheme": "bnb-int8", "group_size": inp, "shape": [out, inp]},
                               compute_dtype=dtype)


class _Int4Packed(_Entry):
    """GPTQ / AWQ: ``P.qweight``, ``P.qzeros``, ``P.scales`` (+ GPTQ ``P.g_idx``); ``prefix`` is ``P``."""

    SCALE_DTYPES = ("F16", "BF16")  # half precision: what makes the repacked n*s + m exact
    KIND: str

    def __init__(self, name, prefix, refs, group_size: int, label: str):
        super().__init__(name, prefix, refs)
        q = self.ref(".qweight")
        if q.dtype != "I32" or len(q.shape) != 2:
            raise UnsupportedFormatError(
                f"{q.name} is {_describe(q)}; pycohere reads 4-bit {self.KIND} weights packed in int32 words "
                f"(I32 [rows, cols]), not other pack dtypes")
        self.shape = self.logical_shape(q.shape)
        out, inp = self.shape
        self.group = inp if group_size == -1 else group_size
        self.storage = f"{label} " + ("per-channel" if group_size == -1 else f"g{group_size}")
        self.block_size = None if group_size == -1 else group_size
        if self.group <= 0 or inp % self.group:
            raise UnsupportedFormatError(
                f"{name} [{out}, {inp}]: group_size {group_size} does not divide the {inp} inputs (a partial last "
                f"group); pycohere reads GPTQ/AWQ tensors whose row length is a multiple of the group size")
        self.n_groups = inp // self.group
        self.kernel_group = _kernel_group(name, self.group, inp, self.storage)
        _check_array(self.problems, self.ref(".scales"), self.full(".scales"), self.SCALE_DTYPES, (self.n_groups, out))
        _check_array(self.problems, self.ref(".qzeros"), self.full(".qzeros"), ("I32",), self.zeros_shape())

    def zeros_shape(self):
        return (self.n_groups, -(-self.shape[0] // 8))

    def scales_and_zeros(self) -> tuple[np.ndarray, np.ndarray]:
        """(scales f32 [out, G], mins f32 [out, G]) of the stored groups."""
        s = _finite_scales(self.name, self.ref(".scales"))
        z = _unpack_words(_read(self.ref(".qzeros")), awq=self.KIND == "AWQ")[:, :self.shape[0]]
        return _int4_asym_arrays(s, z.astype(np.int32) + self.zero_offset)

    zero_offset = 0

    def build(self, dtype) -> Weight:
        out, inp = self.shape
        perm = self.permutation()
        group = self.kernel_group
        qweight = np.empty((out, inp // 2), dtype=np.uint8)
        self.fill_codes(qweight)
        if perm is not None:  # act-order: inputs sorted by group, chunks of output rows at a time
            step = max(1, ROW_CHUNK_VALUES // inp)
            for o0 in range(0, out, step):
                rows = qweight[o0:o0 + step]
                permuted = np.empty_like(rows)
                permute_codes(rows, perm, permuted)  # (load time: the kernel; its twin is permute_codes_spec)
                rows[...] = permuted
        scales, mins = self.scales_and_zeros()
        factor = self.group // group
        w = QuantizedWeight({"qweight": qweight, "scales": _repeat_groups(scales, factor),
                             "mins": _repeat_groups(mins, factor)},
                            {"scheme": "int4-asym", "group_size": group, "shape": [out, inp]},
                            compute_dtype=dtype)
        return w if perm is None else PermutedWeight(w, perm)

    def permutation(self) -> np.ndarray | None:
        return None


class _GPTQ(_Int4Packed):
    """GPTQ: qweight i32 [in/8, out] with input 8r + j at bits 4j of row r; qzeros i32 [G, out/8]
    (column 8c + j at bits 4j); v1 (``checkpoint_format: gptq``) stores zero - 1, and the zero is
    nibble + 1 per nibble as AutoGPTQ's and exllama's dequantizers compute it (a stored 15 means 16;
    gptqmodel's v1 -> v2 conversion adds 0x11111111 to whole words instead, which carries into the
    next nibble there: v1 files with such nibbles, from the v1 zero-0 overflow, are broken anyway)."""

    KIND = "GPTQ"

    def __init__(self, name, prefix, refs, group_size, version: int, desc_act: bool):
        self.zero_offset = 1 if version == 1 else 0
        super().__init__(name, prefix, refs, group_size, f"gptq-v{version}")
        g = self.ref(".g_idx")
        if g is not None or desc_act:  # without act-order g_idx is k // group and may be left out
            _check_array(self.problems, g, self.full(".g_idx"), ("I32", "I64"), (self.shape[1],))

    @staticmethod
    def logical_shape(qshape):
        return (qshape[1], qshape[0] * 8)

    def permutation(self) -> np.ndarray | None:
        """None when g_idx is k // group (or absent); else the stable sort of the inputs by group,
        after checking that every group has exactly ``group`` members (then block g of the sorted
        order is group g, with its own scale and zero)."""
        ref = self.ref(".g_idx")
        if ref is None:
            return None
        g_idx = _read(ref).astype(np.int64)
        inp = self.shape[1]
        if np.array_equal(g_idx, np.arange(inp, dtype=np.int64) // self.group):
            return None
        if g_idx.min() < 0 or g_idx.max() >= self.n_groups:
            raise CorruptCheckpointError(
                f"{ref.name} has group indices outside 0..{self.n_groups - 1}; the checkpoint is damaged")
        counts = np.bincount(g_idx, minlength=self.n_groups)
        if (counts != self.group).any():
            raise UnsupportedFormatError(
                f"{ref.name}: groups of unequal size ({counts.min()}..{counts.max()} inputs, group_size "
                f"{self.group}); pycohere reads act-order (desc_act) GPTQ whose groups have group_size inputs each")
        return np.argsort(g_idx, kind="stable")

    def fill_codes(self, dest: np.ndarray) -> None:
        """dest u8 [out, in/2] <- the codes in input order, by chunks of qweight rows. Transposed,
        the int32 words of an output row are little-endian bytes holding inputs 2b (low nibble) and
        2b + 1 (high): already int4's byte layout, so this is a transposing copy."""
        ref = self.ref(".qweight")
        rows, out = ref.shape
        step = max(1, ROW_CHUNK_VALUES // out)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            words = np.ascontiguousarray(_read(ref, r0, r1).astype("<i4", copy=False).T)
            dest[:, 4 * r0:4 * r1] = words.view(np.uint8)


class _AWQ(_Int4Packed):
    """AWQ GEMM: qweight i32 [in, out/8], qzeros i32 [in/G, out/8] (nibble order AWQ_ORDER), no +1."""

    KIND = "AWQ"

    @staticmethod
    def logical_shape(qshape):
        return (qshape[1] * 8, qshape[0])

    def zeros_shape(self):
        return (self.n_groups, self.shape[0] // 8)

    def fill_codes(self, dest: np.ndarray) -> None:
        """dest u8 [out, in/2] <- the codes, by chunks of (an even number of) input rows."""
        ref = self.ref(".qweight")
        inp, words = ref.shape
        step = max(8, ROW_CHUNK_VALUES // (8 * words) // 8 * 8)
        for r0 in range(0, inp, step):
            r1 = min(inp, r0 + step)
            codes = _unpack_words(_read(ref, r0, r1), awq=True)  # [r1 - r0, out]
            dest[:, r0 // 2:r1 // 2] = pack_nibbles(np.ascontiguousarray(codes.T))


# --- reading the quantization_config -----------------------------------------------------------------
def _gptq_settings(qc: Mapping, first: str) -> tuple[int, int]:
    """(group_size, version) of a GPTQ quantization_config, or UnsupportedFormatError."""
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    problems = []
    if qc.get("bits") != 4:
        problems.append(f"bits={qc.get('bits')!r}")
    if fmt not in ("gptq", "gptq_v2"):
        problems.append(f"checkpoint_format {fmt!r}")
    if qc.get("is_marlin_format"):
        problems.append("the Marlin layout (is_marlin_format)")
    if qc.get("pack_dtype", "int32") not in ("int32", "torch.int32"):
        problems.append(f"pack_dtype {qc.get('pack_dtype')!r}")
    if qc.get("dynamic"):
        problems.append("per-module 'dynamic' overrides")
    group = qc.get("group_size", 128)
    if isinstance(group, bool) or not isinstance(group, int) or (group <= 0 and group != -1):
        problems.append(f"group_size {group!r}")
    if problems:
        raise UnsupportedFormatError(
            f"{first}: GPTQ with {', '.join(problems)} (config.json quantization_config); pycohere reads "
            f"{SUPPORTED}")
    return group, 2 if fmt == "gptq_v2" else 1


def _awq_group(qc: Mapping, first: str) -> int:
    version = str(qc.get("version", "gemm")).lower()
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size", 128))
    problems = []
    if bits != 4:
        problems.append(f"bits={bits!r}")
    if version != "gemm":
        problems.append(f"version {version!r} (its own packing for {version} kernels)")
    if isinstance(group, bool) or not isinstance(group, int) or (group <= 0 and group != -1):
        problems.append(f"group_size {group!r}")
    if problems:
        raise UnsupportedFormatError(
            f"{first}: AWQ with {', '.join(problems)} (config.json quantization_config); pycohere reads {SUPPORTED}")
    return group


# --- the source ------------------------------------------------------------------------------------
class HFQuantizedSource(SafetensorsSource):
    """The weights of a bitsandbytes / GPTQ / AWQ checkpoint in transformers' names.

    ``shapes`` holds every logical tensor (each quantized weight once, under ``P.weight``, with its
    [out, in] shape; its packed arrays are absorbed), ``problems`` the missing or misshaped packed
    arrays. :meth:`matrix` repacks one quantized weight into a pycohere scheme (bitsandbytes 4/8-bit:
    views of the file; GPTQ/AWQ: a transposed int4-asym copy) and returns its Weight.
    """

    READERS = {"bitsandbytes": "_read_bnb", "gptq": "_read_int4", "awq": "_read_int4"}

    def __init__(self, ckpt: Checkpoint, config, quantization=None):
        self.ckpt = self.container = ckpt
        qc = getattr(config, "quantization_config", None)
        self.method = qc.get("quant_method") if isinstance(qc, Mapping) else None
        if self.method not in self.READERS:
            raise UnsupportedFormatError(
                f"{ckpt.path}: config.json's quantization_config has quant_method {self.method!r}; this source "
                f"reads {', '.join(self.READERS)} ({SUPPORTED}); for other methods load the float checkpoint")
        if quantization is not None:
            raise QuantizationError(
                f"{ckpt.path} is already quantized ({self.method}); load it without quantization_config / "
                f"load_in_8bit / load_in_4bit, or quantize the float checkpoint")
        self.qc = dict(qc)
        self.entries: dict[str, _Entry] = {}
        self.problems: list[str] = []
        self.shapes = {n: tuple(t.shape) for n, t in ckpt.tensors.items()}
        getattr(self, self.READERS[self.method])()
        for e in self.entries.values():
            for ref in e.refs.values():
                self.shapes.pop(ref.name, None)
            self.shapes[e.name] = tuple(e.shape)
            if e.problems:
                self.problems.append(f"{e.name} ({e.storage}): " + "; ".join(e.problems))
        if not self.entries:
            self._no_quantized_arrays()

    # --- detection -------------------------------------------------------------------------------
    def _group(self, prefix: str, suffixes) -> dict[str, TensorRef]:
        return {s: self.ckpt[prefix + s] for s in suffixes if prefix + s in self.ckpt}

    def _orphans(self, suffixes, owners: set[str], need: str) -> set[str]:
        """Companion arrays whose main array is missing: reported (and kept out of the manifest).
        Returns the names they belong to."""
        bases = set()
        for n in sorted(self.ckpt.tensors):
            for s in suffixes:
                if n.endswith(s) and n[:-len(s)] not in owners:
                    self.shapes.pop(n, None)
                    bases.add(n[:-len(s)])
                    self.problems.append(f"{n} has no {n[:-len(s)]}{need} beside it: the checkpoint is incomplete")
        return bases

    def _read_bnb(self) -> None:
        names = self.ckpt.tensors
        four = {}
        for n in names:
            m = re.fullmatch(r"(.+)\.quant_state\.bitsandbytes__(\w+)", n)
            if m:
                four[m[1]] = (m[2], names[n])
        for base, (quant_type, state) in sorted(four.items()):
            refs = self._group(base, ("", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"))
            refs[state.name[len(base):]] = state
            self.entries[base] = _Bnb4(base, refs, quant_type, state)
        eight = sorted(n[:-len(".SCB")] for n in names if n.endswith(".SCB"))
        for p in eight:
            refs = self._group(p, (".weight", ".SCB", ".weight_format"))
            self.entries[p + ".weight"] = _Bnb8(p + ".weight", p, refs)
        reported = self._orphans((".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"), set(four),
                                 ".quant_state.bitsandbytes__nf4 (or __fp4)")
        reported |= {b + ".weight" for b in self._orphans((".weight_format",), set(eight), ".SCB")}
        for n, ref in names.items():  # packed weights whose bitsandbytes arrays are all gone
            if n not in self.entries and n not in reported and ref.dtype in ("U8", "I8") and n.endswith(".weight"):
                self.problems.append(
                    f"{n} is {_describe(ref)} but has neither bitsandbytes 4-bit arrays ({n}.absmax, "
                    f"{n}.quant_state.bitsandbytes__nf4) nor 8-bit ones ({n[:-len('weight')]}SCB)")

    def _read_int4(self) -> None:
        prefixes = sorted(n[:-len(".qweight")] for n in self.ckpt.tensors if n.endswith(".qweight"))
        if prefixes:
            first = prefixes[0] + ".weight"
            if self.method == "gptq":
                group, version = _gptq_settings(self.qc, first)
            else:
                group = _awq_group(self.qc, first)
        for p in prefixes:
            name = p + ".weight"
            if name in self.ckpt:
                self.problems.append(f"{name} is stored both as a float tensor and as {self.method} arrays")
            if self.method == "gptq":
                refs = self._group(p, (".qweight", ".qzeros", ".scales", ".g_idx"))
                self.entries[name] = _GPTQ(name, p, refs, group, version, bool(self.qc.get("desc_act")))
            else:
                refs = self._group(p, (".qweight", ".qzeros", ".scales"))
                self.entries[name] = _AWQ(name, p, refs, group, "awq")
        self._orphans((".qzeros", ".scales", ".g_idx"), set(prefixes), ".qweight")

    def _no_quantized_arrays(self) -> None:
        want = ("*.weight.quant_state.bitsandbytes__nf4/fp4 with *.weight.absmax (4-bit) or *.SCB (8-bit)"
                if self.method == "bitsandbytes" else "*.qweight, *.qzeros and *.scales")
        hint = ""
        if any(n.endswith(".qweight") for n in self.ckpt.tensors) or self.ckpt.metadata.get(METADATA_KEY):
            hint = " (its files look like another quantized format: config.json does not belong to them)"
        raise CorruptCheckpointError(
            f"{self.ckpt.path}: config.json declares {self.method} quantization, but no tensor carries "
            f"{self.method} arrays ({want}){hint}; use the config.json that came with these weights")

    # --- the WeightSource interface (path, files, nbytes, vector: SafetensorsSource) ----------------
    def weight(self, name: str, dtype, materialize: bool = False) -> Weight:
        """The Weight of the [out, in] matrix ``name`` (repacked now when it is quantized)."""
        entry = self.entries.get(name)
        if entry is not None:
            return entry.build(dtype)
        return self.dense(name, dtype, materialize)

    def float_rows(self, name: str):
        return None if name in self.entries else super().float_rows(name)

    def tensor_table(self) -> list[TensorInfo]:
        """Every logical tensor as stored: quantized ones with their real on-disk format, bits per
        weight counting every companion array (scales, zeros, g_idx, quant_state), bytes on disk."""
        rows = []
        for name in sorted(self.shapes):
            if name in self.entries:
                rows.append(self.entries[name].info())
            elif name in self.ckpt:
                rows.append(self.float_info(name))
        return rows

    def describe(self) -> str:
        kinds = sorted({e.storage for e in self.entries.values()})
        return f"{self.method}: {', '.join(kinds)}, {len(self.entries)} tensors"

    def check_quantization_plan(self) -> None:
        """Nothing to plan: a quantize-on-load request was refused in the constructor."""
