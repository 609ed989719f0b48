"""Parity with transformers through committed fixtures (no torch needed).

Made by tools/make_parity_fixtures.py (versions and seeds in tests/data/parity/provenance.json).
"""
import json

import numpy as np
import pytest

import pycohere
from pycohere.spec import layers as L

from conftest import DATA

PARITY = DATA / "parity"
CASES = sorted(p.name for p in PARITY.iterdir() if p.is_dir())

# The bar, relative to max(1, max|logit|). Observed on every case (float32 and float64 numpy, numba,
# and numba against numpy): <= 6.2e-7, so 1e-5 leaves a 16x margin; the subtle mistakes below
# (tanh GELU, LayerNorm eps 1e-6, eps outside the square root) move the logits by 3.5e-4..6.9e-4, so
# they fail it by 35-69x (at the old 1e-4 they failed by only 2.5-3.5x).
TOL = 1e-5


def _rel_err(out, ref, keep):
    """max |out - ref| over real query rows, relative to max(1, max|ref|)."""
    return float(np.abs(out - ref)[keep].max()) / max(1.0, float(np.abs(ref).max()))


def _run(name, dtype="float32", backend="numpy"):
    exp = np.load(PARITY / name / "expected.npz")
    mask = exp["attention_mask"]
    model = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / name, dtype=dtype, backend=backend)
    out = model(exp["input_ids"], attention_mask=mask if bool(exp["use_mask"]) else None).logits
    return out, exp["logits"], mask.astype(bool)


def test_fixtures_present_and_recorded():
    prov = json.loads((PARITY / "provenance.json").read_text())
    assert set(prov["cases"]) == set(CASES) and len(CASES) >= 15
    assert prov["versions"]["transformers"] and prov["seed"] == 0


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype, backend", [("float32", "numpy"), ("float64", "numpy"), ("float32", "numba")])
def test_logits_match_transformers_fixture(name, dtype, backend):
    out, ref, keep = _run(name, dtype, backend)
    assert _rel_err(out, ref, keep) <= TOL


def _split_half_rope(x, cos, sin):
    """Llama/NeoX RoPE (rotate halves): the classic porting mistake."""
    half = x.shape[-1] // 2
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def _tanh_gelu(x):
    """GELU's tanh approximation (transformers "gelu_pytorch_tanh"), not Cohere's exact erf GELU."""
    t = x.dtype.type
    return t(0.5) * x * (t(1) + np.tanh(t(np.sqrt(2 / np.pi)) * (x + t(0.044715) * x ** 3)))


def _layer_norm_eps_1e6(x, w, eps):
    """LayerNorm with eps 1e-6 (a hard-coded default) instead of the config's layer_norm_eps 1e-5."""
    return _LAYER_NORM(x, w, 1e-6)


def _layer_norm_eps_outside_sqrt(x, w, eps):
    """(x - mean) / (sqrt(var) + eps): eps added outside the square root."""
    centred = x - x.mean(-1, keepdims=True)
    var = (centred * centred).mean(-1, keepdims=True)
    return w * (centred / (np.sqrt(var) + x.dtype.type(eps)))


def _rms_norm(x, w, eps):
    """Llama's RMSNorm instead of Cohere's mean-centred LayerNorm."""
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


_LAYER_NORM = L.layer_norm

# mutation -> (what is replaced, the case it is checked on: one where the mistake has an effect; GELU
# only runs in the "gelu" case, the eps mistakes matter most where the variance is smallest)
MUTATIONS = {
    "split_half_rope": (("apply_rope", _split_half_rope), "qk_norm"),
    "no_logit_scale": (("lm_head", lambda h, w, s: L.linear(h, w)), "qk_norm"),
    "rmsnorm": (("layer_norm", _rms_norm), "qk_norm"),
    "tanh_gelu": (("gelu", _tanh_gelu), "gelu"),
    "layer_norm_eps_1e-6": (("layer_norm", _layer_norm_eps_1e6), "cohere2_pattern4x"),
    "eps_outside_sqrt": (("layer_norm", _layer_norm_eps_outside_sqrt), "cohere2_pattern4x"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_fixtures_catch_known_porting_mistakes(mutation, monkeypatch):
    """The fixtures have teeth: each mistake other ports made, the subtle ones included, fails the
    default tolerance TOL that test_logits_match_transformers_fixture applies."""
    (attr, fake), case = MUTATIONS[mutation]
    if attr == "gelu":
        monkeypatch.setitem(L.ACTIVATIONS, "gelu", fake)
    else:
        monkeypatch.setattr(L, attr, fake)
    out, ref, keep = _run(case)
    assert _rel_err(out, ref, keep) > 10 * TOL  # caught with a margin, not by a hair
    monkeypatch.undo()
    out, ref, keep = _run(case)
    assert _rel_err(out, ref, keep) <= TOL  # and the same case passes unmutated


@pytest.mark.parametrize("name", CASES)
def test_numba_backend_equals_numpy_spec(name):
    """The fast path within 1e-5 x max(1, max|logit|) of the spec on every case (observed <= 5.3e-7)."""
    spec, _, keep = _run(name, "float32", "numpy")
    fast, _, _ = _run(name, "float32", "numba")
    assert _rel_err(fast, spec, keep) <= TOL
