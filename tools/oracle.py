"""Oracle helpers: tiny random Cohere / Cohere2 models built with transformers (dev-only).

Used by the live parity tests and by ``tools/make_parity_fixtures.py``. transformers' default init
(std 0.02, unit norms) gives near-constant logits, so weights are re-drawn: matrices N(0, 0.15),
norm weights 1 + U(-0.1, 0.1), biases N(0, 0.1) — varied logits make parity tests meaningful.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
            logit_scale=0.5, layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=5, eos_token_id=6,
            tie_word_embeddings=True, rope_theta=10000.0)

# name -> (model_type, config overrides, storage dtype, schema, sharded, prompt length, padded)
CASES = {
    "mha": ("cohere", {}, "float32", "5.x", False, 12, False),
    "gqa": ("cohere", dict(num_key_value_heads=2), "float32", "5.x", False, 12, False),
    "mqa": ("cohere", dict(num_key_value_heads=1), "float32", "5.x", False, 12, False),
    "qk_norm": ("cohere", dict(use_qk_norm=True, num_key_value_heads=2), "float32", "5.x", False, 12, False),
    "attn_bias": ("cohere", dict(attention_bias=True), "float32", "5.x", False, 12, False),
    "gelu": ("cohere", dict(hidden_act="gelu"), "float32", "5.x", False, 12, False),
    "untied": ("cohere", dict(tie_word_embeddings=False), "float32", "5.x", False, 12, False),
    "head_dim": ("cohere", dict(head_dim=12), "float32", "5.x", False, 12, False),
    "rope_linear": ("cohere", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "float32", "5.x", False, 12, False),
    "rope_dynamic": ("cohere", dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                     "float32", "5.x", False, 30, False),
    "rope_yarn": ("cohere", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
                  "float32", "5.x", False, 30, False),
    "rope_longrope": ("cohere", dict(max_position_embeddings=64, rope_scaling={
        "rope_type": "longrope", "original_max_position_embeddings": 16,
        "short_factor": [1.0 + 0.1 * i for i in range(4)], "long_factor": [1.0 + 0.5 * i for i in range(4)]}),
        "float32", "5.x", False, 30, False),
    "rope_llama3": ("cohere", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
                    "float32", "5.x", False, 30, False),
    "schema4_rope_type": ("cohere", dict(rope_theta=8e6), "float32", "4.x", False, 12, False),
    "schema4_type_linear": ("cohere", dict(rope_scaling={"type": "linear", "factor": 3.0}), "float32", "4.x", False, 12, False),
    "f16": ("cohere", dict(num_key_value_heads=2), "float16", "5.x", False, 12, False),
    "bf16": ("cohere", dict(num_key_value_heads=2, use_qk_norm=True), "bfloat16", "4.x", False, 12, False),
    "sharded": ("cohere", dict(num_key_value_heads=2), "float32", "5.x", True, 12, False),
    "left_padded": ("cohere", dict(num_key_value_heads=2), "float32", "5.x", False, 12, True),
    "cohere2_default": ("cohere2", dict(num_hidden_layers=4, num_key_value_heads=2, sliding_window=8),
                        "float32", "5.x", False, 20, False),
    "cohere2_layer_types": ("cohere2", dict(num_hidden_layers=3, sliding_window=5,
                            layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
                            "float32", "5.x", False, 20, False),
    "cohere2_pattern4x": ("cohere2", dict(num_hidden_layers=4, num_key_value_heads=1, sliding_window=6,
                          sliding_window_pattern=2), "bfloat16", "4.x", False, 20, True),
}


def make_hf_config(model_type: str, overrides: dict):
    import transformers
    kw = dict(BASE)
    kw.update(overrides)
    cls = transformers.CohereConfig if model_type == "cohere" else transformers.Cohere2Config
    if "rope_scaling" in kw:  # 5.x takes the scaling dict as rope_parameters
        rp = dict(kw.pop("rope_scaling"))
        rp.setdefault("rope_type", rp.pop("type", "default"))
        rp["rope_theta"] = kw.pop("rope_theta")
        kw["rope_parameters"] = rp
    else:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta")}
    return cls(**kw)


def redraw_(model, seed: int) -> None:
    """Re-draw every parameter so that logits and continuations are varied."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * (torch.rand(p.shape, generator=g) - 0.5))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def build_model(model_type: str, overrides: dict, seed: int = 0):
    import torch
    import transformers
    torch.manual_seed(seed)
    config = make_hf_config(model_type, overrides)
    cls = transformers.CohereForCausalLM if model_type == "cohere" else transformers.Cohere2ForCausalLM
    model = cls(config).eval()
    redraw_(model, seed)
    return model


def to_schema4(folder: Path, overrides: dict) -> None:
    """Rewrite config.json the way transformers 4.x wrote it: rope_theta + rope_scaling."""
    p = Path(folder) / "config.json"
    cfg = json.loads(p.read_text())
    rp = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rp.get("rope_theta", BASE["rope_theta"])
    if "rope_scaling" in overrides:
        cfg["rope_scaling"] = dict(overrides["rope_scaling"])  # as written (with "type" or "rope_type")
    else:
        cfg["rope_scaling"] = None
    if "sliding_window_pattern" in overrides:
        cfg.pop("layer_types", None)
        cfg["sliding_window_pattern"] = overrides["sliding_window_pattern"]
    p.write_text(json.dumps(cfg, indent=2))


def save_case(name: str, folder: Path, seed: int = 0):
    """Build case `name`, save it like a hub checkpoint; return the transformers model reloaded from
    the saved files in float32 (so F16/BF16 rounding is identical on both sides)."""
    import torch
    import transformers
    model_type, overrides, dtype, schema, sharded, _, _ = CASES[name]
    model = build_model(model_type, overrides, seed)
    model = model.to(getattr(torch, dtype))
    kw = {"max_shard_size": "20KB"} if sharded else {}
    model.save_pretrained(folder, **kw)
    if schema == "4.x":
        to_schema4(folder, overrides)
    cls = transformers.CohereForCausalLM if model_type == "cohere" else transformers.Cohere2ForCausalLM
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def case_inputs(name: str, seed: int = 0):
    """input_ids (B, T) and attention_mask (B, T) for a case (B = 2; left padding when asked)."""
    model_type, overrides, _, _, _, T, padded = CASES[name]
    V = overrides.get("vocab_size", BASE["vocab_size"])
    rng = np.random.default_rng(1000 + seed)
    ids = rng.integers(7, V, size=(2, T))
    ids[:, 0] = BASE["bos_token_id"]
    mask = np.ones((2, T), dtype=np.int64)
    if padded:
        pad = T // 3
        ids[1, :pad] = BASE["pad_token_id"]
        ids[1, pad] = BASE["bos_token_id"]
        mask[1, :pad] = 0
    return ids, mask


def hf_forward(model, ids, mask=None, dtype="float32", **kw):
    import torch
    model = model.to(getattr(torch, dtype))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask), **kw)
    return out


def versions() -> dict:
    import platform
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
