"""IQ4_NL and IQ4_XS (llama.cpp's non-linear 4-bit GGUF types): the dequantizers against hand derivations,
gguf-py (recorded and live) and llama.cpp's own blocks; tiny IQ4 models quantized by llama.cpp loaded end to
end on both backends and both activation modes, against llama.cpp's logits. Fixtures: tests/data/iq4, made by
tools/make_iq4_fixtures.py (llama-cpp-python 0.3.36, gguf 0.19.0; versions and seed in provenance.json).
Kernel-vs-spec comparisons over hypothesis-drawn shapes are the registry's (tests/test_kernel_twins.py).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import pycohere
from conftest import DATA
from pycohere.errors import QuantizationError
from pycohere.kernels import iquant, quant
from pycohere.kernels.dispatch import fast_weight
from pycohere.quant import QuantizedTensor, QuantizedWeight, get_scheme, quantize
from pycohere.quant.activations import LlamaCppActivations, round_q8_0, round_q8_k

HERE = DATA / "iq4"
PROV = json.loads((HERE / "provenance.json").read_text())
KINDS = ("iq4_nl", "iq4_xs")
# ggml-common.h kvalues_iq4nl, as printed there
KVALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def tensor(scheme, raw):
    cls = get_scheme(scheme)
    shape = [raw.shape[0], raw.shape[1] // cls.bytes_per_block * cls.block_size]
    return QuantizedTensor.from_arrays({"qweight": raw}, {"scheme": scheme, "group_size": cls.block_size,
                                                          "shape": shape})


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


# --- hand derivations --------------------------------------------------------------------------------
def test_iq4_nl_block_by_hand():
    # d = 0.5 (f16 0x3800); byte j = code j (low nibble) | code 15 - j (high): element j = 0.5 * K[j],
    # element 16 + j = 0.5 * K[15 - j] (dequantize_row_iq4_nl).
    raw = np.zeros((1, 18), np.uint8)
    raw[0, 0:2] = [0x00, 0x38]
    raw[0, 2:] = [j | ((15 - j) << 4) for j in range(16)]
    want = [0.5 * KVALUES[j] for j in range(16)] + [0.5 * KVALUES[15 - j] for j in range(16)]
    assert tensor("iq4_nl", raw).dequantize()[0].tolist() == want


def test_iq4_xs_block_by_hand():
    # d = 0.25 (f16 0x3400); sub-block ib gets ls = 32 + ib - 4 (so ls - 32 = ib - 4): low nibble of ls in
    # nibble ib % 2 of scales_l[ib // 2], its top two bits (2 for ls >= 32) at bits 2 ib of scales_h.
    # Every code byte 0x5A: element 32 ib + j = 0.25 (ib - 4) K[10], element 32 ib + 16 + j = ... K[5].
    raw = np.zeros((1, 136), np.uint8)
    raw[0, 0:2] = [0x00, 0x34]
    ls = [32 + ib - 4 for ib in range(8)]
    scales_h = sum((l >> 4) << (2 * ib) for ib, l in enumerate(ls))
    raw[0, 2:4] = [scales_h & 0xFF, scales_h >> 8]
    raw[0, 4:8] = [(ls[2 * i] & 15) | ((ls[2 * i + 1] & 15) << 4) for i in range(4)]
    raw[0, 8:] = 0x5A
    want = []
    for ib in range(8):
        want += [0.25 * (ib - 4) * KVALUES[10]] * 16 + [0.25 * (ib - 4) * KVALUES[5]] * 16
    assert tensor("iq4_xs", raw).dequantize()[0].tolist() == want
    assert get_scheme("iq4_xs").scales(raw).tolist() == [[ib - 4 for ib in range(8)]]


def test_table_is_ggml_kvalues():
    from pycohere.quant.schemes import KVALUES_IQ4NL
    assert KVALUES_IQ4NL.tolist() == KVALUES and KVALUES_IQ4NL.dtype == np.int8


# --- gguf-py: recorded blocks, and whole files live ----------------------------------------------------
def test_recorded_blocks_match_gguf_py():
    # random blocks (finite f16 d of random magnitude) and the first rows of every IQ4 tensor llama.cpp's
    # quantizer wrote into the two committed files, with gguf-py's dequantization (tools/make_iq4_fixtures.py)
    f = np.load(HERE / "blocks.npz")
    assert hashlib.sha256((HERE / "blocks.npz").read_bytes()).hexdigest() == PROV["blocks"]["sha256"]
    keys = sorted(k[:-len("/bytes")] for k in f.files if k.endswith("/bytes"))
    assert {k.split("/")[-1] for k in keys} == set(KINDS) and any(k.startswith("random/") for k in keys)
    assert sum(k.startswith("iq4_xs/") for k in keys) == 8  # every matrix of the IQ4_XS file (embedding too)
    for key in keys:
        t = tensor(key.split("/")[-1], f[key + "/bytes"])
        want = f[key + "/deq"]
        np.testing.assert_array_equal(bits(t.dequantize()), bits(want), err_msg=key)
        np.testing.assert_array_equal(bits(quant.dequantize_rows(t, slice(0, t.shape[0]))), bits(want), err_msg=key)


@pytest.mark.oracle
@pytest.mark.parametrize("kind", KINDS)
def test_every_tensor_of_the_llama_quantized_files_matches_live_gguf_py(kind):
    gguf = pytest.importorskip("gguf", reason="gguf (PyPI) is the optional oracle for ggml blocks")
    reader = gguf.GGUFReader(str(HERE / f"tiny.{kind}.gguf"))
    seen = set()
    for t in reader.tensors:
        if t.tensor_type.name not in ("IQ4_NL", "IQ4_XS"):
            continue
        raw = np.asarray(t.data)
        want = gguf.quants.dequantize(raw, t.tensor_type).astype(np.float32)
        got = tensor(t.tensor_type.name.lower(), raw)
        np.testing.assert_array_equal(bits(got.dequantize()), bits(want), err_msg=t.name)
        np.testing.assert_array_equal(bits(quant.dequantize_rows(got, slice(0, raw.shape[0]))), bits(want))
        seen.add(t.tensor_type.name)
    # the IQ4_XS file holds ffn_down (288 columns, not whole 256-blocks) as IQ4_NL: both types there
    assert seen == ({"IQ4_NL"} if kind == "iq4_nl" else {"IQ4_NL", "IQ4_XS"})


def test_committed_files_are_the_recorded_ones():
    for kind in KINDS:
        entry = PROV["files"][kind]
        assert hashlib.sha256((HERE / f"tiny.{kind}.gguf").read_bytes()).hexdigest() == entry["sha256"]
        assert hashlib.sha256((HERE / f"tiny.{kind}.npz").read_bytes()).hexdigest() == entry["logits_sha256"]
    types = PROV["files"]["iq4_xs"]["tensor_types"]
    assert types["blk.0.ffn_down.weight"] == "IQ4_NL" and types["blk.0.ffn_up.weight"] == "IQ4_XS"


def test_quantizing_to_iq4_is_refused_with_what_to_do():
    w = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    for scheme in KINDS:
        with pytest.raises(QuantizationError, match="dequantize-only.*llama-quantize"):
            quantize(w, scheme)


# --- end to end: the tiny models against llama.cpp ---------------------------------------------------
def logits(kind, backend, activations):
    model = pycohere.AutoModelForCausalLM.from_pretrained(HERE / f"tiny.{kind}.gguf", backend=backend,
                                                          activations=activations)
    return model(np.array([PROV["tokens"]])).logits[0]


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kind", KINDS)
def test_model_loads_and_backends_agree(kind):
    specs = {}
    for activations in ("float32", "llama.cpp"):
        spec, fast = logits(kind, "numpy", activations), logits(kind, "numba", activations)
        assert spec.shape == (len(PROV["tokens"]), 485) and np.isfinite(spec).all()
        specs[activations] = spec
        if activations == "float32":
            assert rel(fast, spec) < 1e-5, (activations, rel(fast, spec))
        else:  # the integer kernels sum in another order than the spec's float matmul, and a value on a Q8
            # rounding boundary may round the other way in a later layer (measured 6.5e-5 once): a bound at 5%
            # of the gap between the two modes (~2.4e-3), not float32 noise
            gap = rel(specs["float32"], spec)
            assert rel(fast, spec) < 0.05 * gap, (activations, rel(fast, spec), gap)


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_decode_step_equals_the_spec(kind):
    # exact mode: generation on the numba backend runs kernels.decode's fused step (IQ4 blocks of iquant)
    path = HERE / f"tiny.{kind}.gguf"
    fast = pycohere.AutoModelForCausalLM.from_pretrained(path, backend="numba")
    spec = pycohere.AutoModelForCausalLM.from_pretrained(path, backend="numpy")
    assert fast.model._decoder is not None
    ids = np.array([PROV["tokens"][:6], PROV["tokens"][6:12]])
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=[], return_dict_in_generate=True, output_logits=True)
    a, b = fast.generate(ids, **kw), spec.generate(ids, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    for la, lb in zip(a.logits, b.logits):
        assert np.abs(la - lb).max() <= 1e-5 * max(1.0, float(np.abs(lb).max()))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_llama_cpp(kind, backend):
    theirs = np.load(HERE / f"tiny.{kind}.npz")["logits"]
    exact, emulated = logits(kind, backend, "float32"), logits(kind, backend, "llama.cpp")
    # measured at fixture time (provenance.json): float32 activations 2.4e-3 / 3.2e-3 of max |logit|,
    # llama.cpp's rounding 6.5e-5 (iq4_nl: llama.cpp's repacked IQ4_NL GEMM) / 4e-7 (iq4_xs)
    assert rel(emulated, theirs) < 5e-4 < rel(exact, theirs) < 2e-2
    assert (emulated.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_token_by_token_decode_matches_llama_cpp(kind):
    # one token per call: decode-sized matmuls, so the numba backend runs iquant's integer kernels
    theirs = np.load(HERE / f"tiny.{kind}.npz")["logits"]
    model = pycohere.AutoModelForCausalLM.from_pretrained(HERE / f"tiny.{kind}.gguf", backend="numba",
                                                          activations="llama.cpp")
    cache = pycohere.KVCache.for_model(model.config)
    steps = np.stack([model(np.array([[t]]), past_key_values=cache, use_cache=True).logits[0, -1]
                      for t in PROV["tokens"]])
    assert rel(steps, theirs) < 5e-4
    assert (steps.argmax(-1) == theirs.argmax(-1)).all()


# (The recorded llama.cpp logits come from a live llama.cpp through tools/make_iq4_fixtures.py: rerun it and
# `git diff tests/data/iq4` to check them again; two runs gave identical bytes. llama-cpp-python is built from
# source, ~10 min, so CI uses the recording only.)


# --- the integer kernels' dispatch and edge cases --------------------------------------------------------
def llama_weight(kind, name="blk.0.ffn_up.weight"):
    from pycohere.io.gguf import GGUFReader
    r = GGUFReader(HERE / f"tiny.{kind}.gguf")
    info = r.tensors[name]
    raw = np.asarray(r.raw_bytes(name).reshape(info.numpy_shape[0], -1))
    scheme = info.type.name.lower()
    return QuantizedWeight({"qweight": raw}, {"scheme": scheme, "group_size": info.type.block_size,
                                              "shape": list(info.numpy_shape)})


@pytest.mark.skipif(not iquant.AVAILABLE, reason="needs an x86-64 CPU with AVX2 and the JIT on")
@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_activations_use_the_integer_kernel_for_decode_and_the_spec_beyond(kind):
    W = llama_weight(kind)
    rounding = rounding_of(W)
    A = fast_weight(LlamaCppActivations(W, "w"))
    rng = np.random.default_rng(2)
    decode = rng.standard_normal((2, 1, W.shape[1])).astype(np.float32)
    np.testing.assert_array_equal(A.matmul(decode), iquant.gemv_rounded(decode.reshape(2, -1), W.arrays["qweight"],
                                                                         W.storage).reshape(2, 1, -1))
    want = rounding(decode) @ W.dequantize().T
    assert rel(A.matmul(decode), want) < 1e-5
    prefill = rng.standard_normal((12, W.shape[1])).astype(np.float32)  # more rows than a GEMV: spec path
    np.testing.assert_array_equal(A.matmul(prefill), fast_weight(W).matmul(rounding(prefill)))
    assert iquant.gemv_rounded(prefill, W.arrays["qweight"], W.storage) is None


@pytest.mark.skipif(not iquant.AVAILABLE, reason="needs an x86-64 CPU with AVX2 and the JIT on")
@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_activations_poison_their_row(kind):
    W = llama_weight(kind)
    x = np.ones((3, W.shape[1]), np.float32)
    x[0, 40], x[2, 3] = np.nan, np.inf
    y = iquant.gemv_rounded(x, W.arrays["qweight"], W.storage)  # the rounded block's scale is NaN
    assert np.isnan(y[0]).all() and np.isnan(y[2]).all() and np.isfinite(y[1]).all()
    with np.errstate(invalid="ignore", over="ignore"):
        assert np.isnan(rounding_of(W)(x[[0, 2]]) @ W.dequantize().T).all()  # the spec agrees
    y = fast_weight(W).matmul(x)  # float activations: NaN stays NaN, inf times a weight is +-inf
    assert np.isnan(y[0]).all() and not np.isfinite(y[2]).any() and np.isfinite(y[1]).all()


def rounding_of(W):
    return round_q8_0 if W.storage == "iq4_nl" else round_q8_k
