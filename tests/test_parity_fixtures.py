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
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(out - ref)[keep].max() <= 1e-4 * scale


def _split_half_rope(x, cos, sin):
    """Llama/NeoX RoPE (rotate halves): the classic porting mistake."""
    half = x.shape[-1] // 2
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


@pytest.mark.parametrize("mutation", ["split_half_rope", "no_logit_scale", "rmsnorm"])
def test_fixtures_catch_known_porting_mistakes(mutation, monkeypatch):
    """The fixtures have teeth: each mistake other ports made moves the logits far past tolerance."""
    if mutation == "split_half_rope":
        monkeypatch.setattr(L, "apply_rope", _split_half_rope)
    elif mutation == "no_logit_scale":
        monkeypatch.setattr(L, "lm_head", lambda h, w, s: L.linear(h, w))
    else:
        monkeypatch.setattr(L, "layer_norm", lambda x, w, eps: w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))
    out, ref, keep = _run("qk_norm")
    assert np.abs(out - ref)[keep].max() > 1e-2


@pytest.mark.parametrize("name", CASES)
def test_numba_backend_equals_numpy_spec(name):
    """Issue 5's bar: the fast path within 1e-4 x max(1, max|logit|) of the spec on every case."""
    spec, _, keep = _run(name, "float32", "numpy")
    fast, _, _ = _run(name, "float32", "numba")
    assert np.abs(fast - spec)[keep].max() <= 1e-4 * max(1.0, float(np.abs(spec).max()))
