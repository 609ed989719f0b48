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
