"""``pycohere explain`` (pycohere/explain.py) and the architecture docs' links into the code."""
from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from pycohere.cli import explain
from pycohere.spec.taps import LAYER_OPS

from conftest import DATA, ROOT

QK = DATA / "parity" / "qk_norm"
C2 = DATA / "parity" / "cohere2_layer_types"  # layers: full (NoPE), sliding (window 5), sliding (window 5)


def _run(capsys, *argv):
    rc = explain.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _sections(text):
    """{layer index: the lines of its section}."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"layer (\d+):", line)
        if m:
            current = int(m.group(1))
            out[current] = []
        elif not line.strip():
            current = None
        elif current is not None:
            out[current].append(line)
    return out


def _stats(text, op):
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(op + " "))
    return {k: float(v) for k, v in re.findall(r"(mean|std|min|max|norm) ([+-]?\d+\.\d+)", line)}


def _ops(lines):
    """Operation names of a section's lines, in order ('q | k | v' names three)."""
    labels = [re.split(r"\s{2,}", ln.strip())[0] for ln in lines if not ln.strip().startswith("^")]
    return [op for label in labels for op in label.split(" | ")]


@pytest.mark.parametrize("flag", [[], ["--full"]])
def test_every_operation_of_every_layer_is_shown(capsys, flag):
    rc, out, _ = _run(capsys, QK, "--ids", "5 17 33 40", *flag)
    assert rc == 0
    sections = _sections(out)
    assert sorted(sections) == [0, 1]
    for lines in sections.values():
        assert _ops(lines) == list(LAYER_OPS)  # qk-norm model: all 16, in forward order
        ops_lines = [ln for ln in lines if not ln.strip().startswith("^")]
        assert len(ops_lines) == (16 if flag else 11)  # compact: k, v beside q; k_normed, k_rope, mlp_up too
    for op in ("embed_tokens", "rope_cos", "rope_sin", "norm", "logits"):
        assert re.search(rf"^\s+{op}\s", out, re.M), op


def test_cohere2_layers_show_their_kind_and_nope(capsys):
    rc, out, _ = _run(capsys, C2, "--ids", "5 17 33 40 9 12 8 44")
    sections = _sections(out)
    assert "layer 0: full causal attention, no positional encoding (NoPE)" in out
    assert "layer 1: sliding-window attention (window 5), RoPE" in out
    ops0 = _ops(sections[0])
    assert "q_rope" not in ops0 and "q_normed" not in ops0 and "attn_probs" in ops0
    # the NoPE note sits under layer 0's header
    assert any("COHERE: Cohere2's full-attention layers skip RoPE" in ln for ln in sections[0])
    # sliding window 5 at position 7: only keys 3..7 are visible (q - kv < 5)
    for i in (1, 2):
        line = next(ln for ln in sections[i] if ln.strip().startswith("attn_probs"))
        positions = [int(p) for p in re.findall(r"pos (\d+)", line)]
        assert len(positions) == 3 and all(3 <= p <= 7 for p in positions), line


def _cohere_lines():
    """The COHERE notes of layers.py, found independently: the text after 'COHERE:' on each line where
    a docstring or comment starts with it."""
    text = (ROOT / "pycohere" / "spec" / "layers.py").read_text()
    return [m.group(1) for m in re.finditer(r'^\s*(?:#|""")\s*COHERE:\s*(.+)', text, re.M)]


@pytest.mark.parametrize("case", [QK, C2])
def test_every_cohere_note_of_layers_py_is_printed(capsys, case):
    notes = _cohere_lines()
    assert len(notes) >= 6
    rc, out, _ = _run(capsys, case, "--ids", "5 17 33")
    flat = " ".join(out.split())
    for note in notes:
        assert " ".join(note.split())[:40] in flat, note


def test_notes_are_inline_where_the_model_uses_them(capsys):
    rc, out, _ = _run(capsys, QK, "--ids", "5 17 33")
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.strip().startswith("q_rope"))
    assert "COHERE: *interleaved* RoPE" in lines[i + 1]
    j = next(k for k, ln in enumerate(lines) if ln.strip().startswith("q_normed"))
    assert "COHERE: per-head q/k LayerNorm" in lines[j + 1]
    # shown once, in the first layer that uses it, not in every layer
    assert out.count("COHERE: *interleaved* RoPE") == 1
    other = out.split("other COHERE differences")[1]
    assert "NoPE" in other  # a Cohere (v1) model never skips RoPE


