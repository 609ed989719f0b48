"""Every kernel beside its readable twin, in one table (llm.c's ``dev/cuda`` pattern: the reference first,
then the fast version, one place that lists them).

Each ``Twin`` names a NumPy function of the spec (``pycohere.spec`` / ``pycohere.quant``), the fast path
that replaces it (same arguments, the kernels chosen by ``pycohere.kernels.dispatch``), and the Numba
functions that fast path runs. ``tests/test_kernel_twins.py`` iterates over ``TWINS`` and compares the
two on hypothesis-drawn shapes, and fails for any Numba function of this package that no twin covers:
a kernel without a twin test cannot exist.

``check``: how the two must agree. ``"exact"``: bit for bit (dequantizers, gathers, permutations, the
activation rounding) or, for matmuls, exactly equal on inputs whose float32 arithmetic is exact in any
summation order (dyadic values of bounded size: a wrong index or nibble cannot hide in rounding);
``"summation"``: within float32 summation error (4 (n + 8) eps sum |a_j b_j|), for code books that are
not dyadic (nf4, fp4) and for rounded activations; ``"softmax"``: within 1e-5 relative (attention).
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..quant.activations import VEC_DOT_TYPE, LlamaCppActivations, round_activations, round_q8_0, round_q8_k
from ..quant.schemes import SCHEMES, unpack_nibbles, pack_nibbles
from ..spec import layers as L
from ..spec.params import ForwardState
from . import attention, bf16_dot, decode, dense, hf, int8_dot, iquant, irows, quant, rounding, tiles
from .dispatch import fast_weight


@dataclass(frozen=True)
class Twin:
    name: str            # "matmul/q4_k"
    kind: str            # what the arguments are: see tests/test_kernel_twins.py
    case: str            # the storage dtype or scheme the inputs are made in
    spec: Callable       # the readable NumPy function
    fast: Callable       # its fast twin, same arguments
    kernels: tuple       # the Numba functions the fast twin runs
    check: str = "exact"


# --- the pairs --------------------------------------------------------------------------------------
def _spec_matmul(w, x):
    return w.matmul(x)


def _fast_matmul(w, x):
    return fast_weight(w).matmul(x)


def _gemm_variant(kernel):
    """x @ W.T by one of ``tiles``' GEMM kernels itself: every one runs on every host (``tiles.gemm`` is the
    host's pick, which ``_fast_matmul`` reaches for more rows than the GEMV takes)."""
    def fast(w, x):
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        return dense.gemm_rows(x2, w.raw, w.storage, kernel).reshape(x.shape[:-1] + (w.shape[0],))
    return fast


def _spec_bf16_bits(x):
    from ..io.dtypes import bf16_bits
    return bf16_bits(x)


def _fast_bf16_bits(x):
    out = np.empty(x.shape, dtype=np.uint16)
    bf16_dot.bf16_bits(x, out)
    return out


def _spec_silu_mul(gate, up):
    return L.silu(gate) * up


def _fast_silu_mul(gate, up):
    out = gate.copy()
    attention.silu_mul(out, up)
    return out


def _spec_rows(w, ids):
    return w.rows(ids, np.float32)


def _fast_rows(w, ids):
    return fast_weight(w).rows(ids, np.float32)


def _spec_dequantize(w):
    return w.dequantize(np.float32)


def _fast_dequantize(w):
    return quant.dequantize_rows(w.tensor, slice(0, w.shape[0]))


def _spec_attention(q, k, v, q_index, kv_start, kv_valid, window):
    kv_index = np.arange(kv_start, kv_start + k.shape[1])
    return L.attention(q, k, v, L.attention_mask(q_index, kv_index, kv_valid, window or None))


def _fast_decode_attention(q, k, v, q_index, kv_start, kv_valid, window):
    return attention.decode_attention(q, k, v, q_index, np.int64(kv_start), kv_valid, np.int64(window))


def _fast_flash_attention(q, k, v, q_index, kv_start, kv_valid, window):
    return attention.flash_attention(q, k, v, q_index, np.int64(kv_start), kv_valid, np.int64(window),
                                     np.int64(attention.FLASH_TILE))


def _blocked_attention(tile):
    """blocked_attention with its products in ``tile`` (a tiles.PANEL_SHAPES shape, or () for BLAS), on any host."""
    def fast(q, k, v, q_index, kv_start, kv_valid, window):
        # query blocks of 4: the twin test's prompts (up to 12 queries) span several blocks and windows
        return attention.blocked_attention(q, k, v, q_index, int(kv_start), kv_valid, int(window), block=4, tile=tile)
    return fast


