"""Golden bundles (pycohere/golden.py, docs/golden-format.md) without torch: determinism, layout,
self-check, divergence localisation, error paths. Checkpoints: the committed transformers-made tiny
models of tests/data/parity; expected logits there come from transformers (the oracle)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import pycohere.spec.layers as L
from pycohere import errors, golden
from pycohere.cli import golden as golden_cli
from pycohere.model import AutoModelForCausalLM

from conftest import DATA, ROOT

PARITY = DATA / "parity"
QK = PARITY / "qk_norm"            # cohere, H 4 / K 2 heads of Dh 8, D 32, F 64, V 97, 2 layers, qk-norm
C2 = PARITY / "cohere2_layer_types"  # cohere2, 3 layers: full (NoPE), sliding (5), sliding (5)


def _prompts(case):
    ids = np.load(case / "expected.npz")["input_ids"]
    return [ids[0].tolist(), ids[1, :7].tolist()]


def _ids_file(tmp_path, prompts, name="ids.txt"):
    path = tmp_path / name
    path.write_text("# two prompts\n" + "\n".join(" ".join(map(str, p)) for p in prompts) + "\n\n")
    return path


def _make(tmp_path, case=QK, out="a", *extra):
    ids = _ids_file(tmp_path, _prompts(case))
    rc = golden_cli.main(["make", str(case), "--ids", str(ids), "-o", str(tmp_path / out), "--generate", "3", *extra])
    assert rc == 0
    return tmp_path / out


@pytest.fixture(scope="module")
def qk_bundle(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("golden"))


def _diff(capsys, a, b, *extra):
    rc = golden_cli.main(["diff", str(a), str(b), *extra])
    return rc, capsys.readouterr().out


# --- making ------------------------------------------------------------------------------------------
def test_make_twice_gives_byte_identical_files(tmp_path, qk_bundle):
    again = _make(tmp_path, QK, "again")
    for name in golden.BUNDLE_FILES:
        assert (again / name).read_bytes() == (qk_bundle / name).read_bytes(), name
    assert "created" not in json.loads((again / golden.MANIFEST).read_text())


def test_layout_is_readable_by_plain_safetensors(qk_bundle):
    """Tensor names and shapes as docs/golden-format.md states them, read with the safetensors library."""
    taps, inputs, outputs = (load_file(str(qk_bundle / f)) for f in (golden.TAPS, golden.INPUTS, golden.OUTPUTS))
    T0, T1 = 12, 7
    H, K, Dh, D, F, V = 4, 2, 8, 32, 64, 97
    assert inputs["prompts.1.input_ids"].tolist() == _prompts(QK)[1]
    assert inputs["prompts.1.position_ids"].tolist() == list(range(T1))
    assert inputs["prompts.0.attention_mask"].tolist() == [1] * T0 and inputs["prompts.0.input_ids"].dtype == np.int64
    expect = {"embed_tokens": (T0, D), "rope_cos": (T0, Dh // 2), "rope_sin": (T0, Dh // 2),
              "layers.1.input_layernorm": (T0, D), "layers.1.q": (T0, H, Dh), "layers.1.k": (T0, K, Dh),
              "layers.1.v": (T0, K, Dh), "layers.1.q_normed": (T0, H, Dh), "layers.1.k_rope": (T0, K, Dh),
              "layers.1.attn_probs": (H, T0, T0), "layers.1.attn_context": (T0, H, Dh), "layers.1.attn_out": (T0, D),
              "layers.1.mlp_gate": (T0, F), "layers.1.mlp_act": (T0, F), "layers.1.mlp_out": (T0, D),
              "layers.1.output": (T0, D), "norm": (T0, D), "logits": (T0, V)}
    for name, shape in expect.items():
        assert taps["prompts.0." + name].shape == shape and taps["prompts.0." + name].dtype == np.float64, name
    assert taps["prompts.1.layers.0.attn_probs"].shape == (H, T1, T1)
    assert len(taps) == 2 * (3 + 2 * 16 + 2)  # per prompt: 3 globals, 16 taps x 2 layers, norm + logits
    assert outputs["prompts.0.step_logits"].shape == (4, V) and outputs["prompts.0.generated_ids"].shape == (3,)
    assert outputs["prompts.1.topk_ids"].shape == (4, 5) and outputs["prompts.1.topk_logprobs"].shape == (4, 5)


def test_taps_agree_with_transformers_logits(qk_bundle):
    """The bundle's logits are the model's: compared with transformers' float32 logits (fixture oracle)."""
    b = golden.Bundle.load(qk_bundle)
    ref = np.load(QK / "expected.npz")["logits"]
    assert np.abs(b.taps[0]["logits"] - ref[0]).max() < 1e-4
    # prompt 1 is the first 7 tokens of row 1: by causality its logits are row 1's first 7
    assert np.abs(b.taps[1]["logits"] - ref[1, :7]).max() < 1e-4


