"""llama.cpp's activation rounding (pycohere.quant.activations), derived by hand from ggml's C code."""
from __future__ import annotations

import numpy as np
import pytest

import pycohere
from pycohere.errors import InputError
from pycohere.quant import QuantizedWeight, quantize
from pycohere.quant.activations import LlamaCppActivations, round_activations, round_q8_0, round_q8_k
from pycohere.spec.weights import DenseWeight


def test_q8_0_block_by_hand():
    # amax 127 -> id = 127/127 = 1, d = fp16(1) = 1: q = rint(x), ties to even (_mm256_round_ps)
    x = np.zeros(32, np.float32)
    x[:6] = [127, 2.5, 3.5, -2.5, 0.49, -127]
    assert round_q8_0(x)[:6].tolist() == [127, 2, 4, -2, 0, -127]
    # amax 1: id = 127, d = fp16(1/127) = 0.007873535...; x = 0.5 -> rint(63.5) = 64 -> 64 * d
    y = np.zeros(32, np.float32)
    y[:2] = [1.0, 0.5]
    d = np.float32(np.float16(np.float32(1) / np.float32(127)))
    assert round_q8_0(y)[:2].tolist() == [127 * d, 64 * d]
    assert not round_q8_0(np.zeros(64, np.float32)).any()  # all-zero block: id = 0, no NaN


def test_q8_k_block_by_hand():
    # signed max = the FIRST element of largest magnitude (-2 before +2): iscale = -127 / -2 = 63.5
    x = np.zeros(256, np.float32)
    x[:4] = [-2.0, 2.0, 1.0, 1.0 / 127]
    iscale = np.float32(-127) / np.float32(-2)
    d = np.float32(1) / iscale
    q = [-127, 127, np.rint(np.float32(63.5)), np.rint(iscale * np.float32(1 / 127))]  # 64 (even), 0
    assert round_q8_k(x)[:4].tolist() == [np.float32(v) * d for v in q]
    assert round_q8_k(x)[3] == 0


def test_float_types_round_to_half_precision():
    x = np.array([[1 + 2**-12, 1 + 2**-9]], np.float32)
    assert round_activations(x, None) is x
    assert round_activations(x, "f16").tolist() == [[1.0, 1 + 2**-9]]     # f16: 10 mantissa bits
    assert round_activations(x, "bf16").tolist() == [[1.0, 1.0]]          # bf16: 7 mantissa bits


def test_wrapper_rounds_only_matmul_inputs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    W = QuantizedWeight.from_tensor(quantize(w, "q8_0"))
    A = LlamaCppActivations(W, "w")
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(A.matmul(x), W.matmul(round_q8_0(x)))
    np.testing.assert_array_equal(A.rows(np.array([1, 2])), W.rows(np.array([1, 2])))  # get_rows: exact
    assert A.shape == W.shape and A.storage == "q8_0" and A.nbytes == W.nbytes


def test_formats_without_a_llama_cpp_counterpart_are_refused():
    W = QuantizedWeight.from_tensor(quantize(np.ones((4, 64), np.float32), "int8"))
    with pytest.raises(InputError, match="int8"):
        LlamaCppActivations(W, "model.layers.0.mlp.up_proj.weight")
    assert LlamaCppActivations(DenseWeight(np.ones((4, 48), np.float32), "F32"), "w").vec_dot_type is None


def test_from_pretrained_validates_the_option():
    with pytest.raises(InputError, match="activations"):
        pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, activations="int8")
    bf16 = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, activations="llama.cpp")
    assert isinstance(bf16.params["layers"][0]["q_proj"], LlamaCppActivations)
    assert bf16.params["layers"][0]["q_proj"].vec_dot_type == "bf16"


def test_every_gguf_block_type_has_its_llama_cpp_vec_dot_type():
    # ggml-cpu.c type_traits_cpu: 32-value blocks dot with Q8_0 (Q8_1 for the *_1 types, same rounding),
    # k-quants and the 256-value IQ4_XS with Q8_K.
    from pycohere.checkpoints.gguf import GGML_SCHEMES
    from pycohere.quant.activations import VEC_DOT_TYPE
    from pycohere.quant import get_scheme
    for ggml, scheme in GGML_SCHEMES.items():
        want = "q8_k" if ggml.endswith("_K") or ggml == "IQ4_XS" else "q8_0"
        assert VEC_DOT_TYPE[scheme] == want and get_scheme(scheme).block_size == (256 if want == "q8_k" else 32), ggml
