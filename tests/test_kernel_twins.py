"""Every (spec, kernel) pair of pycohere.kernels.registry, compared on hypothesis-drawn shapes; and no Numba
function of the package without a twin. Also run as plain Python (NUMBA_DISABLE_JIT=1).

Matmul inputs are dyadic values of bounded size (small integers times a power of two): their float32
products and sums are exact in any order, so a kernel must equal its spec exactly, whatever its
summation order; a wrong index, nibble or scale cannot hide in rounding error.
"""
import importlib
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pycohere.kernels import int8_dot
from pycohere.kernels.registry import TWINS
from pycohere.quant import QuantizedWeight, get_scheme
from pycohere.quant.activations import LlamaCppActivations
from pycohere.spec.weights import DenseWeight

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
SETTINGS = settings(max_examples=2 if NO_JIT else 10, deadline=None)
EPS = float(np.finfo(np.float32).eps)
# f16 fields (byte offsets in a block) of the ggml block types: the scales d and mins / dmin
F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q4_k": (0, 2),
              "q6_k": (208,), "q2_k": (80, 82), "q3_k": (108,), "q5_k": (0, 2), "iq4_nl": (0,), "iq4_xs": (0,)}


def dyadic(rng, shape, bound, exponent):
    """Integers in [-bound, bound] times 2**-exponent, as float32."""
    return (rng.integers(-bound, bound + 1, size=shape) * 2.0 ** -exponent).astype(np.float32)


def powers_of_two(rng, shape, exponent):
    """±2**-exponent or ±2**(1 - exponent)."""
    return (rng.choice([-2.0, -1.0, 1.0, 2.0], size=shape) * 2.0 ** -exponent).astype(np.float32)


def group_of(case: str) -> int:
    """Values per scale of the weights made for ``case`` (per row: 0)."""
    if case in ("BF16", "F16", "F32"):
        return 32
    cls = get_scheme(case)
    if cls.bytes_per_block is not None:
        return cls.block_size
    return 32 if cls.group_sizes else 0


def make_weight(rng, case: str, out_dim: int, blocks: int, exact: bool):
    """A spec Weight [out_dim, blocks * group] of storage ``case``; with ``exact`` its values are dyadic of
    bounded size, so that x @ W.T is exact in float32 for dyadic x."""
    from pycohere.io.dtypes import bf16_bits
    group = group_of(case) or 32
    in_dim = group * blocks
    if case in ("BF16", "F16", "F32"):
        w = dyadic(rng, (out_dim, in_dim), 64, 6) if exact else rng.standard_normal((out_dim, in_dim)).astype(np.float32)
        raw = bf16_bits(w) if case == "BF16" else w.astype(np.float16 if case == "F16" else np.float32)
        return DenseWeight(raw, case)
    cls = get_scheme(case)
    if cls.bytes_per_block is not None:  # ggml blocks: random bytes, finite power-of-two f16 fields
        raw = rng.integers(0, 256, size=(out_dim, blocks, cls.bytes_per_block), dtype=np.uint8)
        for off in F16_FIELDS[case]:
            raw[:, :, off:off + 2] = powers_of_two(rng, (out_dim, blocks), 6).astype(np.float16) \
                .view(np.uint8).reshape(out_dim, blocks, 2)
        arrays = {"qweight": raw.reshape(out_dim, -1)}
    else:  # pycohere's and bitsandbytes' schemes: random codes, power-of-two (or any positive) scales
        group = group_of(case) or in_dim
        arrays = {}
        for name, (width, dtype) in cls.block_layout(group).items():
            shape = (out_dim, in_dim // group * width)
            if name == "qweight":
                lo, hi = (-127, 128) if dtype == np.int8 else (0, 256)
                arrays[name] = rng.integers(lo, hi, size=shape).astype(dtype)
            elif name == "scales":
                arrays[name] = (np.abs(powers_of_two(rng, shape, 4)) if exact
                                else rng.uniform(0.01, 1, shape).astype(np.float32))
            else:  # mins
                arrays[name] = dyadic(rng, shape, 8, 4)
    return QuantizedWeight(arrays, {"scheme": case, "group_size": group, "shape": [out_dim, in_dim]})


def summation_bound(a, b):
    """Float32 summation error of a @ b.T in any order, with slack."""
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    return 4 * (a.shape[-1] + 8) * EPS * (a @ b.T) + 1e-30


@pytest.mark.parametrize("twin", TWINS, ids=[t.name for t in TWINS])
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 3 if NO_JIT else 12), out_dim=st.integers(1, 3 if NO_JIT else 24),
       blocks=st.integers(1, 2 if NO_JIT else 4))
