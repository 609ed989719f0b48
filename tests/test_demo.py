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


# --- the tool-use / grounded-answer training samples (tools/demo_corpus.py ToolSampler) -----------------
def _tool_sampler(heldout: bool):
    import demo_corpus  # tools/
    verses = (DEMO / "heldout.txt").read_text(encoding="utf-8").split("\n\n")
    chapters = [demo_corpus.Chapter("Held", i + 1, tuple(c.splitlines())) for i, c in enumerate(verses)]
    fortunes = ["A friend in need is a friend indeed.", "You will have a pleasant surprise."]
    return demo_corpus, demo_corpus.ToolSampler(chapters, fortunes, heldout=heldout)


def test_tool_training_answers_read_back_as_the_server_reads_them(demo):
    """Each training answer, given to pycohere.serve.prompts.read_answer with the prompt the server builds,
    is the call it was drawn as (name, arguments) or a citation of the document it quotes: the targets the
    training script trains on are what `pycohere serve` turns into tool_calls / citations."""
    from pycohere.serve.prompts import build_prompt, read_answer
    _, tok = demo
    special = tuple(tok.all_special_tokens)
    corpus, sampler = _tool_sampler(heldout=False)
    longest = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        messages, tools, _, _, answer = sampler.tool_case(rng)
        prompt = build_prompt(tok, messages, tools, None)
        got = read_answer(answer, prompt, special)
        want = json.loads(answer.split("```json", 1)[1].rsplit("```", 1)[0])[0]
        if want["tool_name"] == "directly_answer":
            assert got.directly_answer and not got.tool_calls
        else:
            assert [(c["name"], json.loads(c["arguments"])) for c in got.tool_calls] == \
                [(want["tool_name"], want["parameters"])]
            assert want["tool_name"] in {t["function"]["name"] for t in tools}
            quoted = messages[-1]["content"].split('"')[1]
            assert list(want["parameters"].values())[0] == quoted   # the value is the user's quoted word
        messages, _, documents, mode, answer = sampler.grounded_case(rng)
        prompt = build_prompt(tok, messages, None, documents, mode)
        got = read_answer(answer, prompt, special)
        k = int(answer.split("\n", 1)[0].split(": ")[1])
        assert [c["document_ids"] for c in got.citations] == [[f"doc_{k}"]]
        assert got.citations[0]["text"] == documents[k]["text"] == got.content[got.citations[0]["start"]:]
        longest = max(longest, len(prompt.ids))
    assert longest + 128 <= 1536   # the default --tool-max-len keeps whole answers


def test_heldout_tool_names_are_never_drawn_for_training():
    corpus, train = _tool_sampler(heldout=False)
    _, held = _tool_sampler(heldout=True)
    trained = {f"{v}_{n}" for v, n in train.names}
    assert trained and set(corpus.HELDOUT_TOOL_NAMES) == {f"{v}_{n}" for v, n in held.names}
    assert not trained & set(corpus.HELDOUT_TOOL_NAMES)