def test_outputs_follow_from_the_forward_pass(qk_bundle):
    """Greedy ids, step logits and top-k, re-derived with fresh cache-free forward passes."""
    b = golden.Bundle.load(qk_bundle)
    model = AutoModelForCausalLM.from_pretrained(QK, dtype="float64")
    for p, prompt in enumerate(_prompts(QK)):
        out = b.outputs[p]
        gen = out["generated_ids"].tolist()
        assert np.array_equal(out["step_logits"][0], b.taps[p]["logits"][-1])
        for j in range(4):
            fresh = model(np.array([prompt + gen[:j]])).logits[0, -1]
            assert np.abs(out["step_logits"][j] - fresh).max() < 1e-12
            if j < 3:
                assert gen[j] == int(np.argmax(fresh))
            lp = fresh - np.log(np.exp(fresh).sum())  # log-softmax by hand
            order = np.argsort(-lp)[:5]
            assert out["topk_ids"][j].tolist() == order.tolist()
            assert np.allclose(out["topk_logprobs"][j], lp[order], atol=1e-12)


def test_manifest_describes_the_bundle(qk_bundle):
    m = json.loads((qk_bundle / golden.MANIFEST).read_text())
    assert m["schema"] == "pycohere-golden" and m["schema_version"] == 1 and m["precision"] == "float64"
    files = m["model"]["files"]
    assert files["config.json"]["sha256"] == hashlib.sha256((QK / "config.json").read_bytes()).hexdigest()
    assert files["model.safetensors"]["sha256"] == hashlib.sha256((QK / "model.safetensors").read_bytes()).hexdigest()
    assert m["config"] == json.loads((QK / "config.json").read_text())
    names = [t["name"] for t in m["taps"]]
    assert names[:4] == ["embed_tokens", "rope_cos", "rope_sin", "layers.0.input_layernorm"]
    assert names.index("layers.0.q_rope") < names.index("layers.0.attn_probs") < names.index("layers.1.input_layernorm")
    assert names[-2:] == ["norm", "logits"]
    assert m["taps"][names.index("layers.1.q_rope")]["shapes"] == [[12, 4, 8], [7, 4, 8]]
    assert m["tolerances"]["float32"]["q_rope"] == {"atol": 1e-6, "rtol": 1e-3}
    assert [p["num_tokens"] for p in m["prompts"]] == [12, 7]
    assert m["layers"][0] == {"index": 0, "attention": "full", "window": None, "rope": True}


def test_cohere2_bundle_records_layer_kinds_and_no_rope_taps_on_full_layers(tmp_path):
    b = _make(tmp_path, C2)
    m = json.loads((b / golden.MANIFEST).read_text())
    assert [(x["attention"], x["window"], x["rope"]) for x in m["layers"]] == \
        [("full", None, False), ("sliding", 5, True), ("sliding", 5, True)]
    names = {t["name"] for t in m["taps"]}
    assert "layers.0.q_rope" not in names and "layers.1.q_rope" in names and "layers.2.k_rope" in names


