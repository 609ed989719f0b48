"""pycohere.quant: the NumPy spec of every quantization scheme.

Expected values come from (a) hand derivations written next to each case, (b) the oracles
gguf-py (Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 quantize, every GGUF type dequantize) and bitsandbytes (NF4), live when
installed and through fixtures recorded by tools/make_quant_fixtures.py otherwise, and (c) the
error bounds that follow from round-to-nearest, checked with hypothesis.
"""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import DATA
from pycohere.errors import CorruptCheckpointError, QuantizationError, UnsupportedFormatError
from pycohere.quant import (NF4_TABLE, SCHEMES, QuantizationConfig, QuantizedTensor, QuantizedWeight,
                            array_shapes, dequantize, get_scheme, quantize)
from pycohere.quant.schemes import NF4_MIDPOINTS, unpack_nibbles
from pycohere.spec.weights import DenseWeight, Weight

QUANT = DATA / "quant"
OWN = ("int8", "int4", "int4-asym", "nf4")
GGUF_QUANTIZABLE = ("q8_0", "q4_0", "q4_1")  # with recorded fixtures; q5_0 / q5_1 are checked live
#: ggml types pycohere reads -> byte offsets of their f16 scale fields (random bytes there could be NaN/inf)
GGML_F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q2_k": (80, 82),
                   "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,), "iq4_nl": (0,), "iq4_xs": (0,)}
TINY = float(np.finfo(np.float32).tiny)


def codes4(q: QuantizedTensor, row: int = 0) -> list[int]:
    return unpack_nibbles(q.arrays["qweight"][row:row + 1], high_first=q.scheme == "nf4")[0].tolist()