def test_kernel_equals_its_twin(twin, seed, rows, out_dim, blocks):
    rng = np.random.default_rng(seed)
    if twin.kind in ("matmul", "rows", "dequantize", "rounded-matmul"):
        exact = twin.check == "exact"
        w = make_weight(rng, twin.case, out_dim, blocks if group_of(twin.case) <= 32 else min(blocks, 2), exact)
        if twin.kind == "matmul":
            x = dyadic(rng, (rows, w.shape[1]), 3, 2) if exact else rng.standard_normal((rows, w.shape[1])).astype(np.float32)
            got, want = twin.fast(w, x), twin.spec(w, x)
            assert got.shape == want.shape == (rows, out_dim) and got.dtype == np.float32
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                assert (np.abs(got - want) <= 2 * summation_bound(x, w.dequantize())).all()
        elif twin.kind == "rounded-matmul":
            # up to 12 rows: int8_dot's rows four at a time (the weight unpacked once), then the rest singly
            x = rng.standard_normal((rows if twin.case in int8_dot.SCHEMES else min(rows, 8),
                                     w.shape[1])).astype(np.float32)
            got, want = twin.fast(w, x), twin.spec(w, x)
            from pycohere.quant.activations import VEC_DOT_TYPE, round_activations
            rounded = round_activations(x, VEC_DOT_TYPE[twin.case])  # q8_0 blocks, or q8_k for iq4_xs
            assert (np.abs(got - want) <= 2 * summation_bound(rounded, w.dequantize())).all()
        elif twin.kind == "rows":
            ids = rng.integers(0, out_dim, size=(2, rows))
            np.testing.assert_array_equal(twin.fast(w, ids).view(np.uint32), twin.spec(w, ids).view(np.uint32))
        else:
            np.testing.assert_array_equal(twin.fast(w).view(np.uint32), twin.spec(w).view(np.uint32))
    elif twin.kind == "attention":
        B, T, K, G, Dh = int(rng.integers(1, 3)), rows, int(rng.integers(1, 3)), int(rng.integers(1, 3)), 8
        past = int(rng.integers(0, 9))
        S = past + T
        q = rng.standard_normal((B, T, K * G, Dh)).astype(np.float32)
        k = rng.standard_normal((B, S, K, Dh)).astype(np.float32)
        v = rng.standard_normal((B, S, K, Dh)).astype(np.float32)
        kv_valid = rng.random((B, S)) < 0.8
        window = int(rng.choice([0, 1, 3, 64]))
        q_index = np.arange(past, past + T, dtype=np.int64)
        got = twin.fast(q, k, v, q_index, 0, kv_valid, window)
        want = twin.spec(q, k, v, q_index, 0, kv_valid, window)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    elif twin.kind == "round":
        width = 256 if twin.case == "q8_k" else 32  # values per rounded block
        x = (rng.standard_normal((rows, width * blocks)) * np.exp(rng.uniform(-4, 4))).astype(np.float32)
        # the same codes and scales: d * q equal (the spec's rint may give -0.0 where the int8 code 0 gives +0.0)
        np.testing.assert_array_equal(twin.fast(x), twin.spec(x))
    elif twin.kind == "round-rows":
        x = (rng.standard_normal((rows, 256 * blocks)) * np.exp(rng.uniform(-4, 4))).astype(np.float32)
        x[rng.random(x.shape) < 0.02] = 0.0
        if seed % 5 == 0:  # non-finite values take the spec's path through the same formulas
            x[0, int(rng.integers(x.shape[1]))] = [np.nan, np.inf, -np.inf, 7e4][seed % 4]
        with np.errstate(all="ignore"):
            want = twin.spec(x, twin.case)
            got = twin.fast(x, twin.case)
        np.testing.assert_array_equal(got, want)  # (NaN == NaN here; -0.0 == 0.0)
    elif twin.kind == "activation":
        gate = (rng.standard_normal((rows, out_dim * blocks)) * np.exp(rng.uniform(-3, 4))).astype(np.float32)
        up = rng.standard_normal(gate.shape).astype(np.float32)
        gate.flat[rng.integers(gate.size, size=3)] = [np.nan, np.inf, -np.inf][seed % 3], -100.0, 0.0
        with np.errstate(all="ignore"):
            got, want = twin.fast(gate, up), twin.spec(gate, up)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)
    elif twin.kind == "permute":
        q = rng.integers(0, 256, size=(out_dim, 16 * blocks), dtype=np.uint8)
        perm = rng.permutation(32 * blocks)
        np.testing.assert_array_equal(twin.fast(q, perm), twin.spec(q, perm))
    elif twin.kind in ("decode", "decode-rounded"):
        check_decode_step(twin, rng, B=1 + rows % 3, qk_norm=bool(seed % 2), bias=bool(seed % 3 == 0),
                          window=[None, 2][seed % 2], past=int(out_dim % 6), rounded=twin.kind == "decode-rounded")
    else:  # pragma: no cover - a registry entry this test does not know how to feed
        pytest.fail(f"no inputs for twin kind {twin.kind!r}")


