"""Repo ids resolve through the standard hub cache; nothing here touches the network."""
import shutil

import numpy as np
import pytest

import pycohere
from pycohere.errors import CheckpointNotFoundError

from conftest import DATA

REPO = "pycohere-test/tiny-cohere2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root):
    """Lay a checkpoint out as huggingface_hub's cache does: models--org--name/{refs,snapshots}."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(DATA / "parity" / "cohere2_pattern4x", snap)
    (snap / "expected.npz").unlink()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def test_repo_id_loads_from_the_hub_cache_offline(tmp_path, monkeypatch):
    cache = _hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = pycohere.AutoModelForCausalLM.from_pretrained(REPO, cache_dir=cache)
    local = pycohere.AutoModelForCausalLM.from_pretrained(DATA / "parity" / "cohere2_pattern4x")
    ids = [[5, 17, 33, 40]]
    np.testing.assert_array_equal(model(ids).logits, local(ids).logits)
    assert isinstance(pycohere.Cohere2ForCausalLM.from_pretrained(REPO, cache_dir=cache), pycohere.Cohere2ForCausalLM)
    # local_files_only=True works the same without the environment variable
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert pycohere.AutoModel.from_pretrained(REPO, cache_dir=cache, local_files_only=True).config.model_type == "cohere2"


def test_unknown_repo_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="not in the local hub cache"):
        pycohere.AutoModelForCausalLM.from_pretrained("nobody/nothing", cache_dir=tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="neither an existing file"):
        pycohere.AutoModelForCausalLM.from_pretrained("./missing/folder/here")


def test_gguf_file_selects_one_file_of_a_gguf_repo(tmp_path, monkeypatch):
    # Only the named GGUF (and its split parts) is fetched: never every quantization of a repo.
    from pycohere.io.hub import ALLOW_PATTERNS, allow_patterns
    assert not any(p.endswith(".gguf") for p in ALLOW_PATTERNS)
    assert allow_patterns("m-Q4_0-00001-of-00003.gguf")[-2:] == ["m-Q4_0-00001-of-00003.gguf", "m-Q4_0-*-of-00003.gguf"]
    repo = tmp_path / "hub" / ("models--" + REPO.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in (DATA / "gguf").glob("*.gguf"):
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = pycohere.AutoModelForCausalLM.from_pretrained(REPO, cache_dir=tmp_path / "hub",
                                                          gguf_file="cohere2-f16-00001-of-00002.gguf")
    local = pycohere.AutoModelForCausalLM.from_pretrained(DATA / "gguf" / "cohere2-f16-00001-of-00002.gguf")
    np.testing.assert_array_equal(model([[5, 17, 33]]).logits, local([[5, 17, 33]]).logits)
    tok = pycohere.CohereTokenizer.from_pretrained(snap, gguf_file="command-r-q8_0.gguf")
    assert tok.encode("Hello") == pycohere.CohereTokenizer.from_pretrained(DATA / "gguf" / "command-r-q8_0.gguf").encode("Hello")