def test_statistics_match_the_checkpoint_and_transformers(capsys):
    """embed_tokens: the embedding row read straight from model.safetensors; logits and next-token
    ranking: transformers' logits stored in the fixture (float32 oracle)."""
    exp = np.load(QK / "expected.npz")
    ids = exp["input_ids"][0]
    rc, out, _ = _run(capsys, QK, "--ids", " ".join(map(str, ids)))
    row = load_file(str(QK / "model.safetensors"))["model.embed_tokens.weight"][ids[-1]].astype(np.float64)
    want = {"mean": row.mean(), "std": row.std(), "min": row.min(), "max": row.max(), "norm": np.linalg.norm(row)}
    got = _stats(out, "embed_tokens")
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= 6e-5 for k in want)
    logits = exp["logits"][0, -1].astype(np.float64)
    got = _stats(out, "logits")
    want = {"mean": logits.mean(), "std": logits.std(), "min": logits.min(), "max": logits.max(),
            "norm": np.linalg.norm(logits)}
    assert all(abs(got[k] - want[k]) <= 2e-4 for k in want)
    top = [int(t) for t in re.findall(r"(\d+) p=", out.split("next token (top 5):")[1].splitlines()[0])]
    assert top == np.argsort(-logits)[:5].tolist()


def test_single_token_attends_to_itself(capsys):
    rc, out, _ = _run(capsys, QK, "--ids", "5", "--layers", "0")
    assert "attends to pos 0 (1.00)" in out


def test_layer_selection(capsys):
    rc, out, _ = _run(capsys, C2, "--ids", "5 17 33", "--layers", "1")
    assert rc == 0 and sorted(_sections(out)) == [1]
    assert "(2 layer(s) not shown; --layers chooses)" in out
    assert explain.parse_layers("0-2,-1", 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("argv, message", [
    ((QK, "--ids", "5 17", "--layers", "7"), "--layers [7] out of range: this model has layers 0..1"),
    ((QK, "--ids", "5 x"), "--ids must be space-separated integers"),
    ((QK, "--ids", "5 200"), "token id 200"),
    ((QK, "--prompt", "hello"), "no tokenizer.json, so --prompt cannot be tokenized"),
    ((QK, "--ids", "5", "--layers", "a"), "--layers takes layer indices"),
])
def test_errors_are_one_line_exit_2(capsys, argv, message):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and message in err and err.count("\n") == 1


def test_prompt_with_a_tokenizer(tmp_path, capsys):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "and", "moses"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<UNK>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    shutil.copytree(QK, tmp_path / "m")
    tok.save(str(tmp_path / "m" / "tokenizer.json"))
    rc, out, _ = _run(capsys, tmp_path / "m", "--prompt", "and moses")
    assert rc == 0 and "tokens (3): 5 7 8" in out and "id 8 'moses' at position 2" in out


# --- docs/architecture.md -----------------------------------------------------------------------------
def test_architecture_doc_links_point_at_the_functions():
    """Every [`name`](../pycohere/file.py#Ln) link of docs/architecture.md lands on `def name` / `class
    name` at line n (so the equations and the code cannot drift apart unnoticed)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    links = re.findall(r"\[`([\w.]+)`\]\(\.\./(pycohere/[\w/]+\.py)#L(\d+)\)", doc)
    assert len(links) >= 12
    for name, path, line in links:
        text = (ROOT / path).read_text().splitlines()[int(line) - 1]
        short = name.split(".")[-1]
        assert re.match(rf"\s*(def|class) {short}\b", text), f"{name} -> {path}#L{line}: {text!r}"
    for func in ("layer_norm", "apply_rope", "attention", "attention_mask", "mlp", "decoder_layer", "lm_head",
                 "compute_inv_freq"):
        assert f"[`{func}`]" in doc, func
    assert "![" in doc and (ROOT / "docs" / "architecture.png").is_file()
