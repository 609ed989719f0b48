"""One probe per checkpoint: from `pycohere generate -m X` to the first logits, the path is resolved once,
a GGUF file (and its vocabulary) is parsed once, safetensors headers are read once; the config, weight
source and tokenizer all come from that probe."""
import argparse
from pathlib import Path

import numpy as np
import pytest

import pycohere
from pycohere.checkpoints import probe
from pycohere.cli.common import load_model_and_tokenizer
from pycohere.io import gguf, hub, safetensors

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def counts(monkeypatch):
    """How often each expensive step runs."""
    seen = {"resolve": 0, "gguf_parse": 0, "safetensors_header": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            seen[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(hub, "resolve", counting("resolve", hub.resolve))
    monkeypatch.setattr(gguf.GGUFReader, "__init__", counting("gguf_parse", gguf.GGUFReader.__init__))
    monkeypatch.setattr(safetensors, "open_safetensors", counting("safetensors_header", safetensors.open_safetensors))
    return seen


def _cli_args(model):
    return argparse.Namespace(model=str(model), dtype="float32", backend="numpy", activations="float32")


@pytest.mark.parametrize("name, parts", [("command-r-q8_0.gguf", 1), ("cohere2-f16-00001-of-00002.gguf", 2)])
def test_a_gguf_model_and_its_vocabulary_are_parsed_once(counts, name, parts):
    model, tok = load_model_and_tokenizer(_cli_args(DATA / "gguf" / name))
    ids = tok.encode("hello")
    assert np.isfinite(model([ids]).logits).all()
    assert counts == {"resolve": 1, "gguf_parse": parts, "safetensors_header": 0}


def test_a_safetensors_model_is_resolved_and_mapped_once(counts):
    model, tok = load_model_and_tokenizer(_cli_args(pycohere.DEMO_MODEL))
    assert np.isfinite(model([tok.encode("In the beginning")]).logits).all()
    assert counts == {"resolve": 1, "gguf_parse": 0, "safetensors_header": 1}


def test_the_probe_is_reused_by_every_entry_point(counts):
    found = probe(DATA / "gguf" / "command-r-q8_0.gguf")
    assert found.format == "gguf" and found.config.model_type == "cohere"
    model = pycohere.AutoModelForCausalLM.from_pretrained(found, backend="numpy")
    tok = pycohere.CohereTokenizer.from_pretrained(found)
    pipe = pycohere.pipeline("text-generation", model=model)  # the model's probe gives the tokenizer too
    assert pipe.tokenizer.get_vocab() == tok.get_vocab()
    assert pycohere.AutoConfig.from_pretrained(found) is found.config
    assert counts["gguf_parse"] == 1 and counts["resolve"] == 1


def test_the_probe_tells_the_format():
    assert probe(pycohere.DEMO_MODEL).format == "safetensors"
    assert probe(DATA / "hf_quant" / "gptq-v1-act-order").format == "gptq"
    assert probe(DATA / "hf_quant" / "bnb-nf4-dq-bf16").format == "bitsandbytes"
    assert probe(DATA / "llama_cpp" / "demo.q4_k_m.gguf").format == "gguf"
