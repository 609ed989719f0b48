"""Tiny checkpoints written with NumPy + safetensors only (no torch): for tests that must run
without the oracle extra."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from pycohere.checkpoints import AutoConfig
from pycohere.io.dtypes import bf16_bits
from pycohere.checkpoints.manifest import expected_tensors

TINY = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            logit_scale=0.5, layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=5, eos_token_id=6,
            tie_word_embeddings=True, rope_theta=10000.0)


def random_tensors(config, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(config).items():
        if "norm" in name:
            out[name] = (1 + 0.2 * (rng.random(shape) - 0.5)).astype(np.float32)
        elif name.endswith("bias"):
            out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.15 * rng.standard_normal(shape)).astype(np.float32)
    return out


def write_checkpoint(folder, model_type="cohere", seed=0, storage="F32", tensors=None, **overrides) -> Path:
    """Write config.json + model.safetensors for a random tiny model; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(TINY, model_type=model_type, **overrides)
    config = AutoConfig.from_dict(cfg)
    tensors = random_tensors(config, seed) if tensors is None else tensors
    if storage == "F16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    elif storage == "BF16":
        # safetensors.numpy has no bf16: write the bits as U16 and patch the header's dtype below
        tensors = {k: bf16_bits(v) for k, v in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    if storage == "BF16":
        _retag_dtype(folder / "model.safetensors", "U16", "BF16")
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _retag_dtype(path: Path, old: str, new: str) -> None:
    """Rewrite dtype names in a safetensors header in place (same length is not required)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for k, v in header.items():
        if k != "__metadata__" and v["dtype"] == old:
            v["dtype"] = new
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])


TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "tokenizer" / "tiny-command-r"


def write_chat_model(folder, model_type="cohere", seed=0, **overrides) -> Path:
    """A tiny random model whose vocabulary is the committed tiny Command-R tokenizer's."""
    import shutil
    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"]) + sum(1 for t in tok["added_tokens"] if t["id"] >= len(tok["model"]["vocab"]))
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    folder = write_checkpoint(folder, model_type, seed, vocab_size=max(vocab, max(ids.values()) + 1),
                              eos_token_id=ids["<|END_OF_TURN_TOKEN|>"], bos_token_id=ids["<BOS_TOKEN>"],
                              pad_token_id=ids["<PAD>"], **overrides)
    for f in TOKENIZER_DIR.iterdir():
        if f.is_file() and not f.name.endswith(".py"):
            shutil.copy(f, folder / f.name)
    return folder


def run_cli_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """``pycohere ARGS`` in a subprocess where any write past ``limit`` bytes fails with EFBIG
    (RLIMIT_FSIZE), as a full disk fails with ENOSPC."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from pycohere.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)