def check_decode_step(twin, rng, B, qk_norm, bias, window, past, rounded=False):
    """The compiled one-token step against the spec: two random layers (GQA, a NoPE one), every matrix in
    the twin's kind, a cache holding ``past`` tokens (and padding), one token per sequence."""
    from pycohere.spec.cache import LayerCache
    from pycohere.spec.params import Dims, LayerParams, ModelParams

    case = {"int8": "int8", "int4": "int4", "int4-asym": "int4-asym", "nf4": "nf4"}.get(twin.case, twin.case)
    group = group_of(case) or 32
    D, F, H, K, Dh = 2 * group, 3 * group if group <= 64 else 2 * group, 4, 2, 16
    if group == 256:
        D, F, H, K, Dh = 256, 512, 4, 2, 64
    dims = Dims(D=D, H=H, K=K, Dh=Dh, F=F, V=24, L=2, eps=1e-5, act="silu", logit_scale=0.5)

    def weight(out, inp):
        w = make_weight(rng, case, out, inp // (group_of(case) or 32), exact=False)
        return LlamaCppActivations(w) if rounded else w

    def vec(*shape):
        return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    layers = []
    for i in range(2):
        layers.append(LayerParams(
            input_layernorm=vec(D), q_proj=weight(H * Dh, D), k_proj=weight(K * Dh, D), v_proj=weight(K * Dh, D),
            o_proj=weight(D, H * Dh), gate_proj=weight(F, D), up_proj=weight(F, D), down_proj=weight(D, F),
            q_bias=vec(H * Dh) if bias else None, k_bias=vec(K * Dh) if bias else None,
            v_bias=vec(K * Dh) if bias else None, o_bias=vec(D) if bias else None,
            q_norm=vec(H, Dh) if qk_norm else None, k_norm=vec(K, Dh) if qk_norm else None,
            sliding_window=window if i == 0 else None, use_rope=i == 0))
    head = weight(24, D)
    params = ModelParams(embed_tokens=head, layers=layers, norm=vec(D), lm_head=head)
    caches = []
    for _ in range(2):  # the same past in both caches
        caches.append([LayerCache(layer.sliding_window) for layer in layers])
    for i in range(2):
        if past:
            k = rng.standard_normal((B, past, K, Dh)).astype(np.float32)
            v = rng.standard_normal((B, past, K, Dh)).astype(np.float32)
            for c in caches:
                c[i].update(k, v)
    kv_valid = np.ones((B, past + 1), dtype=bool)
    if past > 1:
        kv_valid[0, :past // 2] = False  # row 0 left-padded
    x = rng.standard_normal((B, D)).astype(np.float32)
    ang = (past + np.arange(B))[:, None] * (1.0 / 10000 ** (np.arange(0, Dh, 2) / Dh))[None]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    class Cache:  # what the step needs of a KVCache
        def __init__(self, layers):
            self.layers = layers

        def get_seq_length(self):
            return self.layers[0].seen
    want = twin.spec(params, dims, x, cos, sin, kv_valid, Cache(caches[0]))
    got = twin.fast(params, dims, x, cos, sin, kv_valid, Cache(caches[1]))
    # Random block bytes make extreme rows (a Q6_K row of int8 scales times 6-bit codes): float32 sums of
    # them in another order differ by up to ~1e-4 of their largest value. A wrong index, nibble or mask
    # moves the result by O(1) of it; 1e-3 of the largest value separates the two.
    # Rounded activations (activations="llama.cpp"): a float32 difference of 1 ulp before a rounding can move
    # that input by a whole rounding step (1/256 relative for bf16, 1/127 of a block's largest value for
    # Q8_0) in one implementation and not the other; a few such flips reach ~2% of the largest output (seen:
    # 1.8%), still far from the O(1) of a wrong index or nibble. The layers after the first see those flips too.
    bar = 5e-2 if rounded else 1e-3
    np.testing.assert_allclose(got, want, rtol=bar, atol=bar * max(1.0, float(np.abs(want).max())))
    for a, b in zip(caches[0], caches[1]):  # the cache appends agree too
        np.testing.assert_allclose(b.k[:, :b.length], a.k[:, :a.length], rtol=bar,
                                   atol=bar * max(1.0, float(np.abs(a.k).max())))
        np.testing.assert_allclose(b.v[:, :b.length], a.v[:, :a.length], rtol=bar,
                                   atol=bar * max(1.0, float(np.abs(a.v).max())))


@pytest.mark.skipif(NO_JIT, reason="without the JIT there are no Numba functions to enumerate")
def test_every_kernel_has_a_twin():
    from numba.core.registry import CPUDispatcher
    covered = {id(k) for t in TWINS for k in t.kernels}
    orphans = []
    for name in ("attention", "bf16_dot", "dense", "hf", "int8_dot", "iquant", "irows", "jit", "kquant", "quant", "rounding",
                 "tiles"):
        module = importlib.import_module(f"pycohere.kernels.{name}")
        for attr, value in vars(module).items():
            if (isinstance(value, CPUDispatcher) and value.__module__ == module.__name__
                    and value.targetoptions.get("inline") != "always" and id(value) not in covered):
                orphans.append(f"{module.__name__}.{attr}")
    assert not orphans, f"Numba functions without a twin in pycohere.kernels.registry: {orphans}"


@pytest.mark.skipif(NO_JIT, reason="this is the launcher of the NUMBA_DISABLE_JIT run itself")
def test_twins_also_pass_as_plain_python():
    from conftest import assert_passes_without_jit
    assert_passes_without_jit(__file__)
