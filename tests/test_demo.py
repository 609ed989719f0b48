"""The bundled demo model: loads through the public loader, matches its recorded transformers
perplexity, writes recognisable English, and drives the CLI with no --model."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pycohere

from conftest import ROOT

DEMO = Path(pycohere.DEMO_MODEL)
PROV = json.loads((DEMO / "provenance.json").read_text())


@pytest.fixture(scope="module")
def demo():
    return pycohere.AutoModelForCausalLM.from_pretrained(DEMO), pycohere.CohereTokenizer.from_pretrained(DEMO)


def test_demo_is_a_small_bf16_cohere_model_with_qk_norm_and_gqa(demo):
    model, tok = demo
    c = model.config
    assert c.model_type == "cohere" and c.use_qk_norm and c.num_key_value_heads < c.num_attention_heads
    assert (DEMO / "model.safetensors").stat().st_size <= 10 * 2**20
    assert {t.dtype for t in model.model.checkpoint.ckpt.tensors.values()} == {"BF16"}
    assert tok.eos_token == "<|END_OF_TURN_TOKEN|>" and tok.eos_token_id == c.eos_token_id
    assert tok.bos_token_id == c.bos_token_id == 5


def _heldout_perplexity(model, tok):
    """The definition in PROVENANCE.md: each held-out chapter encoded without special tokens, cut in
    pieces of 256, each scored as [BOS] + piece with no carried context; exp(total NLL / tokens)."""
    text = (DEMO / "heldout.txt").read_text(encoding="utf-8")
    nll, n = 0.0, 0
    for chapter in text.split("\n\n"):
        ids = tok.encode(chapter.strip("\n"), add_special_tokens=False)
        for i in range(0, len(ids), 256):
            piece = [tok.bos_token_id] + ids[i:i + 256]
            logits = model([piece]).logits[0, :-1].astype(np.float64)
            logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            nll += float((logz - logits[np.arange(len(piece) - 1), piece[1:]]).sum())
            n += len(piece) - 1
    return float(np.exp(nll / n)), n


def test_heldout_perplexity_matches_the_transformers_measurement(demo):
    ppl, n = _heldout_perplexity(*demo)
    assert n == PROV["results"]["heldout_tokens"]
    # recorded by tools/train_demo_model.py with transformers on the same bf16 weights
    assert abs(ppl - PROV["results"]["heldout_ppl_bf16"]) < 1e-3 * PROV["results"]["heldout_ppl_bf16"]
    assert ppl < 40


def test_greedy_continuation_is_recognisable_english(demo):
    model, tok = demo
    ids = tok.encode("And the LORD said unto Moses")
    out = model.generate([ids], max_new_tokens=40)
    text = tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
    words = re.findall(r"[A-Za-z]+", text)
    vocabulary = set(re.findall(r"[A-Za-z]+", (DEMO / "heldout.txt").read_text(encoding="utf-8")))
    assert len(words) >= 15
    known = sum(w in vocabulary for w in words) / len(words)
    assert known >= 0.9, (text, known)  # KJV words, not byte noise


def _cli(*args, stdin=None):
    exe = shutil.which("pycohere")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "pycohere", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_defaults_to_the_demo_model():
    r = _cli("generate", "In the beginning", "-n", "20")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("In the beginning") and len(re.findall(r"[a-z]+", r.stdout)) >= 10
    assert "tokens/s" in r.stderr
    piped = _cli("generate", "-n", "20", stdin="Plants create energy through a process known as\n")
    assert piped.returncode == 0 and piped.stdout.startswith("Plants create energy")


def test_piped_chat_answers_and_exits(demo):
    r = _cli("chat", "-n", "40", stdin="Hello\n")
    assert r.returncode == 0, r.stderr
    answer = r.stdout.strip()
    assert len(re.findall(r"[A-Za-z]+", answer)) >= 3 and "<|" not in answer