def _spec_round_q8_0(x):
    return round_q8_0(x)


def _fast_round_q8_0(x):
    q, d, _ = int8_dot.quantize_activations(x, "q8_0")
    return (d[:, :, None] * q.reshape(q.shape[0], -1, 32).astype(np.float32)).reshape(x.shape)


def _spec_round_rows(x, vec_dot_type):
    return round_activations(x, vec_dot_type)


def _fast_round_rows(x, vec_dot_type):
    return rounding.rounded(x, vec_dot_type)  # round_rows (the decode step's) on the rows in parallel


def _spec_rounded_matmul(w, x):
    return round_q8_0(x) @ w.dequantize(np.float32).T


def _fast_rounded_matmul(w, x):
    return int8_dot.gemv_rounded(x, w.arrays["qweight"], w.storage)


def _reference_rounded_matmul(w, x):
    s = w.storage
    xq, xd, xb = int8_dot.quantize_activations(x, irows.KINDS[s])
    q = np.ascontiguousarray(w.arrays["qweight"])
    return np.array([[irows.REFERENCE[s](q, o, xq, r, xd, xb) for o in range(q.shape[0])] for r in range(x.shape[0])],
                    np.float32)


def _spec_rounded_matmul_bf16(w, x):
    return round_activations(x, "bf16") @ w.dequantize(np.float32).T


def _fast_rounded_matmul_bf16(w, x):
    return fast_weight(LlamaCppActivations(w)).matmul(x)


def _broadcast_rounded_matmul_bf16(w, x):
    """bf16_dot's broadcast tiles at any row count (``matmul`` takes them from PANEL_MIN_ROWS rows)."""
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    return bf16_dot.matmul(x2, w.raw, broadcast=True).reshape(x.shape[:-1] + (w.shape[0],))


def _spec_round_q8_k(x):
    return round_q8_k(x)


def _fast_round_q8_k(x):
    q, d, _ = int8_dot.quantize_activations(x, "q8_k")
    nb = x.shape[1] // 256
    return (d[:, :nb, None] * q.reshape(q.shape[0], nb, 256).astype(np.float32)).reshape(x.shape)


def _spec_rounded_matmul_q8_k(w, x):  # (q4_k, q6_k, iq4_xs: their vec_dot_type is Q8_K)
    return round_q8_k(x) @ w.dequantize(np.float32).T


def _fast_rounded_matmul_iq4(w, x):
    return iquant.gemv_rounded(x, w.arrays["qweight"], w.storage)


def _spec_permute(q, perm):
    return pack_nibbles(unpack_nibbles(q)[:, perm])


def _fast_permute(q, perm):
    out = np.empty_like(q)
    hf.permute_codes(q, perm, out)
    return out


def _spec_decode_step(params, dims, x, cos, sin, kv_valid, cache):
    """One token per sequence through the spec: every layer's decoder_layer, the final norm, the head."""
    past = cache.get_seq_length()
    state = ForwardState(cos[:, None], sin[:, None], np.arange(past, past + 1), kv_valid)
    h = x[:, None]                                                    # (B, 1, D)
    for p, layer_cache in zip(params.layers, cache.layers):
        h = L.decoder_layer(h, p, dims, state, layer_cache.update)
    return L.lm_head(L.layer_norm(h[:, 0], params.norm, dims.eps), params.lm_head, dims.logit_scale)


def _fast_decode_step(params, dims, x, cos, sin, kv_valid, cache):
    engine = decode.DecodeEngine.build(params, dims)
    assert engine is not None, "every matrix of these params has a decode kernel"
    return engine.logits(x, cos, sin, kv_valid, cache)


# storage: (the matmul's kernels, the row gather's)
DENSE_KERNELS = {"BF16": ((dense.gemv_bf16, tiles.gemm), (dense.widen_bf16,)),
                 "F16": ((dense.gemv_f16, tiles.gemm), (dense.widen_f16,)),
                 "F32": ((dense.gemv_f32, tiles.gemm), ())}  # (tiles.gemm: the host's pick; each kernel below)