def test_taps_filter_and_attention_cap(tmp_path):
    b = _make(tmp_path, QK, "f", "--taps", "layers.0.*,logits", "--max-attn-bytes", "0")
    names = {k.split(".", 2)[2] for k in load_file(str(b / golden.TAPS))}
    assert names == {f"layers.0.{op}" for op in golden.LAYER_OPS if op != "attn_probs"} | {"logits"}
    assert "attn_probs" in json.loads((b / golden.MANIFEST).read_text())["omitted_taps"]
    # the cap is on all attention probabilities: 2 layers x 4 heads x (12^2 + 7^2) x 8 bytes
    need = 2 * 4 * (12 ** 2 + 7 ** 2) * 8
    kept = _make(tmp_path, QK, "g", "--max-attn-bytes", str(need))
    assert "prompts.1.layers.1.attn_probs" in load_file(str(kept / golden.TAPS))
    cut = _make(tmp_path, QK, "h", "--max-attn-bytes", str(need - 1))
    assert not any(k.endswith("attn_probs") for k in load_file(str(cut / golden.TAPS)))


def test_prompts_are_tokenized_with_the_checkpoint_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>",
             "the", "lord", "said", "unto", "moses"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<UNK>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    ckpt = tmp_path / "ckpt"
    shutil.copytree(QK, ckpt)
    tok.save(str(ckpt / "tokenizer.json"))
    (tmp_path / "p.txt").write_text("the lord said unto moses\n\nmoses said\n")
    assert golden_cli.main(["make", str(ckpt), "--prompts", str(tmp_path / "p.txt"), "-o", str(tmp_path / "b")]) == 0
    b = golden.Bundle.load(tmp_path / "b")
    # BOS (5) then the word ids of the vocabulary above
    assert [d["input_ids"].tolist() for d in b.inputs] == [[5, 7, 8, 9, 10, 11], [5, 11, 9]]
    assert [p["text"] for p in b.manifest["prompts"]] == ["the lord said unto moses", "moses said"]
    assert "tokenizer.json" in b.manifest["model"]["files"]


# --- checking and diffing ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_passes_on_its_own_bundle(qk_bundle, capsys, dtype):
    rc = golden_cli.main(["check", str(qk_bundle), "--model", str(QK), "--dtype", dtype])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"tolerance profile {dtype}" in out and "PASS: all 41 compared" in out
    lines = [ln.split()[0] for ln in out.splitlines() if ln.startswith(("embed", "rope", "layers", "norm", "logits"))]
    assert lines == [t["name"] for t in json.loads((qk_bundle / golden.MANIFEST).read_text())["taps"]]


def _edit(src, dst, key, fn):
    shutil.copytree(src, dst)
    taps = load_file(str(dst / golden.TAPS))
    taps[key] = fn(taps[key].copy())
    save_file(taps, str(dst / golden.TAPS))  # another writer: the safetensors library
    return dst


def _bump(delta, index):
    def fn(a):
        a[index] += delta * np.abs(a).max()
        return a
    return fn


def test_diff_names_an_edited_tap(qk_bundle, tmp_path, capsys):
    b = _edit(qk_bundle, tmp_path / "b", "prompts.1.layers.1.mlp_up", _bump(1e-3, (2, 5)))
    rc, out = _diff(capsys, qk_bundle, b)
    assert rc == 1
    assert "first divergence: layer 1, mlp_up (up_proj): max abs" in out and "at p1 [2, 5]" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("layers.1.mlp_up "))
    assert row.rstrip().endswith("FAIL")
    # the MLP branch does not feed this layer's attention: those rows still pass
    assert next(ln for ln in out.splitlines() if ln.startswith("layers.1.attn_out ")).rstrip().endswith("ok")


def test_tolerance_semantics(qk_bundle, tmp_path, capsys):
    """max|B - A| <= atol + rtol * max|A|: 1e-13 relative passes float64 (rtol 1e-10); 1e-8 fails
    float64 but passes float32 (rtol 1e-4); --tolerance-scale widens."""
    key, idx = "prompts.0.layers.0.attn_out", (3, 7)
    tiny = _edit(qk_bundle, tmp_path / "tiny", key, _bump(1e-13, idx))
    assert _diff(capsys, qk_bundle, tiny)[0] == 0
    small = _edit(qk_bundle, tmp_path / "small", key, _bump(1e-8, idx))
    rc, out = _diff(capsys, qk_bundle, small)
    assert rc == 1 and "first divergence: layer 0, attn_out" in out
    assert _diff(capsys, qk_bundle, small, "--profile", "float32")[0] == 0
    assert _diff(capsys, qk_bundle, small, "--tolerance-scale", "1000")[0] == 0