def same_bytes(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    return a.arrays.keys() == b.arrays.keys() and all(
        a.arrays[k].dtype == b.arrays[k].dtype and a.arrays[k].tobytes() == b.arrays[k].tobytes()
        for k in a.arrays)


# --- registry and class attributes ------------------------------------------------------------
def test_registry_and_block_attributes():
    assert sorted(SCHEMES) == ["bnb-int8", "fp4", "int4", "int4-asym", "int8", "iq4_nl", "iq4_xs", "nf4", "q2_k",
                               "q3_k", "q4_0", "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k", "q8_0"]
    # ggml-common.h: block_q8_0 = f16 + 32 i8 = 34 B; q4_0 = f16 + 16 B = 18; q4_1 = 2 f16 + 16 = 20;
    # q5_0 = f16 + 4 B qh + 16 B = 22; q5_1 = 2 f16 + 4 + 16 = 24;
    # q2_K = 16 B scales + 64 B qs + 2 f16 = 84 per 256; q3_K = 32 hmask + 64 qs + 12 + f16 = 110;
    # q4_K = 2 f16 + 12 + 128 = 144 per 256; q5_K = 2 f16 + 12 + 32 qh + 128 = 176;
    # q6_K = 128 + 64 + 16 + f16 = 210 per 256; iq4_nl = f16 + 16 B = 18 per 32;
    # iq4_xs = f16 + u16 scales_h + 4 B scales_l + 128 B qs = 136 per 256.
    expected = {"q8_0": (32, 34, 8.5), "q4_0": (32, 18, 4.5), "q4_1": (32, 20, 5.0),
                "q5_0": (32, 22, 5.5), "q5_1": (32, 24, 6.0), "q2_k": (256, 84, 2.625),
                "q3_k": (256, 110, 3.4375), "q4_k": (256, 144, 4.5), "q5_k": (256, 176, 5.5),
                "q6_k": (256, 210, 6.5625), "iq4_nl": (32, 18, 4.5), "iq4_xs": (256, 136, 4.25)}
    for name, (block, nbytes, bpw) in expected.items():
        cls = get_scheme(name)
        assert (cls.block_size, cls.bytes_per_block, cls.block_nbytes(block)) == (block, nbytes, nbytes)
        assert cls.bits_per_weight(block) == bpw
    # Own schemes, group 64: int4 = 32 B codes + 4 B f32 scale = 4.5 bits/weight; int4-asym adds
    # a 4 B min (5.0); nf4 like int4; int8 per group of 32: 32 + 4 B -> 9 bits.
    assert get_scheme("int4").bits_per_weight(64) == 4.5
    assert get_scheme("int4-asym").bits_per_weight(64) == 5.0
    assert get_scheme("nf4").bits_per_weight(64) == 4.5
    assert get_scheme("int8").bits_per_weight(32) == 9.0
    assert [get_scheme(n).bits for n in ("int8", "int4", "nf4", "q6_k")] == [8, 4, 4, 6]
    assert get_scheme("int8").block_size is None  # per output channel by default
    assert not get_scheme("q4_k").can_quantize and get_scheme("q4_0").can_quantize
    assert [get_scheme(n).can_quantize for n in ("q5_0", "q5_1", "q2_k", "q3_k", "q5_k")] == [True, True] + [False] * 3
    assert [get_scheme(n).bits for n in ("q5_0", "q5_1", "q2_k", "q3_k", "q5_k")] == [5, 5, 2, 3, 5]
    with pytest.raises(TypeError):
        get_scheme("int8")()


def test_nf4_table_is_the_bitsandbytes_table():
    # The 16 values listed in /work/shared/reference/quantized-formats.md (bitsandbytes' get_4bit_type).
    listed = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
    assert NF4_TABLE.dtype == np.float32 and NF4_TABLE.tolist() == np.float32(listed).tolist()


# --- hand-derived cases -------------------------------------------------------------------------
def test_int8_per_channel_hand_derived():
    w = np.array([
        # absmax 127/64 -> scale 1/64 exactly (bf16-exact). codes = rint(64 w), ties to even:
        # 0.5 -> 32; 0.3 -> rint(19.2) = 19; 1/128 -> 0.5 -> 0; 1.5/64 -> 1.5 -> 2; -1.5/64 -> -2.
        [0.5, -1.984375, 0.3, 0.0078125, 0.0234375, -0.0234375, 0.0, 1.984375],
        # absmax 1: 1/127 = 2**-7 * 1.00787.. -> 8 significant bits: 129/128 * 2**-7 = 129 * 2**-14.
        # 1/s = 16384/129 = 127.008 -> 127; 0.5/s = 63.504 -> 64; -0.25/s = -31.75 -> -32;
        # 0.1/s = 12.70 -> 13; s/2 -> tie -> 0; 1.5 s -> tie -> 2.
        [1.0, 0.5, -0.25, 0.0, 0.1, -1.0, 129 * 2.0**-15, 387 * 2.0**-15],
    ], dtype=np.float32)
    q = quantize(w, "int8")
    assert q.group_size == 8 and q.metadata == {"scheme": "int8", "group_size": 8, "shape": [2, 8], "version": 1}
    assert q.arrays["qweight"].tolist() == [[32, -127, 19, 0, 2, -2, 0, 127], [127, 64, -32, 0, 13, -127, 0, 2]]
    assert q.arrays["scales"].tolist() == [[1 / 64], [129 * 2.0**-14]]
    assert q.arrays["qweight"].dtype == np.int8 and q.arrays["scales"].dtype == np.float32
    np.testing.assert_array_equal(q.dequantize(), q.arrays["qweight"] * q.arrays["scales"])


def test_int8_group_32_hand_derived():
    w = np.zeros((1, 64), np.float32)
    w[0, 0] = 1.984375              # group 0: scale 1/64, code 127, zeros -> 0
    w[0, 32] = -0.5                 # group 1: 0.5/127 -> 129 * 2**-15; -0.5/s = -127.008 -> -127
    w[0, 33:] = 0.25                #   0.25/s = 63.504 -> 64
    q = quantize(w, "int8", group_size=32)
    assert q.arrays["scales"].tolist() == [[1 / 64, 129 * 2.0**-15]]
    assert q.arrays["qweight"][0, :2].tolist() == [127, 0]
    assert q.arrays["qweight"][0, 32:35].tolist() == [-127, 64, 64]


def test_int4_hand_derived():
    w = np.zeros((1, 32), np.float32)
    # absmax 0.875 -> scale 0.875 / 7 = 0.125; q = rint(8 w) stored as n = q + 8:
    # 0.875 -> 7 -> 15; -0.875 -> 1; 0.0625 -> 0.5 -> 0 (even) -> 8; 0.1875 -> 1.5 -> 2 -> 10;
    # -0.3 -> -2.4 -> -2 -> 6; 0.3125 -> 2.5 -> 2 (even) -> 10; -0.0625 -> -0.5 -> 0 -> 8.
    w[0, :7] = [0.875, -0.875, 0.0625, 0.1875, -0.3, 0.3125, -0.0625]
    q = quantize(w, "int4", group_size=32)
    assert q.arrays["scales"].tolist() == [[0.125]]
    assert codes4(q)[:8] == [15, 1, 8, 10, 6, 10, 8, 8]
    # element 2j in the low nibble: (15, 1) -> 0x1F, (8, 10) -> 0xA8, (6, 10) -> 0xA6, (8, 8) -> 0x88.
    assert q.arrays["qweight"][0].tolist() == [0x1F, 0xA8, 0xA6] + [0x88] * 13
    assert q.dequantize()[0, :7].tolist() == [0.875, -0.875, 0.0, 0.25, -0.25, 0.25, 0.0]


def test_int4_asym_hand_derived():
    w = np.full((2, 32), 0.0625, np.float32)
    # Row 0: min -0.5, max 1.375 -> scale 1.875 / 15 = 0.125, min stored -0.5.
    # n = rint((w + 0.5) * 8): 1.375 -> 15; -0.5 -> 0; 0 -> 4; 0.3 -> 6.4 -> 6;
    # -0.4375 -> 0.5 -> 0 (even); -0.3125 -> 1.5 -> 2; 0.0625 -> 4.5 -> 4 (even).
    w[0, :6] = [1.375, -0.5, 0.0, 0.3, -0.4375, -0.3125]
    # Row 1: all 0.3 -> the range is widened to contain 0: [0, 0.3]; 0.3 / 15 = 0.02 ->
    # bf16: 0.02 = 1.28 * 2**-6 -> 164/128 * 2**-6 = 0.02001953125; n = rint(14.985) = 15.
    w[1] = 0.3
    q = quantize(w, "int4-asym", group_size=32)
    assert q.arrays["scales"].tolist() == [[0.125], [0.02001953125]]
    assert q.arrays["mins"].tolist() == [[-0.5], [0.0]]
    assert codes4(q, 0)[:8] == [15, 0, 4, 6, 0, 2, 4, 4]
    assert q.arrays["qweight"][0].tolist() == [0x0F, 0x64, 0x20] + [0x44] * 13
    assert codes4(q, 1) == [15] * 32
    deq = q.dequantize()
    assert deq[0, :6].tolist() == [1.375, -0.5, 0.0, 0.25, -0.5, -0.25]
    assert deq[1, 0] == np.float32(15 * 0.02001953125)


def test_nf4_hand_derived():
    w = np.zeros((1, 64), np.float32)
    # absmax 2 -> scaled = w / 2 exactly. Nearest NF4 code, midpoints in float32:
    # 2 -> 1.0 -> 15; -2 -> 0; 0.05 -> 0.025 < mid(0, 0.0796) = 0.0398 -> 7; 0.1 -> 0.05 -> 8;
    # 1 -> 0.5 < mid(0.4407, 0.5626) = 0.5017 -> 12; -0.2 -> -0.1 > mid(-0.1848, -0.0911) -> 6;
    # t8 = 0.0796 -> scaled t8 / 2 = exactly the midpoint -> the lower code 7 (bucketize right=False).
    w[0, :7] = [2.0, -2.0, 0.05, 0.1, 1.0, -0.2, NF4_TABLE[8]]
    q = quantize(w, "nf4")
    assert q.group_size == 64 and q.arrays["scales"].tolist() == [[2.0]]
    assert codes4(q)[:8] == [15, 0, 7, 8, 12, 6, 7, 7]
    # bitsandbytes order: element 2j in the HIGH nibble: (15, 0) -> 0xF0, (7, 8) -> 0x78, ...
    assert q.arrays["qweight"][0].tolist() == [0xF0, 0x78, 0xC6, 0x77] + [0x77] * 28
    expected = np.float32([1.0, -1.0, 0.0, NF4_TABLE[8], NF4_TABLE[12], NF4_TABLE[6]]) * 2
    assert q.dequantize()[0, :6].tolist() == expected.tolist()


def test_q8_0_hand_derived():
    w = np.zeros((1, 32), np.float32)
    # absmax 127/64 -> d = 1/64 = 2**-6, float16 bits 0 01001 0000000000 = 0x2400 (little-endian
    # 00 24). q = roundf(64 w), ties AWAY from zero (C roundf): 0.5 -> 1, -1.5 -> -2, 2.5 -> 3
    # (int8's round-half-even would give 0, -2, 2).
    w[0, :4] = [1.984375, 0.5 / 64, -1.5 / 64, 2.5 / 64]
    packed = quantize(w, "q8_0").arrays["qweight"]
    assert packed.shape == (1, 34)
    assert packed[0, :6].tolist() == [0x00, 0x24, 127, 1, 0xFE, 3] and not packed[0, 6:].any()
    assert quantize(w, "int8").arrays["qweight"][0, :4].tolist() == [127, 0, -2, 2]


def test_q4_0_hand_derived_sign_and_truncation():
    w = np.zeros((2, 32), np.float32)
    # Row 0: the largest magnitude is -0.5 (negative) -> d = -0.5 / -8 = 0.0625, id = 16.
    # n = min(15, trunc(16 w + 8.5)): 0.25 -> 12; -0.5 -> 0; 1/32 -> 9 (half up); -1/32 -> 8;
    # 0.46875 -> 16 -> 15; zeros -> 8. d = 2**-4 -> float16 0x2C00.
    w[0, :5] = [0.25, -0.5, 1 / 32, -1 / 32, 0.46875]
    # Row 1: +0.5 then -0.5: equal magnitudes, the first (positive) wins -> d = -0.0625, so +0.5
    # is exact (code 0) and -0.5 -> trunc(8 + 8.5) = 16 -> clipped to 15 -> 7 * d = -0.4375.
    w[1, :2] = [0.5, -0.5]
    packed = quantize(w, "q4_0").arrays["qweight"]
    assert packed[0, :2].tolist() == [0x00, 0x2C] and packed[1, :2].tolist() == [0x00, 0xAC]
    # split halves: byte j = code j | code (j + 16) << 4, and codes 16..31 are 8.
    assert packed[0, 2:].tolist() == [0x8C, 0x80, 0x89, 0x88, 0x8F] + [0x88] * 11
    deq = dequantize(quantize(w, "q4_0"))
    assert deq[0, :5].tolist() == [0.25, -0.5, 0.0625, 0.0, 0.4375]
    assert deq[1, :2].tolist() == [0.5, -0.4375]


def test_q5_0_and_q3_k_hand_derived_bit_layout():
    # Q5_0 (ggml-quants.c dequantize_row_q5_0): d = 0.5; qh = 0x80010001 (little endian) sets bit 4 of
    # elements 0, 16 and 31; qs[0] = 0x21: element 0 low nibble 1, element 16 high nibble 2. So n[0] = 17,
    # n[16] = 18, n[31] = 16, every other n = 0; w = (n - 16) * d.
    block = np.zeros((1, 22), np.uint8)
    block[0, 0:2] = np.array([0.5], np.float16).view(np.uint8)
    block[0, 2:6] = [0x01, 0x00, 0x01, 0x80]
    block[0, 6] = 0x21
    expected = np.full(32, -8.0, np.float32)
    expected[[0, 16, 31]] = [0.5, 1.0, 0.0]
    np.testing.assert_array_equal(get_scheme("q5_0").dequantize_blocks({"qweight": block})[0], expected)
    # Q3_K (dequantize_row_q3_K): d = 1 (bytes 108-109). Scales: byte 0 = 1 (sub-block 0, low nibble) and
    # byte 8 = 2 (its top bits: 1 | 2 << 4 = 33 -> 33 - 32 = 1); every other 6-bit scale is 0 -> -32.
    # qs[0] = 3 gives element 0 the code 3 and hmask[0] bit 0 keeps it (a clear bit subtracts 4): all
    # other codes are 0 - 4. So element 0: 1 * 3; elements 1..15: 1 * -4; the rest: -32 * -4 = 128.
    block = np.zeros((1, 110), np.uint8)
    block[0, 108:110] = np.array([1.0], np.float16).view(np.uint8)
    block[0, 96], block[0, 104], block[0, 32], block[0, 0] = 1, 2, 3, 1
    expected = np.full(256, 128.0, np.float32)
    expected[:16] = -4.0
    expected[0] = 3.0
    np.testing.assert_array_equal(get_scheme("q3_k").dequantize_blocks({"qweight": block})[0], expected)


def test_q4_0_rounds_twice_like_llama_cpp():
    # ggml's quantize_row_q4_0_ref: x0 = x*id (float32), code = (int8_t)(x0 + 8.5f) (float32 again).
    # llama.cpp's quantizer (llama-cpp-python 0.3.36 built here) produced exactly these two-rounding
    # bytes on bf16-valued models (see tools/llama_cpp_oracle.py / tests/test_gguf_export.py). Hand
    # derivation with exact rationals of a case where one (fused) rounding gives a different code:
    mx, x = np.float32(-1.9256955), np.float32(-1.0832038)
    d = mx / np.float32(-8)
    inv = np.float32(1) / d
    exact = Fraction(float(x)) * Fraction(float(inv)) + Fraction(17, 2)
    assert exact < 4 and np.float32(float(exact)) < 4       # one rounding: 3.9999998 -> code 3
    assert np.float32(x * inv) + np.float32(8.5) == 4       # two roundings (ggml, gguf 0.19.0): 4
    w = np.zeros((1, 32), np.float32)
    w[0, :2] = [mx, x]
    assert unpack_split_codes(quantize(w, "q4_0").arrays["qweight"])[1] == 4


def unpack_split_codes(packed: np.ndarray) -> list[int]:
    qs = packed[0, 2:18]
    return (qs & 15).tolist() + (qs >> 4).tolist()


# --- oracles: gguf-py and bitsandbytes ----------------------------------------------------------
def gguf_fixture():
    meta = json.loads((QUANT / "gguf_oracle.json").read_text())
    assert meta["oracle"] == "gguf" and meta["gguf_version"]
    return np.load(QUANT / "gguf_oracle.npz", allow_pickle=False)


@pytest.mark.parametrize("scheme", GGUF_QUANTIZABLE)
def test_gguf_quantize_matches_recorded_oracle(scheme):
    f = gguf_fixture()
    q = quantize(f["w"], scheme)
    np.testing.assert_array_equal(q.arrays["qweight"], f[f"{scheme}_bytes"])
    np.testing.assert_array_equal(q.dequantize(), f[f"{scheme}_deq"])


@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
def test_kquant_dequantize_matches_recorded_oracle(scheme):
    f = gguf_fixture()
    raw = f[f"{scheme}_bytes"]
    q = QuantizedTensor.from_arrays({"qweight": raw}, {"scheme": scheme, "group_size": 256, "shape": [2, 512]})
    np.testing.assert_array_equal(q.dequantize(), f[f"{scheme}_deq"])


def random_weights(seed: int, shape=(48, 256)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.logspace(-3, 1, shape[0], dtype=np.float32)[:, None]  # rows from 1e-3 to 10
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.oracle
@pytest.mark.parametrize("scheme", GGUF_QUANTIZABLE + ("q5_0", "q5_1"))
def test_gguf_quantize_matches_live_gguf(scheme):
    gguf = pytest.importorskip("gguf", reason="gguf (PyPI) is the optional oracle for ggml blocks")
    qtype = getattr(gguf.GGMLQuantizationType, scheme.upper())
    for seed in range(3):
        w = random_weights(seed)
        ref = gguf.quants.quantize(w, qtype)
        q = quantize(w, scheme)
        np.testing.assert_array_equal(q.arrays["qweight"], ref)
        np.testing.assert_array_equal(q.dequantize(), gguf.quants.dequantize(ref, qtype))


@pytest.mark.oracle
@pytest.mark.parametrize("scheme", sorted(GGML_F16_FIELDS))
def test_ggml_dequantize_of_random_blocks_matches_live_gguf(scheme):
    # Every block byte random (so every code, scale and min bit pattern occurs), except finite f16
    # fields of random magnitude; bit-exact (compared as uint32) against gguf-py on several shapes.
    gguf = pytest.importorskip("gguf", reason="gguf (PyPI) is the optional oracle for ggml blocks")
    cls = get_scheme(scheme)
    qtype = getattr(gguf.GGMLQuantizationType, scheme.upper())
    assert gguf.GGML_QUANT_SIZES[qtype] == (cls.block_size, cls.bytes_per_block)
    rng = np.random.default_rng(7)
    for rows, n_blocks in ((4, 6), (1, 1), (7, 3), (2, 17)):
        blocks = rng.integers(0, 256, (rows * n_blocks, cls.bytes_per_block), dtype=np.uint8)
        for off in GGML_F16_FIELDS[scheme]:
            d = rng.uniform(-1, 1, rows * n_blocks) * np.exp(rng.uniform(-12, 2, rows * n_blocks))
            blocks[:, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        raw = blocks.reshape(rows, -1)
        ref = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        meta = {"scheme": scheme, "group_size": cls.block_size, "shape": [rows, n_blocks * cls.block_size]}
        q = QuantizedTensor.from_arrays({"qweight": raw}, meta)
        np.testing.assert_array_equal(q.dequantize().view(np.uint32), ref.view(np.uint32))
        ids = rng.integers(0, rows, 5)
        np.testing.assert_array_equal(q.rows(ids).view(np.uint32), ref[ids].view(np.uint32))


def test_nf4_matches_recorded_bitsandbytes():
    meta = json.loads((QUANT / "bnb_nf4.json").read_text())
    assert meta["oracle"] == "bitsandbytes" and meta["blocksize"] == 64 and meta["device"] == "cpu"
    f = np.load(QUANT / "bnb_nf4.npz", allow_pickle=False)
    q = quantize(f["w"], "nf4")
    # bitsandbytes stores the flat tensor (first element in the high nibble) and absmax per 64
    # flat values; with 64 | in those are exactly our [out, in/2] / [out, in/64] arrays.
    np.testing.assert_array_equal(q.arrays["qweight"].reshape(-1), f["packed"])
    np.testing.assert_array_equal(q.arrays["scales"].reshape(-1), f["absmax"])
    np.testing.assert_array_equal(q.dequantize(), f["deq"])
    # Row 3 holds values exactly on the 15 midpoints (-> lower code) and one ulp above (-> upper).
    assert codes4(q, 3)[1:31] == list(range(15)) + list(range(1, 16))


@pytest.mark.oracle
def test_nf4_matches_live_bitsandbytes():
    F = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is an optional NF4 oracle")
    torch = pytest.importorskip("torch")
    w = random_weights(11, (16, 128))
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4")
    q = quantize(w, "nf4")
    np.testing.assert_array_equal(q.arrays["qweight"].reshape(-1), packed.numpy().reshape(-1))
    np.testing.assert_array_equal(q.arrays["scales"].reshape(-1), state.absmax.numpy())


# --- independent element-wise decoder: documents the layouts, checks dequantize and matmul ------
def decode_by_hand(q: QuantizedTensor) -> np.ndarray:
    """Element by element from the documented formulas, in float64 (exact for these schemes)."""
    rows, cols = q.shape
    g, a = q.group_size, q.arrays
    out = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            k = c // g
            if q.scheme == "int8":
                out[r, c] = float(a["qweight"][r, c]) * float(a["scales"][r, k])
                continue
            byte = int(a["qweight"][r, c // 2])
            first_high = q.scheme == "nf4"
            n = (byte >> 4 if first_high else byte & 15) if c % 2 == 0 else (byte & 15 if first_high else byte >> 4)
            s = float(a["scales"][r, k])
            if q.scheme == "int4":
                out[r, c] = (n - 8) * s
            elif q.scheme == "int4-asym":
                out[r, c] = n * s + float(a["mins"][r, k])
            else:
                out[r, c] = float(NF4_TABLE[n]) * s
    return out


@pytest.mark.parametrize("scheme,group", [("int8", None), ("int8", 32), ("int4", 32), ("int4", 128),
                                          ("int4-asym", 64), ("nf4", 64)])
def test_dequantize_and_matmul_match_the_element_formulas(scheme, group):
    w = random_weights(3, (6, 128))
    q = quantize(w, scheme, group)
    by_hand = decode_by_hand(q)
    np.testing.assert_array_equal(q.dequantize(), by_hand.astype(np.float32))
    W = QuantizedWeight.from_tensor(q)
    x = np.random.default_rng(4).standard_normal((2, 3, 128)).astype(np.float32)
    y = W.matmul(x)
    assert y.shape == (2, 3, 6) and y.dtype == np.float32
    np.testing.assert_array_equal(y, x @ W.dequantize().T)
    np.testing.assert_allclose(y, x.astype(np.float64) @ by_hand.T, rtol=1e-5, atol=1e-5)
    # In x's dtype, as the Weight interface says; the weight values are the float32 dequantized
    # ones (int4-asym's n * s + min is rounded to float32 by definition), widened.
    y64 = W.matmul(x.astype(np.float64))
    assert y64.dtype == np.float64
    w32 = by_hand.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(y64, x.astype(np.float64) @ w32.T, rtol=1e-12, atol=1e-12)


# --- round trips: quantize(dequantize(q)) gives the same bytes ---------------------------------
@pytest.mark.parametrize("scheme,group", [("int8", None), ("int8", 64), ("int4", 32), ("int4-asym", 128),
                                          ("nf4", 64), ("q8_0", None), ("q4_0", None), ("q4_1", None),
                                          ("q5_0", None), ("q5_1", None)])
def test_requantizing_the_dequantized_tensor_is_byte_identical(scheme, group):
    w = random_weights(5)
    q = quantize(w, scheme, group)
    assert same_bytes(q, quantize(q.dequantize(), scheme, group))


weights_2d = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda rg: st.sampled_from([32, 64, 128]).flatmap(
        lambda g: st.tuples(
            st.just(g),
            hnp.arrays(np.float32, (rg[0], rg[1] * g),
                       elements=st.floats(-(2.0**99), 2.0**99, width=32, allow_subnormal=True)
                       | st.floats(-2.0, 2.0, width=32)
                       | st.sampled_from([0.0, 0.5, -0.5, float(np.float32(1e-38)), float(np.float32(-1e-39))])))))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=weights_2d, scheme=st.sampled_from(["int8", "int8/row", "int4", "int4-asym"]))
def test_round_to_nearest_error_bound(data, scheme):
    # Round to nearest with a scale s gives |w - deq| <= s / 2. float32 noise: w / s is rounded
    # (relative 2**-24 of a value <= 127.5) and, for int4-asym, n * s + min is rounded once
    # (<= 2**-24 * 31 s): a slack of 2**-18 s covers both. A group stored with scale 0 (its
    # scale would be subnormal) has every |w| below 16 * 127 * 2**-126.
    group, w = data
    per_row = scheme == "int8/row"
    name = "int8" if per_row else scheme
    q = quantize(w, name, None if per_row else group)
    g = q.group_size
    err = np.abs(w.astype(np.float64) - q.dequantize().astype(np.float64))
    scale = np.repeat(q.arrays["scales"].astype(np.float64), g, axis=1)
    assert np.all((err <= scale * (0.5 + 2.0**-18)) | ((scale == 0) & (np.abs(w) < 16 * 127 * TINY)))
    assert same_bytes(q, quantize(q.dequantize(), name, g))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=weights_2d)
def test_nf4_picks_the_nearest_code(data):
    # NF4 maps scaled = w / absmax to the nearest table value. bitsandbytes compares against
    # float32 midpoints, which may sit half an ulp (<= 2**-25) off the true midpoint: slack 1e-7.
    group, w = data
    w = np.where(np.abs(w) < TINY, np.float32(0), w)  # bitsandbytes clamps absmax below 1e-38
    q = quantize(w, "nf4", group)
    absmax = np.repeat(q.arrays["scales"], group, axis=1).astype(np.float64)
    assert np.array_equal(absmax[:, ::group], np.abs(w).reshape(w.shape[0], -1, group).max(axis=2))
    inverse = (np.float32(1) / np.maximum(q.arrays["scales"], np.float32(1e-38))).astype(np.float64)
    scaled = np.clip(w * np.repeat(inverse, group, axis=1), -1, 1)
    codes = unpack_nibbles(q.arrays["qweight"], high_first=True)
    dist = np.abs(scaled[..., None] - NF4_TABLE.astype(np.float64))
    chosen = np.take_along_axis(dist, codes[..., None].astype(np.int64), axis=-1)[..., 0]
    assert np.all(chosen <= dist.min(axis=-1) + 1e-7)
    assert same_bytes(q, quantize(q.dequantize(), "nf4", group))


def test_nf4_midpoints_are_float32_means():
    assert NF4_MIDPOINTS.dtype == np.float32
    assert NF4_MIDPOINTS.tolist() == [(np.float32(a) + np.float32(b)) / np.float32(2)
                                      for a, b in zip(NF4_TABLE[:-1], NF4_TABLE[1:])]


# --- storage contract ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["int8", "int4", "int4-asym", "nf4", "q8_0", "q4_0"])
def test_arrays_and_metadata_round_trip_through_safetensors_and_json(scheme, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file
    w = random_weights(8, (8, 128))
    q = quantize(w, scheme)
    assert {k: (v.shape, v.dtype) for k, v in q.arrays.items()} == array_shapes(scheme, (8, 128))
    path = tmp_path / "q.safetensors"
    save_file({f"layer.{k}": v for k, v in q.arrays.items()}, str(path),
              metadata={"layer": json.dumps(q.metadata)})
    with safe_open(str(path), framework="numpy") as f:
        arrays = {k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()["layer"]
    W = QuantizedWeight(arrays, meta)  # metadata may be given as its JSON string
    assert W.metadata == json.loads(meta) == q.metadata
    assert W.storage == scheme and W.shape == (8, 128) and W.nbytes == q.nbytes
    np.testing.assert_array_equal(W.dequantize(), q.dequantize())


def test_quantized_weight_wraps_memory_mapped_arrays_without_copying(tmp_path):
    q = quantize(random_weights(9, (8, 128)), "int4")
    for k, v in q.arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
    arrays = {k: np.load(tmp_path / f"{k}.npy", mmap_mode="r") for k in q.arrays}
    W = QuantizedWeight(arrays, q.metadata)
    assert isinstance(W, Weight) and all(W.arrays[k] is arrays[k] for k in arrays)
    assert isinstance(W.arrays["qweight"], np.memmap)
    assert W.nbytes == 8 * 64 + 8 * 2 * 4
    ids = np.array([[7, 0], [3, 3]])
    np.testing.assert_array_equal(W.rows(ids), q.dequantize()[ids])
    assert W.rows(ids, np.float64).dtype == np.float64 and W.dequantize(np.float16).dtype == np.float16
    assert "int4" in repr(W)


def test_quantize_accepts_dense_weights_and_float64():
    w = random_weights(10, (4, 64))
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)       # truncated to exact bf16 values
    as_f32 = (bits.astype(np.uint32) << 16).view(np.float32)
    from_dense = quantize(DenseWeight(bits, "BF16"), "int4", 32)
    assert same_bytes(from_dense, quantize(as_f32, "int4", 32))
    assert same_bytes(quantize(as_f32.astype(np.float64), "int8"), quantize(as_f32, "int8"))


# --- 64-bit indexing -----------------------------------------------------------------------------
def test_index_arithmetic_beyond_2_to_the_31(monkeypatch):
    # Command R+'s embedding: 256000 x 12288 = 3.1e9 values > 2**31. Sizes are Python ints:
    out, inp = 256000, 12288
    assert out * inp > 2**31
    shapes = array_shapes("q4_0", (out, inp))
    assert shapes == {"qweight": ((out, 6912), np.dtype("u1"))}           # 12288 / 32 * 18
    assert shapes["qweight"][0][0] * shapes["qweight"][0][1] == 1_769_472_000
    assert array_shapes("int8", (out, inp))["qweight"][0] == (out, inp)
    assert array_shapes("int4-asym", (out, inp), 128)["mins"][0] == (out, 96)
    # A full-size weight whose arrays are zero-stride views of one quantized row (no memory):
    # rows() must gather only the asked rows, with 64-bit ids, never dequantize the whole table.
    row = random_weights(12, (1, inp))
    for scheme in ("int8", "q4_0", "nf4"):
        small = quantize(row, scheme)
        arrays = {k: np.broadcast_to(v, (out, v.shape[1])) for k, v in small.arrays.items()}
        W = QuantizedWeight(arrays, {**small.metadata, "shape": [out, inp]})
        monkeypatch.setattr(QuantizedTensor, "dequantize", lambda *a, **k: pytest.fail("full dequantize"))
        got = W.rows(np.array([out - 1, 2**17, 0], dtype=np.int32))
        monkeypatch.undo()
        assert got.shape == (3, inp)
        np.testing.assert_array_equal(got, np.repeat(small.dequantize(), 3, axis=0))


# --- errors --------------------------------------------------------------------------------------
def test_unknown_scheme():
    with pytest.raises(QuantizationError, match="unknown quantization scheme 'int3'.*int4"):
        quantize(np.zeros((2, 64), np.float32), "int3")


@pytest.mark.parametrize("scheme,group,cols,message", [
    ("int4", 64, 96, "does not divide the row length 96"),
    ("int8", 128, 192, "does not divide"),
    ("int4", 48, 96, "does not support group_size=48"),
    ("int4", None, 100, "does not divide the row length 100"),
    ("nf4", 16, 64, "does not support"),
    ("q8_0", 64, 64, "does not support group_size=64"),
    ("q4_0", None, 48, "does not divide"),
])
def test_bad_group_sizes(scheme, group, cols, message):
    with pytest.raises(QuantizationError, match=message):
        quantize(np.ones((2, cols), np.float32), scheme, group)


@pytest.mark.parametrize("w", [np.ones(64, np.float32), np.ones((2, 2, 64), np.float32),
                               np.ones((2, 0), np.float32)])
def test_non_2d_or_empty_input(w):
    with pytest.raises(QuantizationError, match="2-D|empty"):
        quantize(w, "int8")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(bad):
    w = np.ones((3, 64), np.float32)
    w[2, 5] = bad
    for scheme in ("int8", "nf4", "q4_0"):
        with pytest.raises(QuantizationError, match=r"NaN or inf.*\[2, 5\]"):
            quantize(w, scheme)
    with pytest.raises(QuantizationError, match="NaN or inf"):  # float64 that overflows float32
        quantize(np.full((1, 32), 1e300), "int8")


def test_other_bad_inputs():
    with pytest.raises(QuantizationError, match="exceeds 1e\\+30"):
        quantize(np.full((1, 32), 1e31, np.float32), "int8")
    with pytest.raises(QuantizationError, match="floating-point"):
        quantize(np.ones((2, 64), np.int32), "int8")
    with pytest.raises(QuantizationError, match="float16's range"):
        quantize(np.full((1, 32), 1e7, np.float32), "q8_0")
    with pytest.raises(QuantizationError, match="dequantize-only"):
        quantize(np.ones((1, 256), np.float32), "q4_k")
    for scheme in ("q2_k", "q3_k", "q5_k"):
        with pytest.raises(QuantizationError, match=f"{scheme} is dequantize-only.*llama-quantize"):
            quantize(np.ones((1, 256), np.float32), scheme)
        with pytest.raises(QuantizationError, match=f"{scheme} is dequantize-only.*q4_0.*q5_0"):
            QuantizationConfig(scheme=scheme)
    q = quantize(np.ones((2, 64), np.float32), "int4")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize(QuantizedWeight.from_tensor(q), "int8")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize(q, "int8")
    with pytest.raises(QuantizationError, match="integers"):
        QuantizedWeight.from_tensor(q).rows(np.array([0.5]))
    with pytest.raises(QuantizationError, match="even number"):
        get_scheme("int4").quantize_blocks(np.ones((1, 3), np.float32))


def test_inconsistent_stored_arrays():
    q = quantize(np.ones((2, 64), np.float32), "int4-asym", 32)
    arrays, meta = q.arrays, q.metadata
    with pytest.raises(CorruptCheckpointError, match=r"needs arrays \['mins', 'qweight', 'scales'\]"):
        QuantizedWeight({k: v for k, v in arrays.items() if k != "mins"}, meta)
    with pytest.raises(CorruptCheckpointError, match="'scales' should be float32 \\[2, 2\\]"):
        QuantizedWeight({**arrays, "scales": arrays["scales"].astype(np.float16)}, meta)
    with pytest.raises(CorruptCheckpointError, match="'qweight' should be uint8 \\[2, 32\\]"):
        QuantizedWeight({**arrays, "qweight": arrays["qweight"][:, :16]}, meta)
    with pytest.raises(CorruptCheckpointError, match="inconsistent quantization metadata"):
        QuantizedWeight(arrays, {**meta, "group_size": 48})
    with pytest.raises(CorruptCheckpointError, match="must hold"):
        QuantizedWeight(arrays, {"scheme": "int4-asym"})
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        QuantizedWeight(arrays, "{scheme")
    with pytest.raises(UnsupportedFormatError, match="unknown quantization scheme 'gptq'"):
        QuantizedWeight(arrays, {**meta, "scheme": "gptq"})
    with pytest.raises(UnsupportedFormatError, match="version 2"):
        QuantizedWeight(arrays, {**meta, "version": 2})
