"""transformers' bundle (tools/transformers_bundle.py, float64 model, hooks) against pycohere's float64
bundle, tap by tap, on the committed tiny transformers checkpoints — and errors injected on either side
located at the right layer and operation. Needs the oracle extra (torch, transformers)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import transformers_bundle as tb  # noqa: E402  (tools/, on sys.path via conftest)

import pycohere.spec.layers as L  # noqa: E402
from pycohere import golden  # noqa: E402
from pycohere.cli import golden as golden_cli  # noqa: E402

from conftest import DATA  # noqa: E402

PARITY = DATA / "parity"
GENERATE = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _prompts(case):
    """Two unpadded prompts of different lengths from the fixture's inputs (12 or 20 tokens: longer than
    the Cohere2 sliding windows of 5 and 6, so the window masks matter)."""
    ids = np.load(PARITY / case / "expected.npz")["input_ids"]
    return [ids[0].tolist(), ids[1, -9:].tolist()]


def _pycohere_bundle(case, out):
    ids = out.parent / f"{out.name}.ids"
    ids.write_text("\n".join(" ".join(map(str, p)) for p in _prompts(case)))
    assert golden_cli.main(["make", str(PARITY / case), "--ids", str(ids), "-o", str(out),
                        "--generate", str(GENERATE)]) == 0
    return out


def _tf_bundle(case, out):
    return tb.make(PARITY / case, _prompts(case), out, generate=GENERATE, top_k=5, dtype="float64")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Unpatched bundles, made once per (producer, case) for the whole module."""
    cache = {}

    def get(producer, case):
        if (producer, case) not in cache:
            out = tmp_path_factory.mktemp(producer) / case
            cache[producer, case] = (_tf_bundle if producer == "transformers" else _pycohere_bundle)(case, out)
        return cache[producer, case]
    return get


def _diff(capsys, a, b):
    rc = golden_cli.main(["diff", str(a), str(b)])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("case", ["qk_norm", "cohere2_layer_types", "cohere2_pattern4x", "attn_bias", "gelu",
                                  "rope_yarn"])
def test_transformers_and_pycohere_bundles_agree_tap_by_tap(case, made, capsys):
    ours, theirs = made("pycohere", case), made("transformers", case)
    rc, out = _diff(capsys, ours, theirs)
    assert rc == 0, out
    a, b = golden.Bundle.load(ours), golden.Bundle.load(theirs)
    assert a.tap_names() == b.tap_names()  # transformers observes every tap pycohere records
    assert "tolerance profile float32" in out  # transformers' float32 internals, declared in its manifest
    assert json.loads((theirs / "manifest.json").read_text())["precision"] == "float32"
    assert all(r.status == "ok" for r in golden.compare_bundles(a, b).rows)


def _split_half_rope(x, cos, sin):
    half = x.shape[-1] // 2
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


@pytest.mark.parametrize("case, attr, fn, where", [
    ("qk_norm", "apply_rope", _split_half_rope, "layer 0, q_rope"),
    ("cohere2_layer_types", "apply_rope", _split_half_rope, "layer 1, q_rope"),  # layer 0 is NoPE
    ("qk_norm", "lm_head", lambda h, w, s: L.linear(h, w), "logits"),
    ("cohere2_pattern4x", "layer_norm", lambda x, w, eps: w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps),
     "layer 0, input_layernorm"),
])
def test_error_injected_in_pycohere_is_located_against_transformers(case, attr, fn, where, tmp_path, monkeypatch,
                                                                    capsys, made):
    theirs = made("transformers", case)
    monkeypatch.setattr(L, attr, fn)
    ours = _pycohere_bundle(case, tmp_path / "pycohere")
    rc, out = _diff(capsys, theirs, ours)
    assert rc == 1 and f"first divergence: {where} (" in out


def _llama_rotate_half(x):
    """Llama's rotate_half (halves, not pairs): the split-half RoPE bug, on the transformers side."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rms_forward(self, hidden_states):
    h = hidden_states.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return (self.weight.to(torch.float32) * h).to(hidden_states.dtype)


def test_error_injected_in_transformers_is_located(tmp_path, monkeypatch, capsys, made):
    from transformers.models.cohere import modeling_cohere
    ours = made("pycohere", "qk_norm")

    with monkeypatch.context() as m:
        m.setattr(modeling_cohere, "rotate_half", _llama_rotate_half)
        bad = _tf_bundle("qk_norm", tmp_path / "tf_rope")
    rc, out = _diff(capsys, ours, bad)
    assert rc == 1 and "first divergence: layer 0, q_rope (" in out

    with monkeypatch.context() as m:
        m.setattr(modeling_cohere.CohereLayerNorm, "forward", _rms_forward)
        bad = _tf_bundle("qk_norm", tmp_path / "tf_norm")
    rc, out = _diff(capsys, ours, bad)
    assert rc == 1 and "first divergence: layer 0, input_layernorm (" in out

    load = tb.load_model

    def without_logit_scale(folder, dtype="float64"):
        model = load(folder, dtype)
        model.logit_scale = 1.0
        return model

    with monkeypatch.context() as m:
        m.setattr(tb, "load_model", without_logit_scale)
        bad = _tf_bundle("qk_norm", tmp_path / "tf_scale")
    rc, out = _diff(capsys, ours, bad)
    assert rc == 1 and "first divergence: logits (" in out


def test_transformers_bundle_with_an_edited_tap_is_located(tmp_path, capsys, made):
    import shutil

    from safetensors.numpy import load_file, save_file
    ours = made("pycohere", "cohere2_layer_types")
    theirs = shutil.copytree(made("transformers", "cohere2_layer_types"), tmp_path / "edited")
    taps = load_file(str(theirs / "taps.safetensors"))
    taps["prompts.0.layers.2.k_rope"][4, 1, 3] += 1e-2
    save_file(taps, str(theirs / "taps.safetensors"))
    rc, out = _diff(capsys, ours, theirs)
    assert rc == 1 and "first divergence: layer 2, k_rope (RoPE, interleaved pairs): max abs 1.000e-02 at p0 [4, 1, 3]" in out


def test_fresh_oracle_model_with_explicit_head_dim(tmp_path, capsys):
    """A model built now by tools/oracle.py (head_dim 12 != hidden / heads = 8, not a committed fixture)."""
    import oracle
    folder = tmp_path / "head_dim"
    oracle.save_case("head_dim", folder)
    ids, _ = oracle.case_inputs("head_dim")
    prompts = [ids[0].tolist(), ids[1, :5].tolist()]
    (tmp_path / "ids.txt").write_text("\n".join(" ".join(map(str, p)) for p in prompts))
    assert golden_cli.main(["make", str(folder), "--ids", str(tmp_path / "ids.txt"), "-o", str(tmp_path / "a"),
                        "--generate", "2"]) == 0
    tb.make(folder, prompts, tmp_path / "b", generate=2)
    rc, out = _diff(capsys, tmp_path / "a", tmp_path / "b")
    assert rc == 0, out
    assert golden.Bundle.load(tmp_path / "b").taps[0]["layers.1.q_rope"].shape == (12, 4, 12)