def _split_half_rope(x, cos, sin):
    """Llama/NeoX RoPE (rotate halves): the classic porting mistake."""
    half = x.shape[-1] // 2
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def _rms_norm(x, w, eps):
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


MUTATIONS = {
    "split_half_rope": ("apply_rope", _split_half_rope),
    "rmsnorm": ("layer_norm", _rms_norm),
    "no_logit_scale": ("lm_head", lambda h, w, s: L.linear(h, w)),
    "tanh_gelu_for_silu": ("ACTIVATIONS", {"silu": lambda x: 0.5 * x * (1 + np.tanh(0.8 * x))}),
}


@pytest.mark.parametrize("case, mutation, where", [
    (QK, "split_half_rope", "layer 0, q_rope"),
    (C2, "split_half_rope", "layer 1, q_rope"),  # layer 0 of this Cohere2 model is NoPE
    (QK, "rmsnorm", "layer 0, input_layernorm"),
    (C2, "no_logit_scale", "logits"),
    (QK, "tanh_gelu_for_silu", "layer 0, mlp_act"),
])
def test_injected_bug_is_located(case, mutation, where, tmp_path, monkeypatch, capsys):
    ref = _make(tmp_path, case, "ref")
    attr, fn = MUTATIONS[mutation]
    monkeypatch.setattr(L, attr, fn)
    bad = _make(tmp_path, case, "bad")
    rc, out = _diff(capsys, ref, bad)
    assert rc == 1
    assert f"first divergence: {where} (" in out


def test_rope_on_cohere2_full_layers_is_located(tmp_path, monkeypatch, capsys):
    """Another port bug: RoPE applied on Cohere2's NoPE layers. B gains a q_rope tap A does not have
    (reported, not compared) and layer 0's attention probabilities diverge."""
    ref = _make(tmp_path, C2, "ref")
    from pycohere.model import Cohere2Model
    monkeypatch.setattr(Cohere2Model, "layer_uses_rope", lambda self, i: True)
    bad = _make(tmp_path, C2, "bad")
    rc, out = _diff(capsys, ref, bad)
    assert rc == 1 and "first divergence: layer 0, attn_probs" in out
    assert "only in B, not compared: layers.0.q_rope, layers.0.k_rope" in out


def test_check_catches_a_bug_in_pycohere_itself(qk_bundle, monkeypatch, capsys):
    monkeypatch.setattr(L, "apply_rope", _split_half_rope)
    rc = golden_cli.main(["check", str(qk_bundle), "--model", str(QK), "--dtype", "float32"])
    assert rc == 1 and "first divergence: layer 0, q_rope" in capsys.readouterr().out


def test_diff_reads_a_float32_bundle_from_another_producer(qk_bundle, tmp_path, capsys):
    """A minimal producer: safetensors float32 files and a manifest with only the schema keys. Its
    precision is inferred from the stored dtype, so the float32 profile applies."""
    other = tmp_path / "other"
    other.mkdir()
    for f in (golden.INPUTS, golden.TAPS, golden.OUTPUTS):
        t = load_file(str(qk_bundle / f))
        save_file({k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in t.items()}, str(other / f))
    (other / golden.MANIFEST).write_text(json.dumps({"schema": "pycohere-golden", "schema_version": 1}))
    rc, out = _diff(capsys, qk_bundle, other)
    assert rc == 0 and "tolerance profile float32" in out
    rc, out = _diff(capsys, qk_bundle, other, "--profile", "float64")
    # embeddings are float32 in the checkpoint (exact in float32); the cos table is the first to round
    assert rc == 1 and "first divergence: rope_cos" in out


def _synthetic(gen, lp, ids):
    return golden.Bundle({"schema": "pycohere-golden", "schema_version": 1}, [{"input_ids": np.array([5, 6])}],
                         [{}], [{"generated_ids": np.array(gen), "topk_logprobs": np.array(lp),
                                 "topk_ids": np.array(ids)}])


