"""Quantization schemes: small registered classes, the NumPy spec of every packed format.

Modelled on llama.cpp's ``gguf-py/gguf/quants.py``: one class per scheme, registered by name,
with class attributes describing the block and two class methods working on *rows of blocks*:

* ``quantize_blocks(blocks)``: float32 ``[n_blocks, group]`` -> ``{array name: [n_blocks, width]}``
* ``dequantize_blocks(packed)``: that dict -> float32 ``[n_blocks, group]``

Unlike gguf-py, a block quantizes to a *dict* of plain arrays rather than one byte string: the
storage contract is a few named arrays (``qweight``, ``scales``, ``mins``) that go into
safetensors as they are and that kernels can stream without parsing interleaved records.
A whole ``[out, in]`` tensor stores every array as ``[out, (in // group) * width]``, so the
data of row ``r`` is row ``r`` of each array (an embedding lookup is a plain row gather).
The llama.cpp-compatible schemes (``q8_0``, ``q4_0``, ...) keep ggml's interleaved block bytes
in a single uint8 ``qweight`` so they can be copied into a GGUF file unchanged.

Design decisions of pycohere's own schemes (``int8``, ``int4``, ``int4-asym``, ``nf4``):

* **Rounding** is ``np.rint``: round half to *even* (the same as ``torch.round``), deterministic
  on every platform. llama.cpp's Q8_0 uses C ``roundf`` (half away from zero) instead; the two
  differ only on exact ties, and the q8_0 scheme below follows llama.cpp.
* **Scales** are float32 arrays whose values are rounded to bfloat16 precision (8 significant
  bits, round to nearest even). Then ``code * scale`` is exact in float32 (8 + 8 bits < 24), so
  (a) dequantization has a single, platform-independent answer that a Numba kernel reproduces
  bit for bit, (b) re-quantizing a dequantized tensor gives back the identical bytes (a plain
  float32 scale breaks that: ``(127 * s) / 127 != s`` for ~1% of float32 values), and (c) the
  scales could later be stored as 2-byte bf16 without changing a single value. The rounding
  changes a scale by at most 2**-8 relative, which never pushes the largest element past the
  last code: ``absmax / scale <= 127 / (1 - 2**-8) < 127.5``. Every round-to-nearest scheme
  therefore satisfies ``|w - dequantize(w)| <= scale / 2`` (plus float32 rounding noise).
* A group whose scale would be subnormal (absmax below ~1.5e-36) is stored as zeros, so the
  relative-precision argument above always holds.
* **Nibble order** of ``int4`` / ``int4-asym``: element ``2j`` in the low nibble of byte ``j``,
  element ``2j+1`` in the high nibble (the little-endian order of GPTQ's int32 words, so a
  transposed GPTQ ``qweight`` viewed as bytes has this layout). ``nf4`` uses bitsandbytes'
  order instead (element ``2j`` in the *high* nibble) so its arrays are byte-identical to a
  bitsandbytes checkpoint's ``weight`` / ``weight.absmax``. GGUF schemes use ggml's order
  (element ``j`` low, ``j + 16`` high, per 32-element block).

Sources: ``ggml-common.h`` / ``ggml-quants.c`` (block layouts), gguf-py ``quants.py`` (NumPy
reference of the GGUF schemes), bitsandbytes ``backends/default/ops.py`` (NF4 quantization on
CPU), ``/work/shared/reference/quantized-formats.md``.
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import numpy as np

from ..errors import QuantizationError
from ..constants import ROW_CHUNK_VALUES
from ..io.dtypes import bf16_bits

F32 = np.dtype("<f4")
U8 = np.dtype("u1")
I8 = np.dtype("i1")

#: scheme name -> scheme class, filled by ``QuantScheme.__init_subclass__``.
SCHEMES: dict[str, type[QuantScheme]] = {}

#: The bitsandbytes NF4 code book (``bitsandbytes.functional.get_4bit_type("nf4")``), float32.
NF4_TABLE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)

# bitsandbytes quantizes NF4 with torch.bucketize over the float32 midpoints of adjacent codes
# (backends/default/ops.py, _get_4bit_quantize_bounds): a value equal to a midpoint goes to the
# *lower* code. np.searchsorted(side="left") has exactly bucketize(right=False)'s semantics.
NF4_MIDPOINTS = (NF4_TABLE[:-1] + NF4_TABLE[1:]) / np.float32(2)

# Smallest normal float32: scales below it are flushed to zero (see the module docstring).
_TINY = np.float32(np.finfo(np.float32).tiny)


def get_scheme(name: str) -> type[QuantScheme]:
    """The scheme class registered under ``name``; QuantizationError listing the known ones."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise QuantizationError(
            f"unknown quantization scheme {name!r}; choose one of {', '.join(sorted(SCHEMES))}"
        ) from None