QUANT_KERNELS = {
    "int8": (quant.gemv_int8, quant.dequant_int8), "int4": (quant.gemv_int4, quant.dequant_int4),
    "int4-asym": (quant.gemv_int4, quant.dequant_int4_asym), "nf4": (quant.gemv_nf4, quant.dequant_nf4),
    "fp4": (quant.gemv_nf4, quant.dequant_nf4), "bnb-int8": (quant.gemv_int8, hf.dequant_bnb_int8),
    "q8_0": (quant.gemv_q8_0, quant.dequant_q8_0), "q4_0": (quant.gemv_q4_0, quant.dequant_q4_0),
    "q4_1": (quant.gemv_q4_1, quant.dequant_q4_1),
}
# schemes whose values are not dyadic (code books, LLM.int8's 1/127): their matmuls are compared within
# float32 summation error
NON_DYADIC = ("nf4", "fp4", "bnb-int8")


def _twins() -> tuple[Twin, ...]:
    from . import kquant
    twins = []
    for storage, (kernels, row_kernels) in DENSE_KERNELS.items():
        twins.append(Twin(f"matmul/{storage}", "matmul", storage, _spec_matmul, _fast_matmul, kernels))
        twins.append(Twin(f"rows/{storage}", "rows", storage, _spec_rows, _fast_rows, row_kernels))
        broadcast = tuple((f"broadcast-{r}x{lanes}", functools.partial(tiles.gemm_broadcast, shape=(r, lanes, v)),
                           (tiles.pack_x, tiles.gemm_panels)) for r, lanes, v in tiles.PANEL_SHAPES)
        for name, gemm, kernels in (("4x4", tiles.gemm_4x4, (tiles.gemm_4x4,)),
                                    ("4x3", tiles.gemm_4x3, (tiles.gemm_4x3,))) + broadcast:
            twins.append(Twin(f"gemm-{name}/{storage}", "matmul", storage, _spec_matmul, _gemm_variant(gemm), kernels))
    kq = {"q4_k": (kquant.gemv_q4_k, kquant.dequant_q4_k), "q6_k": (kquant.gemv_q6_k, kquant.dequant_q6_k),
          "q5_0": (kquant.dequant_q5_0,), "q5_1": (kquant.dequant_q5_1,), "q2_k": (kquant.dequant_q2_k,),
          "q3_k": (kquant.dequant_q3_k,), "q5_k": (kquant.dequant_q5_k,)}
    # iq4_nl / iq4_xs: exact-mode GEMVs where the host has AVX2 (else dequantized tiles), dequantizers everywhere
    iq = {"iq4_nl": (iquant.dequant_iq4_nl,), "iq4_xs": (iquant.dequant_iq4_xs,)}
    if iquant.AVAILABLE:
        iq = {"iq4_nl": (iquant.gemv_iq4, iquant.dequant_iq4_nl),
              "iq4_xs": (iquant.gemv_iq4, iquant.dequant_iq4_xs)}
    for scheme, kernels in {**QUANT_KERNELS, **kq, **iq}.items():
        dequant = kernels[-1]
        twins.append(Twin(f"matmul/{scheme}", "matmul", scheme, _spec_matmul, _fast_matmul, kernels,
                          "summation" if scheme in NON_DYADIC else "exact"))
        twins.append(Twin(f"dequantize/{scheme}", "dequantize", scheme, _spec_dequantize, _fast_dequantize,
                          (dequant,)))
        twins.append(Twin(f"rows/{scheme}", "rows", scheme, _spec_rows, _fast_rows, (dequant,)))
    for kind, block in enumerate(decode.BLOCKS[:decode.Q8_0_Q8]):  # (the integer kinds: decode-rounded below)
        twins.append(Twin(f"decode/{decode.KIND_NAMES[kind]}", "decode", decode.KIND_NAMES[kind], _spec_decode_step,
                          _fast_decode_step, (decode.decode_layer, decode.decode_head, block), "softmax"))
    twins += [
        Twin("attention/decode", "attention", "float32", _spec_attention, _fast_decode_attention,
             (attention.decode_attention,), "softmax"),
        Twin("attention/flash", "attention", "float32", _spec_attention, _fast_flash_attention,
             (attention.flash_attention,), "softmax"),
        Twin("attention/blocked", "attention", "float32", _spec_attention, _blocked_attention(()),
             (attention.masked_softmax_rows,), "softmax"),
        *(Twin(f"attention/blocked-{r}x{lanes}", "attention", "float32", _spec_attention,
               _blocked_attention((r, lanes, vl)), (attention.masked_softmax_rows, tiles.pack_rows, tiles.panel_matmul),
               "softmax") for r, lanes, vl in tiles.PANEL_SHAPES),
        Twin("activation/silu", "activation", "float32", _spec_silu_mul, _fast_silu_mul, (attention.silu_mul,),
             "softmax"),
        # (bf16_dot's activation rounding runs on every host; its GEMM only with AVX512-BF16, below)
        Twin("round/bf16-bits", "round", "bf16", _spec_bf16_bits, _fast_bf16_bits, (bf16_dot.bf16_bits,)),
        Twin("round/q8_0", "round", "q8_0", _spec_round_q8_0, _fast_round_q8_0, (rounding.quantize_rows,)),
        Twin("round/q8_k", "round", "q8_k", _spec_round_q8_k, _fast_round_q8_k, (rounding.quantize_rows,)),
        Twin("permute/int4", "permute", "int4", _spec_permute, _fast_permute, (hf.permute_codes,)),
    ]
    # activations="llama.cpp": the decode step rounds its matmul inputs (kernels.rounding), then runs the
    # same block kernels; its twin is the spec step over LlamaCppActivations weights
    twins += [Twin(f"round-rows/{v}", "round-rows", v, _spec_round_rows, _fast_round_rows,
                   (rounding.round_rows, rounding.round_rows_parallel))
              for v in ("f16", "bf16", "q8_0", "q8_k")]
    for kind in decode.KIND_NAMES[:decode.Q8_0_Q8]:
        if VEC_DOT_TYPE.get(kind):  # on AVX2 hosts q8_0, q4_0, q4_k, q6_k run their integer rows here
            integer = decode.INTEGER_KINDS.get(kind) if irows.AVAILABLE else None
            kernels = (decode.decode_layer, decode.decode_head, rounding.round_rows, rounding.quantize_rows)
            twins.append(Twin(f"decode-rounded/{kind}", "decode-rounded", kind, _spec_decode_step,
                              _fast_decode_step, kernels + ((decode.block_codes, irows.dot) if integer else ()),
                              "softmax"))
    if int8_dot.AVAILABLE:  # AVX2 hosts: integer dot products on rounded activations
        twins += [Twin(f"rounded-matmul/{s}", "rounded-matmul", s,
                       _spec_rounded_matmul if irows.KINDS[s] == "q8_0" else _spec_rounded_matmul_q8_k,
                       _fast_rounded_matmul, (int8_dot.matmul_codes, irows.dot, irows.dot4)
                       + ((int8_dot.matmul_tiles, int8_dot.repack_tile, irows.tile4) if irows.TILES else ()),
                       "summation")
                  for s in int8_dot.SCHEMES]
        twins += [Twin("rounded-matmul/iq4_nl", "rounded-matmul", "iq4_nl", _spec_rounded_matmul,
                       _fast_rounded_matmul_iq4, (iquant.gemv_iq4_q8,), "summation"),
                  Twin("rounded-matmul/iq4_xs", "rounded-matmul", "iq4_xs", _spec_rounded_matmul_q8_k,
                       _fast_rounded_matmul_iq4, (iquant.gemv_iq4_q8,), "summation")]
    if bf16_dot.AVAILABLE:  # AVX512-BF16 hosts: bf16 weights times bf16-rounded activations (vdpbf16ps)
        twins.append(Twin("rounded-matmul/BF16", "rounded-matmul", "BF16", _spec_rounded_matmul_bf16,
                          _fast_rounded_matmul_bf16, (bf16_dot.bf16_bits, bf16_dot.gemm), "summation"))
        twins.append(Twin("rounded-matmul/BF16-broadcast", "rounded-matmul", "BF16", _spec_rounded_matmul_bf16,
                          _broadcast_rounded_matmul_bf16, (bf16_dot.bf16_bits, bf16_dot.gemm_panels), "summation"))
    # the integer rows' plain loops (their readable form) against the same spec
    twins += [Twin(f"rounded-reference/{s}", "rounded-matmul", s,
                   _spec_rounded_matmul if irows.KINDS[s] == "q8_0" else _spec_rounded_matmul_q8_k,
                   _reference_rounded_matmul, (ref,) + ((irows.scale_min_k4,) if s == "q4_k" else ()), "summation")
              for s, ref in irows.REFERENCE.items()]
    missing = {s for s in SCHEMES if not any(t.case == s for t in twins)}
    assert not missing, f"schemes without kernel twins: {missing}"  # (a table edit forgot one)
    return tuple(twins)


TWINS: tuple[Twin, ...] = _twins()
