"""Hooks and run_with_cache (pycohere.spec.taps, model/modeling.py) on every checkpoint format, in float32
and float64: an identity hook on every tap is the forward itself, the lens's last row is the logits, a head
ablation acts where it should; without hooks the forward runs the fast engine, untouched."""
import numpy as np
import pytest

import pycohere
from pycohere.errors import InputError
from pycohere.introspect import analysis as A
from pycohere.model import engine

from conftest import DATA

PARITY, HFQ, GGUF = DATA / "parity", DATA / "hf_quant", DATA / "gguf"
IDS = np.array([[5, 17, 33, 40, 9, 12, 8, 44, 61, 23]])
FORMATS = {  # name -> (path, from_pretrained options)
    "F32": (PARITY / "qk_norm", {}),
    "F16": (PARITY / "f16", {}),
    "BF16 cohere2": (PARITY / "cohere2_pattern4x", {}),
    "sharded": (PARITY / "sharded", {}),
    "GGUF q8_0 (untied)": (GGUF / "command-r-q8_0.gguf", {}),
    "GGUF cohere2 split f16": (GGUF / "cohere2-f16-00001-of-00002.gguf", {}),
    "q4_0 on load": (PARITY / "gqa", {"quantization_config": {"scheme": "q4_0", "group_size": 32}}),
    "int8 on load": (PARITY / "gqa", {"load_in_8bit": True}),
    "bnb nf4": (HFQ / "bnb-nf4-dq-bf16", {}),
    "gptq act-order": (HFQ / "gptq-v1-act-order", {}),
    "awq": (HFQ / "awq-gemm", {}),
    "GGUF llama.cpp activations": (GGUF / "command-r-q8_0.gguf", {"activations": "llama.cpp"}),
}


# activations="llama.cpp" rounds float32 matmul inputs as llama.cpp does: a float32-only mode
RUNS = [(fmt, dtype, backend) for fmt in sorted(FORMATS)
        for dtype, backend in (("float32", "numba"), ("float32", "numpy"), ("float64", "numpy"))
        if not (dtype == "float64" and "activations" in FORMATS[fmt][1])]


@pytest.mark.parametrize("fmt, dtype, backend", RUNS)
def test_hooks_on_every_format(fmt, dtype, backend):
    path, options = FORMATS[fmt]
    model = pycohere.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, backend=backend, **options)
    plain = model(IDS).logits
    out, cache = model.run_with_cache(IDS)
    assert out.logits.dtype == np.dtype(dtype) and cache["layers.0.attn_out"].dtype == np.dtype(dtype)
    # the spec path (taken whenever a tap is set) computes the same model as the plain forward
    np.testing.assert_allclose(out.logits, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
    # an identity hook on every intermediate is the recorded forward, bit for bit
    np.testing.assert_array_equal(model(IDS, hooks={"*": lambda a, name: a}).logits, out.logits)
    np.testing.assert_array_equal(A.logit_lens(model, cache)[-1], out.logits)
    _, abl = model.run_with_cache(IDS, hooks=A.zero_head(0, 1))
    assert not abl["layers.0.attn_context"][:, :, 1].any()
    np.testing.assert_array_equal(abl["layers.0.mlp_out"], cache["layers.0.mlp_out"])
    assert np.abs(abl["logits"] - cache["logits"]).max() > 0


def test_without_hooks_the_fast_engine_runs_and_with_them_the_spec(monkeypatch):
    model = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numba")
    calls = []
    real = engine.decoder_layer
    monkeypatch.setattr(engine, "decoder_layer", lambda *a: calls.append(1) or real(*a))
    fast = model(IDS).logits
    assert len(calls) == model.config.num_hidden_layers
    np.testing.assert_array_equal(model(IDS, hooks=None).logits, fast)
    np.testing.assert_array_equal(model(IDS, hooks={}).logits, fast)
    assert len(calls) == 3 * model.config.num_hidden_layers
    model(IDS, hooks={"layers.0.q": lambda a, name: a})
    model.run_with_cache(IDS)
    assert len(calls) == 3 * model.config.num_hidden_layers  # hooks and caches: the spec layer only
    new = model.generate(IDS, max_new_tokens=3, do_sample=False)
    assert len(calls) > 3 * model.config.num_hidden_layers and new.shape == (1, IDS.shape[1] + 3)


def test_output_attentions_shows_the_hooked_probabilities():
    model = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / "qk_norm", dtype="float64")
    T = IDS.shape[1]
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    out = model(IDS, output_attentions=True, hooks={"layers.1.attn_probs": lambda a, n: np.broadcast_to(uniform, a.shape)})
    np.testing.assert_array_equal(out.attentions[1][0, 0], uniform)
    plain = model(IDS, output_attentions=True)
    np.testing.assert_array_equal(out.attentions[0], plain.attentions[0])


def test_hooks_see_the_kv_cache_and_the_loss():
    model = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / "qk_norm", dtype="float64")
    cache = pycohere.KVCache.for_model(model.config)
    model(IDS[:, :6], past_key_values=cache, use_cache=True, hooks={"layers.0.v": lambda a, n: np.zeros_like(a)})
    assert not cache.layers[0].v[:, :6].any() and cache.layers[1].v[:, :6].any()  # the cache keeps what was used
    step, c = model.run_with_cache(IDS[:, 6:7], past_key_values=cache, use_cache=True)
    assert c["layers.0.attn_probs"].shape == (1, 4, 1, 7)
    # the loss is computed from the hooked logits: all-zero logits give log(V) exactly (uniform prediction)
    V = model.config.vocab_size
    out = model(IDS, labels=IDS, hooks={"logits": lambda a, n: np.zeros_like(a)})
    assert out.loss == pytest.approx(np.log(V), rel=1e-12)
    shifted = model(IDS, labels=IDS, hooks={"logits": lambda a, n: a + 7.0})
    assert shifted.loss == pytest.approx(model(IDS, labels=IDS).loss, rel=1e-12)  # softmax ignores a shift


def test_base_model_hooks_and_names_errors():
    base = pycohere.AutoModel.from_pretrained(PARITY / "qk_norm", dtype="float64")
    h = base(IDS, hooks={"layers.1.output": lambda a, n: np.zeros_like(a)}).last_hidden_state
    # LayerNorm of an all-zero row: (0 - 0) / sqrt(0 + eps) * w = 0
    assert not h.any()
    with pytest.raises(InputError, match="matched no intermediate"):
        base(IDS, hooks={"logits": lambda a, n: a})  # the bare decoder has no head