def test_greedy_near_ties_are_not_failures():
    """Step 1 of A is a near tie (top-2 gap 1e-12 < 2 x tolerance): B picking the other token passes and
    later steps are not compared; a clear gap (0.5) makes the same disagreement a failure."""
    lp_tie = [[-0.1, -2.0, -3.0], [-0.7, -0.7 - 1e-12, -3.0], [-0.2, -1.0, -4.0]]
    a = _synthetic([4, 7, 9], lp_tie, [[4, 1, 2], [7, 8, 2], [9, 3, 1]])
    b = _synthetic([4, 8, 3], lp_tie, [[4, 1, 2], [8, 7, 2], [3, 9, 1]])
    report = golden.compare_bundles(a, b)
    assert report.passed, report.format()
    gen = next(r for r in report.rows if r.name == "generated_ids")
    assert "near tie" in gen.note and "step 1" in gen.note
    lp_clear = [[-0.1, -2.0, -3.0], [-0.2, -0.7, -3.0], [-0.2, -1.0, -4.0]]
    report = golden.compare_bundles(_synthetic([4, 7, 9], lp_clear, [[4, 1, 2], [7, 8, 2], [9, 3, 1]]),
                                    _synthetic([4, 8, 3], lp_clear, [[4, 1, 2], [8, 7, 2], [3, 9, 1]]))
    assert not report.passed
    assert report.summary().startswith("first divergence: generated_ids") and "A chose 7, B chose 8" in report.summary()