class QuantScheme:
    """Base class of a scheme. Subclasses register themselves: ``class X(QuantScheme, name="x")``
    (a subclass without ``name`` is an abstract helper and is not registered).

    Class attributes:
      name             registry key, also the ``storage`` name of a QuantizedWeight
      bits             bits per stored code
      block_size       default values per block (None: one block per row, i.e. per channel)
      group_sizes      explicit block sizes the scheme accepts
      bytes_per_block  fixed bytes per block (GGUF types), None when it depends on the group size
      can_quantize     False for dequantize-only formats (llama.cpp k-quants)
    """

    name: ClassVar[str]
    bits: ClassVar[int]
    block_size: ClassVar[int | None]
    group_sizes: ClassVar[tuple[int, ...]]
    bytes_per_block: ClassVar[int | None] = None
    can_quantize: ClassVar[bool] = True

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is None:  # an abstract helper class: not registered
            return
        if name in SCHEMES:
            raise RuntimeError(f"quantization scheme {name!r} registered twice")
        cls.name = name
        SCHEMES[name] = cls

    def __init__(self):  # the classes are namespaces, as in gguf-py
        raise TypeError(f"{type(self).__name__} is used through class methods, not instances")

    # --- layout ---------------------------------------------------------------------------
    @classmethod
    def block_layout(cls, group_size: int) -> dict[str, tuple[int, np.dtype]]:
        """{array name: (width per block, dtype)} of one quantized block of ``group_size``."""
        raise NotImplementedError

    @classmethod
    def block_nbytes(cls, group_size: int) -> int:
        return sum(width * dtype.itemsize for width, dtype in cls.block_layout(group_size).values())

    @classmethod
    def bits_per_weight(cls, group_size: int) -> float:
        return 8 * cls.block_nbytes(group_size) / group_size

    @classmethod
    def resolve_group_size(cls, group_size: int | None, row_length: int) -> int:
        """Validate ``group_size`` against this scheme and a row of ``row_length`` values."""
        if group_size is None:
            group_size = row_length if cls.block_size is None else cls.block_size
        per_row = cls.block_size is None and group_size == row_length
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
                or (group_size not in cls.group_sizes and not per_row):
            allowed = ", ".join(map(str, cls.group_sizes))
            extra = " or the row length (one scale per output channel)" if cls.block_size is None else ""
            raise QuantizationError(
                f"{cls.name} does not support group_size={group_size!r}; use one of {allowed}{extra}")
        group_size = int(group_size)
        if row_length % group_size:
            raise QuantizationError(
                f"{cls.name} group_size={group_size} does not divide the row length {row_length}; "
                f"pick a group size from ({', '.join(map(str, cls.group_sizes))}) that divides it, "
                f"or keep this tensor unquantized")
        return group_size

    # --- the spec -------------------------------------------------------------------------
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def dequantize_blocks(cls, packed: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # --- whole [out, in] tensors (rows split into blocks) ----------------------------------
    @classmethod
    def quantize(cls, w, group_size: int | None = None) -> QuantizedTensor:
        return quantize(w, cls.name, group_size)

    @classmethod
    def dequantize(cls, q: QuantizedTensor, dtype=np.float32) -> np.ndarray:
        if q.scheme != cls.name:
            raise QuantizationError(f"{cls.name}.dequantize was given a {q.scheme} tensor")
        return q.dequantize(dtype)


# --- shared helpers ---------------------------------------------------------------------------
def _as_blocks(blocks: np.ndarray, even: bool = False) -> np.ndarray:
    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or (even and blocks.shape[1] % 2):
        need = "an even number of" if even else "[n_blocks, group]"
        raise QuantizationError(f"quantize_blocks expects {need} values per block, got shape {blocks.shape}")
    return blocks.astype(np.float32, copy=False)


def round_scale(scale: np.ndarray) -> np.ndarray:
    """Scales -> float32, then the nearest bfloat16-representable value (ties to even) as
    float32; results below the smallest normal float32 become 0 (the group is stored as zeros)."""
    scale = np.asarray(scale, dtype=np.float32)
    rounded = (bf16_bits(scale).astype(np.uint32) << 16).view(np.float32)
    return np.where(rounded >= _TINY, rounded, np.float32(0))


def _divide_codes(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """values / scale, with scale-0 groups (all values tiny) giving 0 instead of NaN."""
    safe = np.where(scale > 0, scale, np.float32(1))
    return np.where(scale > 0, values / safe, np.float32(0))


def pack_nibbles(codes: np.ndarray, high_first: bool = False) -> np.ndarray:
    """uint8 codes 0..15 [n, 2k] -> bytes [n, k] holding consecutive pairs.

    ``high_first=False``: element 2j low nibble, 2j+1 high (int4). True: bitsandbytes' order."""
    first, second = codes[:, 0::2], codes[:, 1::2]
    if high_first:
        first, second = second, first
    return (first | (second << np.uint8(4))).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, high_first: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: bytes [n, k] -> codes [n, 2k]."""
    low, high = packed & np.uint8(0x0F), packed >> np.uint8(4)
    pair = (high, low) if high_first else (low, high)
    return np.stack(pair, axis=-1).reshape(packed.shape[0], -1)


def _pack_split_halves(codes: np.ndarray) -> np.ndarray:
    """ggml's 4-bit order: per 32-block, byte j = element j (low) | element j + 16 (high)."""
    half = codes.shape[1] // 2
    return (codes[:, :half] | (codes[:, half:] << np.uint8(4))).astype(np.uint8)


def _unpack_split_halves(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _f16_scale(values: np.ndarray, scheme: str) -> np.ndarray:
    """float32 -> float16 bytes [n, 2]; QuantizationError instead of ggml's silent inf."""
    with np.errstate(over="ignore"):  # overflow is reported below, with what to do
        half = values.astype(np.float16)
    if not np.isfinite(half).all():
        raise QuantizationError(
            f"{scheme}: a block scale exceeds float16's range (65504): weights of magnitude "
            f"{float(np.abs(values).max()):.4g} cannot be stored in this format; use int8/int4")
    return half.reshape(-1, 1).view(np.uint8)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C ``roundf``: round to nearest, ties away from zero (x - trunc(x) is exact)."""
    t = np.trunc(x)
    return t + np.where(np.abs(x - t) >= 0.5, np.sign(x), np.float32(0))


# --- pycohere's own schemes -------------------------------------------------------------------
class Int8(QuantScheme, name="int8"):
    """Symmetric int8: ``w = q * scale``, ``q`` in [-127, 127], ``scale = bf16(absmax / 127)``.

    Per output channel by default (one block per row, like LLM.int8's ``SCB``), or per group of
    32/64/128 input values. Arrays: ``qweight`` int8 [out, in], ``scales`` f32 [out, in/group].
    """

    bits = 8
    block_size = None
    group_sizes = (32, 64, 128)
    qmax = 127

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (group_size, I8), "scales": (1, F32)}

    @classmethod
    def quantize_blocks(cls, blocks):
        blocks = _as_blocks(blocks)
        scale = round_scale(np.abs(blocks).max(axis=1, keepdims=True) / np.float32(cls.qmax))
        q = np.clip(np.rint(_divide_codes(blocks, scale)), -cls.qmax, cls.qmax)
        return {"qweight": q.astype(np.int8), "scales": scale}

    @classmethod
    def dequantize_blocks(cls, packed):
        return packed["qweight"].astype(np.float32) * packed["scales"].astype(np.float32)


class Int4(QuantScheme, name="int4"):
    """Symmetric 4-bit per group: ``w = (n - 8) * scale``, ``scale = bf16(absmax / 7)``.

    Quantization uses codes 1..15 (q in [-7, 7]) so that +absmax and -absmax are both exact;
    code 0 (-8) is never produced but dequantizes fine (e.g. repacked GPTQ weights).
    Arrays: ``qweight`` u8 [out, in/2] (low nibble first), ``scales`` f32 [out, in/group].
    """

    bits = 4
    block_size = 64
    group_sizes = (32, 64, 128)
    qmax = 7

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (group_size // 2, U8), "scales": (1, F32)}

    @classmethod
    def quantize_blocks(cls, blocks):
        blocks = _as_blocks(blocks, even=True)
        scale = round_scale(np.abs(blocks).max(axis=1, keepdims=True) / np.float32(cls.qmax))
        q = np.clip(np.rint(_divide_codes(blocks, scale)), -cls.qmax, cls.qmax)
        return {"qweight": pack_nibbles((q + 8).astype(np.uint8)), "scales": scale}

    @classmethod
    def dequantize_blocks(cls, packed):
        n = unpack_nibbles(packed["qweight"]).astype(np.float32)
        return (n - np.float32(8)) * packed["scales"].astype(np.float32)


class Int4Asym(QuantScheme, name="int4-asym"):
    """Asymmetric 4-bit per group: ``w = n * scale + min``, codes n in 0..15.

    ``min = min(w_min, 0)`` and ``max = max(w_max, 0)`` (the range always contains 0, as GPTQ
    does, so all-zero rows stay exact); ``scale = bf16((max - min) / 15)``; ``min`` is stored
    exactly as float32. The zero point is kept as this float offset (llama.cpp Q4_1's ``m``)
    rather than GPTQ/AWQ's integer code: with an integer zero point the largest element can
    round one code short of 15 whenever the rounded scale is not exactly range/15, which breaks
    byte-identical re-quantization. Codes are ``clip(rint((w - min) / scale), 0, 15)`` computed
    in float64; ``|w - dequantize| <= scale / 2``.
    Arrays: ``qweight`` u8 [out, in/2] (low nibble first), ``scales`` f32, ``mins`` f32 [out, in/group].
    """

    bits = 4
    block_size = 64
    group_sizes = (32, 64, 128)

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (group_size // 2, U8), "scales": (1, F32), "mins": (1, F32)}

    @classmethod
    def quantize_blocks(cls, blocks):
        blocks = _as_blocks(blocks, even=True)
        lo = np.minimum(blocks.min(axis=1, keepdims=True), np.float32(0))
        hi = np.maximum(blocks.max(axis=1, keepdims=True), np.float32(0))
        # float64 for the range: hi - lo can overflow float32 for absurdly large weights.
        scale = round_scale((hi.astype(np.float64) - lo) / 15)
        offset = blocks.astype(np.float64) - lo
        q = np.clip(np.rint(_divide_codes(offset, scale.astype(np.float64))), 0, 15).astype(np.uint8)
        mins = np.where(scale > 0, lo, np.float32(0)).astype(np.float32)
        return {"qweight": pack_nibbles(q), "scales": scale, "mins": mins}

    @classmethod
    def dequantize_blocks(cls, packed):
        n = unpack_nibbles(packed["qweight"]).astype(np.float32)
        return n * packed["scales"].astype(np.float32) + packed["mins"].astype(np.float32)


class NF4(QuantScheme, name="nf4"):
    """bitsandbytes NF4: ``w = NF4_TABLE[n] * absmax`` per block of 64 (32/128 also accepted).

    Quantization follows bitsandbytes' CPU path bit for bit (``backends/default/ops.py``):
    ``scaled = clip(w * (1 / max(absmax, 1e-38)), -1, 1)`` in float32, then the code whose
    midpoint interval holds ``scaled``, a value exactly on a midpoint taking the lower code.
    ``absmax`` is stored unrounded (f32) in ``scales``; nibbles are high-first as in bitsandbytes.
    Arrays: ``qweight`` u8 [out, in/2], ``scales`` f32 [out, in/group].
    """

    bits = 4
    block_size = 64
    group_sizes = (32, 64, 128)

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (group_size // 2, U8), "scales": (1, F32)}

    @classmethod
    def quantize_blocks(cls, blocks):
        blocks = _as_blocks(blocks, even=True)
        absmax = np.abs(blocks).max(axis=1, keepdims=True)
        inverse = np.float32(1) / np.maximum(absmax, np.float32(1e-38))
        scaled = np.clip(blocks * inverse, np.float32(-1), np.float32(1))
        codes = np.searchsorted(NF4_MIDPOINTS, scaled, side="left").astype(np.uint8)
        return {"qweight": pack_nibbles(codes, high_first=True), "scales": absmax}

    @classmethod
    def dequantize_blocks(cls, packed):
        codes = unpack_nibbles(packed["qweight"], high_first=True)
        return NF4_TABLE[codes] * packed["scales"].astype(np.float32)


# --- llama.cpp (GGUF) blocks: byte-for-byte ggml layouts ----------------------------------------
class _GGMLScheme(QuantScheme):
    """A ggml block type: one uint8 ``qweight`` [out, (in / block_size) * bytes_per_block]."""

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (cls.bytes_per_block, U8)}

    @classmethod
    def _bytes(cls, packed) -> np.ndarray:
        qweight = np.asarray(packed["qweight"])
        if qweight.ndim != 2 or qweight.shape[1] != cls.bytes_per_block:
            raise QuantizationError(
                f"{cls.name} blocks must be uint8 [n_blocks, {cls.bytes_per_block}], got {qweight.shape}")
        return qweight.view(np.uint8)

    @classmethod
    def _check_width(cls, blocks):
        if blocks.shape[1] != cls.block_size:
            raise QuantizationError(f"{cls.name} blocks hold {cls.block_size} values, got {blocks.shape[1]}")
        return blocks


def _signed_max_codes(blocks: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's Q4_0 / Q5_0 rule: ``d = max / -half`` (``max``: the signed element of largest magnitude,
    first on ties), codes ``min(2 half - 1, trunc(w * id + half + 0.5))``, float32 (two roundings)."""
    imax = np.abs(blocks).argmax(axis=1)[:, None]
    d = np.take_along_axis(blocks, imax, axis=1) / np.float32(-half)
    inverse = np.where(d == 0, np.float32(0), np.float32(1) / np.where(d == 0, np.float32(1), d))
    codes = np.clip(np.trunc(blocks * inverse + np.float32(half + 0.5)), 0, 2 * half - 1).astype(np.uint8)
    return d, codes


def _min_max_codes(blocks: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's Q4_1 / Q5_1 rule: ``d = (max - min) / top``, codes ``min(top, trunc((w - min) * id + 0.5))``
    in float32; returns (d, min, codes)."""
    hi = blocks.max(axis=1, keepdims=True)
    lo = blocks.min(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(top)
    inverse = np.where(d == 0, np.float32(0), np.float32(1) / np.where(d == 0, np.float32(1), d))
    codes = np.clip(np.trunc((blocks - lo) * inverse + np.float32(0.5)), 0, top).astype(np.uint8)
    return d, lo, codes


class Q8_0(_GGMLScheme, name="q8_0"):
    """ggml Q8_0: 34 bytes = f16 d, i8 q[32]; ``w = d * q``.

    Quantization as ggml-quants.c ``quantize_row_q8_0_ref`` / gguf-py ``Q8_0``:
    ``d = absmax / 127`` (float32), ``q = roundf(w * (1 / d))`` (ties away from zero).
    """

    bits = 8
    block_size = 32
    group_sizes = (32,)
    bytes_per_block = 34

    @classmethod
    def quantize_blocks(cls, blocks):
        blocks = cls._check_width(_as_blocks(blocks))
        d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
        inverse = np.float32(1) / np.where(d == 0, np.float32(1), d)
        q = _round_half_away(blocks * np.where(d == 0, np.float32(0), inverse))
        qs = q.astype(np.int8).view(np.uint8)
        return {"qweight": np.concatenate([_f16_scale(d, cls.name), qs], axis=1)}

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        d = np.ascontiguousarray(raw[:, :2]).view(np.float16).astype(np.float32)
        return np.ascontiguousarray(raw[:, 2:]).view(np.int8).astype(np.float32) * d


class Q4_0(_GGMLScheme, name="q4_0"):
    """ggml Q4_0: 18 bytes = f16 d, u8 qs[16] (split-half nibbles); ``w = d * (n - 8)``.

    ``d = max / -8`` where ``max`` is the element of largest magnitude *with its sign* (first
    one on ties), so that element maps exactly to code 0. Codes ``min(15, trunc(w * id + 8.5))``
    with the product and the sum each rounded to float32, as ggml's ``quantize_row_q4_0_ref``
    (``x0 = x*id; (int8_t)(x0 + 8.5f)``) and gguf 0.19.0 compute it. Measured against llama.cpp's
    own quantizer (llama-cpp-python 0.3.36 built here, ``llama_model_quantize`` to pure Q4_0): its
    bytes equal this on every tensor of bf16-valued models, where ties are common; a single
    (fused) rounding, which gguf-py on llama.cpp master emulates in float64, did not match.
    """

    bits = 4
    block_size = 32
    group_sizes = (32,)
    bytes_per_block = 18

    @classmethod
    def quantize_blocks(cls, blocks):
        d, codes = _signed_max_codes(cls._check_width(_as_blocks(blocks)), 8)
        return {"qweight": np.concatenate([_f16_scale(d, cls.name), _pack_split_halves(codes)], axis=1)}

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        d = np.ascontiguousarray(raw[:, :2]).view(np.float16).astype(np.float32)
        n = _unpack_split_halves(raw[:, 2:]).astype(np.float32)
        return (n - np.float32(8)) * d


class Q4_1(_GGMLScheme, name="q4_1"):
    """ggml Q4_1: 20 bytes = f16 d, f16 m, u8 qs[16] (split halves); ``w = d * n + m``.

    As gguf-py ``Q4_1``: ``d = (max - min) / 15``, codes ``min(15, trunc((w - min) * id + 0.5))``
    in float32 (no FMA emulation here, matching gguf-py).
    """

    bits = 4
    block_size = 32
    group_sizes = (32,)
    bytes_per_block = 20

    @classmethod
    def quantize_blocks(cls, blocks):
        d, lo, codes = _min_max_codes(cls._check_width(_as_blocks(blocks)), 15)
        head = np.concatenate([_f16_scale(d, cls.name), _f16_scale(lo, cls.name)], axis=1)
        return {"qweight": np.concatenate([head, _pack_split_halves(codes)], axis=1)}

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)
        m = np.ascontiguousarray(raw[:, 2:4]).view(np.float16).astype(np.float32)
        return _unpack_split_halves(raw[:, 4:]).astype(np.float32) * d + m


def _pack_fifth_bits(codes: np.ndarray) -> np.ndarray:
    """Bit 4 of 32 five-bit codes -> ggml's ``qh``: a little-endian uint32 whose bit j is element j's."""
    return np.packbits(codes >> np.uint8(4), axis=1, bitorder="little")


def _unpack_five_bits(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """qh u8 [n, 4] + qs u8 [n, 16] -> codes 0..31 [n, 32] (ggml-quants.c dequantize_row_q5_0:
    ``xh_0 = ((qh >> j) << 4) & 0x10`` for element j, ``(qh >> (j + 12)) & 0x10`` for j + 16)."""
    high = np.unpackbits(qh, axis=1, bitorder="little")  # bit j of the uint32 = element j
    return _unpack_split_halves(qs) | (high << np.uint8(4))


class Q5_0(_GGMLScheme, name="q5_0"):
    """ggml Q5_0: 22 bytes = f16 d, u8 qh[4], u8 qs[16]; ``w = d * (n - 16)``, n in 0..31.

    The low four bits of the codes are in ``qs`` as Q4_0's nibbles (element j low, j + 16 high),
    bit 4 of element j is bit j of ``qh`` read as a little-endian uint32. Quantization as gguf-py
    ``Q5_0`` (= ggml ``quantize_row_q5_0_ref``): ``d = max / -16`` with ``max`` the signed element
    of largest magnitude, codes ``min(31, trunc(w * id + 16.5))``, float32 with two roundings as
    Q4_0 (same measured agreement argument).
    """

    bits = 5
    block_size = 32
    group_sizes = (32,)
    bytes_per_block = 22

    @classmethod
    def quantize_blocks(cls, blocks):
        d, codes = _signed_max_codes(cls._check_width(_as_blocks(blocks)), 16)
        parts = [_f16_scale(d, cls.name), _pack_fifth_bits(codes), _pack_split_halves(codes & np.uint8(15))]
        return {"qweight": np.concatenate(parts, axis=1)}

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)
        n = _unpack_five_bits(raw[:, 2:6], raw[:, 6:22]).astype(np.float32)
        return (n - np.float32(16)) * d  # exact: an 11-bit d times a 5-bit code


class Q5_1(_GGMLScheme, name="q5_1"):
    """ggml Q5_1: 24 bytes = f16 d, f16 m, u8 qh[4], u8 qs[16] (bits as Q5_0); ``w = d * n + m``.

    Quantization as gguf-py ``Q5_1``: ``d = (max - min) / 31``, codes
    ``min(31, trunc((w - min) * id + 0.5))`` in float32, ``m = min``.
    """

    bits = 5
    block_size = 32
    group_sizes = (32,)
    bytes_per_block = 24

    @classmethod
    def quantize_blocks(cls, blocks):
        d, lo, codes = _min_max_codes(cls._check_width(_as_blocks(blocks)), 31)
        parts = [_f16_scale(d, cls.name), _f16_scale(lo, cls.name), _pack_fifth_bits(codes),
                 _pack_split_halves(codes & np.uint8(15))]
        return {"qweight": np.concatenate(parts, axis=1)}

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)
        m = np.ascontiguousarray(raw[:, 2:4]).view(np.float16).astype(np.float32)
        return _unpack_five_bits(raw[:, 4:8], raw[:, 8:24]).astype(np.float32) * d + m


def _dequantize_only(name: str) -> str:
    return (f"{name} is dequantize-only in pycohere (llama.cpp's scale search for this type is not "
            f"implemented); produce it with llama-quantize, or quantize to q4_0/q5_0/q8_0/int4/int8")


class _KQuant(_GGMLScheme):
    """k-quants are read (dequantized) only: llama.cpp chooses their scales with an iterative
    search (``make_qkx2_quants``) that pycohere does not reimplement."""

    can_quantize = False

    @classmethod
    def quantize_blocks(cls, blocks):
        raise QuantizationError(_dequantize_only(cls.name))



class Q4_K(_KQuant, name="q4_k"):
    """ggml Q4_K: 144 bytes per 256 = f16 d, f16 dmin, u8 scales[12], u8 qs[128].

    Eight sub-blocks of 32 with 6-bit scale ``sc_j`` and min ``m_j`` packed in ``scales``:
    j < 4: ``sc = s[j] & 63, m = s[j+4] & 63``; else ``sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4``,
    ``m = (s[j+4] >> 4) | (s[j] >> 6) << 4``. ``qs[32i + l]``: low nibble = element 64i + l,
    high = 64i + 32 + l. ``w = (d * sc_j) * n - (dmin * m_j)`` (ggml-quants.c dequantize_row_q4_K).
    """

    bits = 4
    block_size = 256
    group_sizes = (256,)
    bytes_per_block = 144

    @staticmethod
    def scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 6-bit (sc, m) pairs of the 8 sub-blocks: [n, 12] bytes -> two [n, 8] arrays."""
        low4, high4, mixed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
        sc = np.concatenate([low4 & 63, (mixed & 0x0F) | ((low4 >> 6) << 4)], axis=1)
        m = np.concatenate([high4 & 63, (mixed >> 4) | ((high4 >> 6) << 4)], axis=1)
        return sc, m

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        n_blocks = raw.shape[0]
        scale, offset = cls.sub_block_scales(raw)
        qs = raw[:, 16:].reshape(n_blocks, 4, 1, 32)
        n = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n_blocks, 8, 32).astype(np.float32)
        return (scale * n - offset).reshape(n_blocks, 256)

    @classmethod
    def sub_block_scales(cls, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``d * sc_j`` and ``dmin * m_j`` [n, 8, 1] from the 16-byte head (f16 d, f16 dmin, 12 bytes of
        6-bit pairs) that Q4_K and Q5_K share."""
        d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)
        dmin = np.ascontiguousarray(raw[:, 2:4]).view(np.float16).astype(np.float32)
        sc, m = cls.scale_min(raw[:, 4:16])
        return (d * sc.astype(np.float32))[:, :, None], (dmin * m.astype(np.float32))[:, :, None]


class Q6_K(_KQuant, name="q6_k"):
    """ggml Q6_K: 210 bytes per 256 = u8 ql[128], u8 qh[64], i8 sc[16], f16 d (last).

    Two halves of 128 (ql + 64h, qh + 32h): for l < 32 the four elements l, l+32, l+64, l+96
    take the low nibble of ql[l], ql[l+32], then the high nibbles, with 2-bit pieces 0, 2, 4, 6
    of qh[l] on top; ``w = (d * sc[k // 16]) * (q - 32)`` (ggml-quants.c dequantize_row_q6_K).
    """

    bits = 6
    block_size = 256
    group_sizes = (256,)
    bytes_per_block = 210

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        n_blocks = raw.shape[0]
        ql = raw[:, 0:128].reshape(n_blocks, 2, 1, 64)
        qh = raw[:, 128:192].reshape(n_blocks, 2, 1, 32)
        sc = np.ascontiguousarray(raw[:, 192:208]).view(np.int8).astype(np.float32)
        d = np.ascontiguousarray(raw[:, 208:210]).view(np.float16).astype(np.float32)
        low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(n_blocks, 2, 4, 32)
        high = qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1) & np.uint8(3)
        q = (low | (high << 4)).astype(np.float32) - np.float32(32)
        return ((d * sc)[:, :, None] * q.reshape(n_blocks, 16, 16)).reshape(n_blocks, 256)


class Q5_K(_KQuant, name="q5_k"):
    """ggml Q5_K: 176 bytes per 256 = f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128].

    Q4_K plus a fifth bit: eight sub-blocks of 32 with Q4_K's 6-bit (sc, m) pairs; ``qs`` as Q4_K
    (byte ``32i + l``: element 64i + l low, 64i + 32 + l high nibble); bit j of ``qh[l]`` is bit 4
    of element 32j + l. ``w = (d * sc_j) * n - (dmin * m_j)`` (ggml-quants.c dequantize_row_q5_K).
    """

    bits = 5
    block_size = 256
    group_sizes = (256,)
    bytes_per_block = 176

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        n_blocks = raw.shape[0]
        scale, offset = Q4_K.sub_block_scales(raw)
        qh = raw[:, 16:48].reshape(n_blocks, 1, 32)
        qs = raw[:, 48:176].reshape(n_blocks, 4, 1, 32)
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n_blocks, 8, 32)
        high = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & np.uint8(1)  # [n, 8 sub-blocks, 32]
        n = (low | (high << np.uint8(4))).astype(np.float32)
        return (scale * n - offset).reshape(n_blocks, 256)


class Q3_K(_KQuant, name="q3_k"):
    """ggml Q3_K: 110 bytes per 256 = u8 hmask[32], u8 qs[64], u8 scales[12], f16 d (last).

    Sixteen sub-blocks of 16 with signed 6-bit scales ``sc_j - 32``: the low four bits are the
    low nibble of ``scales[j]`` (j < 8) or the high nibble of ``scales[j - 8]``, the top two bits
    bits ``2 (j // 4)`` of ``scales[8 + j % 4]``. Two halves of 128 values (qs + 32h): for shift
    s in 0..3, elements 128h + 32s + l take bits 2s..2s+1 of ``qs[32h + l]``, minus 4 when bit
    4h + s of ``hmask[l]`` is *clear*. ``w = (d * (sc_j - 32)) * q`` (dequantize_row_q3_K).
    """

    bits = 3
    block_size = 256
    group_sizes = (256,)
    bytes_per_block = 110

    @staticmethod
    def scales(s: np.ndarray) -> np.ndarray:
        """The sixteen signed 6-bit scales: [n, 12] bytes -> int [n, 16] in -32..31."""
        low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
        high = (s[:, None, 8:12] >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)) & np.uint8(3)
        return (low | (high.reshape(-1, 16) << np.uint8(4))).astype(np.int16) - 32

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        n_blocks = raw.shape[0]
        hmask = raw[:, 0:32].reshape(n_blocks, 1, 32)
        qs = raw[:, 32:96].reshape(n_blocks, 2, 1, 32)
        d = np.ascontiguousarray(raw[:, 108:110]).view(np.float16).astype(np.float32)
        low = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
        high = (hmask >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & np.uint8(1)  # [n, 8, 32]
        q = low.reshape(n_blocks, 8, 32).astype(np.float32) - np.float32(4) * (np.uint8(1) - high)
        dl = (d * cls.scales(raw[:, 96:108]).astype(np.float32))[:, :, None]
        return (dl * q.reshape(n_blocks, 16, 16)).reshape(n_blocks, 256)


class Q2_K(_KQuant, name="q2_k"):
    """ggml Q2_K: 84 bytes per 256 = u8 scales[16], u8 qs[64], f16 d, f16 dmin.

    Sixteen sub-blocks of 16: ``scales[j]`` holds the 4-bit scale (low nibble) and min (high).
    Two halves of 128 values (qs + 32h): for shift s in 0..3, elements 128h + 32s + l are bits
    2s..2s+1 of ``qs[32h + l]``. ``w = (d * sc_j) * q - (dmin * m_j)`` (dequantize_row_q2_K).
    """

    bits = 2
    block_size = 256
    group_sizes = (256,)
    bytes_per_block = 84

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        n_blocks = raw.shape[0]
        s = raw[:, 0:16]
        qs = raw[:, 16:80].reshape(n_blocks, 2, 1, 32)
        d = np.ascontiguousarray(raw[:, 80:82]).view(np.float16).astype(np.float32)
        dmin = np.ascontiguousarray(raw[:, 82:84]).view(np.float16).astype(np.float32)
        q = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
        scale = (d * (s & 0x0F).astype(np.float32))[:, :, None]
        offset = (dmin * (s >> 4).astype(np.float32))[:, :, None]
        return (scale * q.reshape(n_blocks, 16, 16).astype(np.float32) - offset).reshape(n_blocks, 256)


# --- llama.cpp's non-linear 4-bit types (dequantize only) ---------------------------------------
# Sources (the llama.cpp tree bundled with llama-cpp-python 0.3.36): ggml/src/ggml-common.h lines 447-460
# (block_iq4_nl, block_iq4_xs) and 1120-1122 (kvalues_iq4nl); ggml/src/ggml-quants.c lines 2725-2760
# (dequantize_row_iq4_nl, dequantize_row_iq4_xs) and 4937-5108 (quantize_row_iq4_nl_impl, the quantizer
# not reimplemented); gguf-py 0.19.0 gguf/quants.py classes IQ4_NL / IQ4_XS (the NumPy oracle).
#: ggml-common.h ``kvalues_iq4nl``: the 16 int8 values a 4-bit IQ4_NL / IQ4_XS code indexes (a non-uniform
#: grid, denser near zero, chosen in llama.cpp PR #5590 to fit the weight distribution of LLMs).
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


def _iq4_codes(qs: np.ndarray) -> np.ndarray:
    """u8 qs [n, 16 k] (k blocks of 32: byte j = code of element j low, j + 16 high) -> the int8 values
    ``kvalues_iq4nl[code]`` as float32 [n, 32 k], in element order (dequantize_row_iq4_nl's loop)."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, 16)                                              # [n, blocks, 1, 16]
    codes = np.concatenate([q & np.uint8(0x0F), q >> np.uint8(4)], axis=2)   # [n, blocks, 2, 16]
    return KVALUES_IQ4NL[codes].astype(np.float32).reshape(n, -1)


class IQ4_NL(_KQuant, name="iq4_nl"):
    """ggml IQ4_NL: 18 bytes per 32 = f16 d, u8 qs[16]; ``w = d * kvalues_iq4nl[n]``.

    ggml-common.h ``block_iq4_nl`` (``ggml_half d; uint8_t qs[QK4_NL/2]``, QK4_NL = 32): Q4_0's nibble
    order (byte j holds element j in the low nibble, element j + 16 in the high one), but the code
    indexes the non-linear int8 grid :data:`KVALUES_IQ4NL` instead of ``n - 8`` (ggml-quants.c
    ``dequantize_row_iq4_nl``: ``y[j] = d * kvalues_iq4nl[qs[j] & 0xf]``, ``y[j + 16] = d *
    kvalues_iq4nl[qs[j] >> 4]``). The product of an 11-bit f16 significand and a 7-bit value is exact in
    float32. Dequantize-only: llama.cpp picks ``d`` with a weighted least-squares search over 15 trial
    scales (``quantize_row_iq4_nl_impl`` with ntry = 7), which pycohere does not reimplement.
    """

    bits = 4
    block_size = 32
    group_sizes = (32,)
    bytes_per_block = 18

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)
        return d * _iq4_codes(raw[:, 2:18])


class IQ4_XS(_KQuant, name="iq4_xs"):
    """ggml IQ4_XS: 136 bytes per 256 = f16 d, u16 scales_h, u8 scales_l[4], u8 qs[128].

    ggml-common.h ``block_iq4_xs``: eight sub-blocks of 32 with a 6-bit scale ``ls_ib`` each, its low four
    bits in nibble ``ib % 2`` of ``scales_l[ib / 2]`` and its top two bits at bits ``2 ib`` of the
    little-endian ``scales_h``; ``qs`` holds the sub-blocks one after the other in IQ4_NL's nibble order.
    ``w = (d * (ls_ib - 32)) * kvalues_iq4nl[n]`` (ggml-quants.c ``dequantize_row_iq4_xs``:
    ``dl = d * (ls - 32)``, then ``y[j] = dl * kvalues_iq4nl[qs[j] & 0xf]``); both products are exact in
    float32 (11 + 6 + 7 significant bits). Dequantize-only, like IQ4_NL.
    """

    bits = 4
    block_size = 256
    group_sizes = (256,)
    bytes_per_block = 136

    @staticmethod
    def scales(raw: np.ndarray) -> np.ndarray:
        """The eight signed sub-block scales ``ls - 32`` of each block: [n, 136] bytes -> int16 [n, 8]."""
        h = np.ascontiguousarray(raw[:, 2:4]).view("<u2").astype(np.int32)                  # [n, 1]
        sl = raw[:, 4:8].astype(np.int32)                                                   # [n, 4]
        low = np.stack([sl & 0x0F, sl >> 4], axis=2).reshape(-1, 8)                        # sub-block ib = 2 i + nibble
        high = (h >> (2 * np.arange(8, dtype=np.int32))[None, :]) & 3                        # [n, 8]
        return ((low | (high << 4)) - 32).astype(np.int16)

    @classmethod
    def dequantize_blocks(cls, packed):
        raw = cls._bytes(packed)
        n_blocks = raw.shape[0]
        d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)           # [n, 1]
        dl = (d * cls.scales(raw).astype(np.float32))[:, :, None]                           # [n, 8, 1]
        values = _iq4_codes(raw[:, 8:136]).reshape(n_blocks, 8, 32)                         # [n, 8 sub-blocks, 32]
        return (dl * values).reshape(n_blocks, 256)


# --- whole tensors ------------------------------------------------------------------------------
FORMAT_VERSION = 1
# Larger magnitudes are refused: far beyond any trained weight, and near float32's maximum the
# products scale * code of the dequantizer could overflow.
MAX_ABS_WEIGHT = 1e30


def array_shapes(scheme: str, shape, group_size: int | None = None) -> dict[str, tuple[tuple[int, int], np.dtype]]:
    """{array name: (shape, dtype)} of a quantized ``[out, in]`` tensor, in Python integers.

    Every array is ``[out, (in // group) * width]``; sizes and offsets are Python ints (or numpy
    int64 indices), never int32, so tensors with more than 2**31 values are addressed exactly.
    """
    cls = get_scheme(scheme)
    rows, cols = _check_shape(shape)
    group = cls.resolve_group_size(group_size, cols)
    return {name: ((rows, (cols // group) * width), dtype)
            for name, (width, dtype) in cls.block_layout(group).items()}


def _check_shape(shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape):
        raise QuantizationError(
            f"quantization works on 2-D [out, in] weights, got shape {shape}; reshape it first "
            f"(or keep 1-D tensors such as norms unquantized)")
    if shape[1] == 0:
        raise QuantizationError(f"cannot quantize a weight with empty rows (shape {shape})")
    return int(shape[0]), int(shape[1])


def row_chunks(n_rows: int, row_length: int):
    step = max(1, ROW_CHUNK_VALUES // row_length)
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


class QuantizedTensor:
    """A quantized ``[out, in]`` tensor: named plain arrays plus JSON-able metadata.

    ``arrays`` are used as given (memory-mapped safetensors views stay views); ``metadata`` is
    ``{"scheme", "group_size", "shape": [out, in], "version"}``. Build one with :func:`quantize`
    or, from stored arrays, with :meth:`from_arrays` (which validates names, shapes and dtypes).
    """

    def __init__(self, scheme: str, group_size: int, shape, arrays: Mapping[str, np.ndarray]):
        self.scheme = scheme
        self.group_size = int(group_size)
        self.shape = tuple(int(n) for n in shape)
        self.arrays = dict(arrays)

    @property
    def scheme_class(self) -> type[QuantScheme]:
        return get_scheme(self.scheme)

    @property
    def metadata(self) -> dict:
        return {"scheme": self.scheme, "group_size": self.group_size, "shape": list(self.shape),
                "version": FORMAT_VERSION}

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def __repr__(self) -> str:
        return f"QuantizedTensor(scheme={self.scheme!r}, group_size={self.group_size}, shape={self.shape})"

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], metadata) -> QuantizedTensor:
        """Wrap stored arrays (no copy) after checking them against ``metadata`` (dict or JSON)."""
        from ..errors import CorruptCheckpointError, UnsupportedFormatError
        if isinstance(metadata, (str, bytes)):
            import json
            try:
                metadata = json.loads(metadata)
            except ValueError as e:
                raise CorruptCheckpointError(f"quantization metadata is not valid JSON: {e}") from None
        if not isinstance(metadata, Mapping) or not {"scheme", "group_size", "shape"} <= set(metadata):
            raise CorruptCheckpointError(
                f"quantization metadata must hold 'scheme', 'group_size' and 'shape', got {metadata!r}")
        if metadata.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"quantized tensor format version {metadata['version']!r} is not supported by this "
                f"pycohere (it reads version {FORMAT_VERSION}); upgrade pycohere or re-quantize")
        if metadata["scheme"] not in SCHEMES:
            raise UnsupportedFormatError(
                f"unknown quantization scheme {metadata['scheme']!r} in metadata; "
                f"this pycohere reads {', '.join(sorted(SCHEMES))}")
        try:
            expected = array_shapes(metadata["scheme"], metadata["shape"], metadata["group_size"])
        except QuantizationError as e:
            raise CorruptCheckpointError(f"inconsistent quantization metadata {dict(metadata)}: {e}") from None
        if set(arrays) != set(expected):
            raise CorruptCheckpointError(
                f"{metadata['scheme']} tensor needs arrays {sorted(expected)}, got {sorted(arrays)}")
        for name, (shape, dtype) in expected.items():
            a = arrays[name]
            if tuple(a.shape) != shape or a.dtype != dtype:
                raise CorruptCheckpointError(
                    f"{metadata['scheme']} array {name!r} should be {dtype} {list(shape)} for a "
                    f"{list(metadata['shape'])} weight, got {a.dtype} {list(a.shape)}")
        return cls(metadata["scheme"], metadata["group_size"], metadata["shape"], arrays)

    def dequantize_rows(self, index) -> np.ndarray:
        """Dequantize the rows selected by ``index`` (a slice or int64 ids) -> float32 [k, in]."""
        cls = self.scheme_class
        widths = {name: width for name, (width, _) in cls.block_layout(self.group_size).items()}
        packed = {name: self.arrays[name][index].reshape(-1, widths[name]) for name in widths}
        return cls.dequantize_blocks(packed).reshape(-1, self.shape[1])

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The full float matrix, built chunk by chunk."""
        out = np.empty(self.shape, dtype=dtype)
        for start, stop in row_chunks(*self.shape):
            out[start:stop] = self.dequantize_rows(slice(start, stop))
        return out

    def rows(self, ids, dtype=np.float32) -> np.ndarray:
        """Dequantize only rows ``ids`` (any integer shape) -> ``ids.shape + (in,)``."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise QuantizationError(f"row ids must be integers, got dtype {ids.dtype}")
        flat = ids.reshape(-1).astype(np.int64)  # 64-bit before any arithmetic on them
        values = self.dequantize_rows(flat) if flat.size else np.empty((0, self.shape[1]), np.float32)
        return values.reshape(*ids.shape, self.shape[1]).astype(dtype, copy=False)


def _row_source(w):
    """(shape, fetch(start, stop) -> float32 rows) for an array or a pycohere Weight."""
    from ..spec.weights import Weight
    if isinstance(w, QuantizedTensor) or getattr(w, "storage", None) in SCHEMES:
        raise QuantizationError(
            f"this weight is already quantized ({getattr(w, 'scheme', None) or w.storage}); "
            f"quantize from the float checkpoint instead")
    if isinstance(w, Weight):
        shape = _check_shape(w.shape)
        return shape, lambda a, b: np.asarray(w.rows(np.arange(a, b), np.float32), dtype=np.float32)
    w = np.asarray(w)
    shape = _check_shape(w.shape)
    if w.dtype.kind != "f":
        raise QuantizationError(
            f"expected a floating-point weight, got dtype {w.dtype}; bf16 bits stored as uint16 "
            f"should be wrapped as pycohere.spec.weights.DenseWeight(raw, 'BF16') first")
    return shape, lambda a, b: _to_float32(w[a:b])


def _to_float32(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # float64 beyond float32's range -> inf, refused just after
        return values.astype(np.float32, copy=False)


def check_finite(rows: np.ndarray, start: int) -> None:
    """NaN/inf, or magnitudes no trained weight has, are refused with their position."""
    finite = np.isfinite(rows)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise QuantizationError(
            f"weight has NaN or inf values (first at [{start + int(r)}, {int(c)}], value "
            f"{rows[r, c]}, after conversion to float32); such a checkpoint is broken, fix it "
            f"before quantizing")
    too_big = np.abs(rows) > MAX_ABS_WEIGHT
    if too_big.any():
        r, c = np.argwhere(too_big)[0]
        raise QuantizationError(
            f"weight value {rows[r, c]:.3g} at [{start + int(r)}, {int(c)}] exceeds {MAX_ABS_WEIGHT:g} "
            f"in magnitude; no trained weight is that large (and scale * code could overflow "
            f"float32): check the checkpoint")


def quantize(w, scheme: str = "int8", group_size: int | None = None) -> QuantizedTensor:
    """Quantize a float ``[out, in]`` weight (ndarray or pycohere Weight) with ``scheme``.

    Values are converted to float32 first (as gguf-py and bitsandbytes do). ``group_size=None``
    takes the scheme's default (per output channel for int8, 64 for int4/int4-asym/nf4, the
    block size for GGUF types). Rows are processed in chunks, so memory stays bounded.
    """
    cls = get_scheme(scheme)
    if not cls.can_quantize:
        cls.quantize_blocks(np.zeros((1, 1), np.float32))  # raises the scheme's own explanation
    (rows, cols), fetch = _row_source(w)
    group = cls.resolve_group_size(group_size, cols)
    out = {name: np.empty(shape, dtype) for name, (shape, dtype) in array_shapes(scheme, (rows, cols), group).items()}
    for start, stop in row_chunks(rows, cols):
        values = fetch(start, stop)
        check_finite(values, start)
        packed = cls.quantize_blocks(values.reshape(-1, group))
        for name, arr in packed.items():
            out[name][start:stop] = arr.reshape(stop - start, -1)
    return QuantizedTensor(scheme, group, (rows, cols), out)


def dequantize(q: QuantizedTensor, dtype=np.float32) -> np.ndarray:
    """The float matrix a QuantizedTensor stands for."""
    return q.dequantize(dtype)


# --- bitsandbytes formats read from Hugging Face checkpoints (pycohere.quant.hf_formats) ---------
#: bitsandbytes FP4 in code order (1 sign, 2 exponent, 1 mantissa bit: 0, 0.0625, 8, 12, 4, 6, 2, 3,
#: normalised by 12 in float32, as ``bitsandbytes.functional.get_4bit_type("fp4")`` does). Code 8 is
#: -0.0 as in bitsandbytes' native CPU and CUDA decoders (``get_4bit_type`` itself has +0.0 there:
#: the values are equal, only the sign of a zero weight differs).
FP4_TABLE = np.array([0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                      -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0], dtype=np.float32) / np.float32(12)

#: LLM.int8's 1/127 as bitsandbytes multiplies by it: the Python float 7.874015718698502e-3 (the
#: float32 nearest to 1/127, written out) applied to a float32 tensor, i.e. in float32.
INV127 = np.float32(7.874015718698502e-3)


class _ReadOnlyScheme(QuantScheme):
    """A format pycohere reads from other tools' checkpoints but does not produce."""

    can_quantize = False

    @classmethod
    def quantize_blocks(cls, blocks):
        raise QuantizationError(
            f"{cls.name} is read from bitsandbytes checkpoints only; quantize with int8, int4, "
            f"int4-asym or nf4 instead")


class FP4(_ReadOnlyScheme, name="fp4"):
    """bitsandbytes FP4: ``w = FP4_TABLE[n] * absmax`` per block, like ``nf4`` with another table
    (same arrays and nibble order: element ``2j`` in the high nibble of byte ``j``).
    Arrays: ``qweight`` u8 [out, in/2], ``scales`` f32 [out, in/group]."""

    bits = 4
    block_size = 64
    group_sizes = (32, 64, 128)

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (group_size // 2, U8), "scales": (1, F32)}

    @classmethod
    def dequantize_blocks(cls, packed):
        codes = unpack_nibbles(packed["qweight"], high_first=True)
        return FP4_TABLE[codes] * packed["scales"].astype(np.float32)


class BnbInt8(_ReadOnlyScheme, name="bnb-int8"):
    """LLM.int8 weights as bitsandbytes dequantizes them: ``w = (q * SCB) * INV127``, rounded to
    float32 after each multiply (``int8_vectorwise_dequant``, bitsandbytes ``_ops.py``:
    ``A * stats.view(-1, 1) * 7.874015718698502e-3``). That differs from ``int8``'s single
    ``q * (SCB / 127)`` in the last bit for about a fifth of the weights, hence its own scheme.
    One block per row. Arrays: ``qweight`` i8 [out, in], ``scales`` f32 [out, 1] (= ``SCB``)."""

    bits = 8
    block_size = None
    group_sizes = ()

    @classmethod
    def block_layout(cls, group_size):
        return {"qweight": (group_size, I8), "scales": (1, F32)}

    @classmethod
    def dequantize_blocks(cls, packed):
        return (packed["qweight"].astype(np.float32) * packed["scales"].astype(np.float32)) * INV127