# --- errors and exit codes ---------------------------------------------------------------------------
def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        golden_cli.main(["make", str(QK), "-o", str(tmp_path / "x")])  # neither --ids nor --prompts
    assert e.value.code == 2
    assert "one of the arguments --prompts --ids is required" in capsys.readouterr().err
    assert golden_cli.main(["diff", str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "golden bundle" in err and "does not exist" in err


def test_check_against_another_checkpoint_is_refused(qk_bundle, capsys):
    assert golden_cli.main(["check", str(qk_bundle), "--model", str(PARITY / "gqa")]) == 2
    err = capsys.readouterr().err
    assert "not the checkpoint this bundle was made from (qk_norm)" in err and "config.json sha256" in err
    with pytest.raises(errors.WeightMismatchError):
        golden.verify_model(golden.Bundle.load(qk_bundle), PARITY / "gqa")


def test_check_with_a_copied_checkpoint_passes(qk_bundle, tmp_path, capsys):
    shutil.copytree(QK, tmp_path / "copy")
    assert golden_cli.main(["check", str(qk_bundle), "--model", str(tmp_path / "copy")]) == 0


def _broken(qk_bundle, tmp_path, how):
    b = tmp_path / "broken"
    shutil.copytree(qk_bundle, b)
    how(b)
    return b


@pytest.mark.parametrize("how, error, message", [
    (lambda b: (b / "manifest.json").unlink(), errors.CheckpointNotFoundError, "no manifest.json"),
    (lambda b: (b / "taps.safetensors").unlink(), errors.CheckpointNotFoundError, "lacks taps.safetensors"),
    (lambda b: (b / "manifest.json").write_text("{not json"), errors.CorruptCheckpointError, "not valid JSON"),
    (lambda b: (b / "manifest.json").write_text('{"schema": "pycohere-golden", "schema_version": 99}'),
     errors.UnsupportedFormatError, "schema_version 99"),
    (lambda b: (b / "manifest.json").write_text('{"schema": "other"}'), errors.UnsupportedFormatError, "not a golden"),
    (lambda b: (b / "taps.safetensors").write_bytes((b / "taps.safetensors").read_bytes()[:5000]),
     errors.CorruptCheckpointError, "truncated"),
    (lambda b: save_file({"layers.0.q": np.zeros(3)}, str(b / "taps.safetensors")),
     errors.CorruptCheckpointError, "is not 'prompts.<index>.<name>'"),
])
def test_bad_bundles_raise_named_errors(qk_bundle, tmp_path, how, error, message):
    with pytest.raises(error, match=message):
        golden.Bundle.load(_broken(qk_bundle, tmp_path, how))


def test_input_errors(tmp_path, qk_bundle):
    bad = tmp_path / "bad.txt"
    bad.write_text("5 17\n5 x 7\n")
    with pytest.raises(errors.InputError, match="line 2: 'x' is not an integer token id"):
        golden_cli.read_ids_file(bad)
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(errors.TokenizerError, match="no tokenizer.json, so --prompts cannot be tokenized"):
        golden_cli.cmd_make(golden_args(QK, prompts=tmp_path / "p.txt", output=tmp_path / "o"))
    with pytest.raises(errors.InputError, match="--taps pattern 'layer.0.*' matches no tap"):
        golden_cli.cmd_make(golden_args(QK, ids=_ids_file(tmp_path, [[5, 9]]), output=tmp_path / "o2", taps="layer.0.*"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(errors.InputError, match="holds other files"):
        golden_cli.cmd_make(golden_args(QK, ids=_ids_file(tmp_path, [[5, 9]]), output=tmp_path / "busy"))
    with pytest.raises(errors.TokenIdError):
        golden_cli.cmd_make(golden_args(QK, ids=_ids_file(tmp_path, [[5, 97]]), output=tmp_path / "o3"))
    other = _make(tmp_path, QK, "short", "--taps", "logits")
    ids = golden.Bundle.load(other)
    ids.inputs[0]["input_ids"] = ids.inputs[0]["input_ids"][::-1].copy()
    with pytest.raises(errors.InputError, match="prompt 0: input_ids differs between the bundles"):
        golden.compare_bundles(golden.Bundle.load(qk_bundle), ids)


def golden_args(model, ids=None, prompts=None, output=None, taps=None):
    import argparse
    return argparse.Namespace(model=str(model), ids=ids and str(ids), prompts=prompts and str(prompts),
                              output=str(output), taps=taps, generate=0, top_k=5,
                              max_attn_bytes=golden.DEFAULT_MAX_ATTN_BYTES, timestamp=False)


def test_pycohere_cli_wiring(qk_bundle, monkeypatch, capsys):
    """The two lines the lead adds to cli.build_parser, simulated: `pycohere golden diff` and
    `pycohere explain` go through pycohere.cli.main with its exit-code handling."""
    import argparse

    from pycohere import cli
    from pycohere.cli import explain, golden
    original = cli.build_parser

    def build_parser():
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for module, name in ((golden, "golden"), (explain, "explain")):
            if name not in sub.choices:
                module.register(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    assert cli.main(["golden", "diff", str(qk_bundle), str(qk_bundle)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert cli.main(["golden", "check", str(qk_bundle / "nope"), "--model", str(QK)]) == 2
    assert cli.main(["explain", str(QK), "--ids", "5 17", "--layers", "0"]) == 0
    assert "layer 0:" in capsys.readouterr().out


def test_module_entry_point_exit_codes_in_a_real_process(qk_bundle, tmp_path):
    """What another project's CI runs: a process whose exit status is 0 on agreement, 1 on divergence."""
    import subprocess
    import sys
    bad = _edit(qk_bundle, tmp_path / "bad", "prompts.0.norm", _bump(1e-2, (0, 0)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "pycohere.golden", *map(str, a)], capture_output=True,
                                    text=True, cwd=ROOT, timeout=120)
    ok, diverged = run("diff", qk_bundle, qk_bundle), run("diff", qk_bundle, bad, "--failures-only")
    assert ok.returncode == 0 and "PASS" in ok.stdout
    assert diverged.returncode == 1 and "first divergence: norm (final LayerNorm)" in diverged.stdout
    assert "layers.0.q " not in diverged.stdout  # --failures-only hides passing rows


def test_demo_model_bundle_from_text_prompts(tmp_path, capsys):
    """On the bundled demo model: --prompts uses its tokenizer; make is deterministic; check passes."""
    import pycohere
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("In the beginning\nAnd the LORD said unto Moses\n")
    for out in ("a", "b"):
        assert golden_cli.main(["make", pycohere.DEMO_MODEL, "--prompts", str(prompts), "-o", str(tmp_path / out),
                            "--generate", "3"]) == 0
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert golden_cli.main(["check", str(tmp_path / "a"), "--model", pycohere.DEMO_MODEL, "--dtype", "float32"]) == 0
    assert "PASS" in capsys.readouterr().out
