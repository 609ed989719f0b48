#!/usr/bin/env python
"""Write a golden bundle (docs/golden-format.md) from transformers: the oracle side of ``golden diff``.

    python tools/transformers_bundle.py MODEL --ids IDS.txt -o BUNDLE [--generate N] [--top-k K]
        [--dtype float64|float32] [--max-attn-bytes N]

Dev-only (needs torch + transformers). It deliberately does not import pycohere: it writes the format
from its specification with ``safetensors.numpy`` and ``json``, which is what a C++/Rust/JAX producer
would do. Every tap is *observed* in transformers' own forward pass:

- ``embed_tokens`` and ``layers.{i}.output`` (i < L-1) from ``output_hidden_states`` (hidden_states[0]
  and [i+1]); the last layer's output from a forward hook on the decoder layer (transformers replaces
  hidden_states[-1] by the final-normed state); ``norm`` = ``last_hidden_state``;
- forward hooks on ``embed_tokens``' sibling modules: ``rotary_emb`` (cos/sin, interleaved-repeated to
  Dh; the bundle keeps the Dh/2 distinct angles, entries 0::2), ``input_layernorm``, ``q_proj`` /
  ``k_proj`` / ``v_proj`` (reshaped to heads), ``q_norm`` / ``k_norm``, ``o_proj`` (its input is
  ``attn_context``), ``gate_proj`` / ``up_proj`` / ``down_proj`` (its input is ``mlp_act``), and the
  attention module's returned weights (``attn_probs``; eager attention);
- ``q_rope`` / ``k_rope`` are not a module output in transformers, so they are computed by calling the
  modeling module's own ``apply_rotary_pos_emb`` on the hooked pre-RoPE q/k and the hooked cos/sin, on
  exactly the layers where transformers applies RoPE (all Cohere layers; Cohere2 sliding layers).

Precision: the manifest declares ``"precision": "float32"`` even for ``--dtype float64``, because
transformers computes LayerNorm (CohereLayerNorm.forward), RoPE (CohereRotaryEmbedding.forward,
apply_rotary_pos_emb) and the attention softmax in float32 whatever the model dtype
(models/cohere/modeling_cohere.py); comparisons therefore use the float32 tolerance profile.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np

SCHEMA, SCHEMA_VERSION = "pycohere-golden", 1
HASHED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "model.safetensors.index.json")
PRECISION_NOTE = ("transformers computes LayerNorm, RoPE and the attention softmax in float32 whatever the "
                  "model dtype (models/cohere/modeling_cohere.py: CohereLayerNorm.forward, "
                  "CohereRotaryEmbedding.forward, apply_rotary_pos_emb, eager_attention_forward)")


def read_ids(path) -> list[list[int]]:
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    return [[int(t) for t in ln.replace(",", " ").split()] for ln in lines if ln and not ln.startswith("#")]


def load_model(folder, dtype: str = "float64"):
    import torch
    import transformers
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = {"cohere": transformers.CohereForCausalLM, "cohere2": transformers.Cohere2ForCausalLM}[config.model_type]
    model = cls.from_pretrained(folder, dtype=getattr(torch, dtype), attn_implementation="eager")
    return model.eval()


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


class TapHooks:
    """Forward hooks filling ``self.taps`` (names of docs/golden-format.md, batch axis kept)."""

    def __init__(self, model):
        self.model, self.taps, self.handles = model, {}, []
        self.modeling = importlib.import_module(type(model).__module__)
        cfg = model.config
        self.H, self.K = cfg.num_attention_heads, cfg.num_key_value_heads
        self.Dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        base = model.model
        self._out(base.rotary_emb, "rope")
        for i, layer in enumerate(base.layers):
            p, attn, mlp = f"layers.{i}.", layer.self_attn, layer.mlp
            self._out(layer.input_layernorm, p + "input_layernorm")
            for short in ("q", "k", "v"):
                self._out(getattr(attn, f"{short}_proj"), p + short, heads=True)
            if getattr(attn, "q_norm", None) is not None:
                self._out(attn.q_norm, p + "q_normed")
                self._out(attn.k_norm, p + "k_normed")
            self._out(attn, p + "attn_probs", pick=1)
            self._in(attn.o_proj, p + "attn_context", heads=True)
            self._out(attn.o_proj, p + "attn_out")
            self._out(mlp.gate_proj, p + "mlp_gate")
            self._out(mlp.up_proj, p + "mlp_up")
            self._in(mlp.down_proj, p + "mlp_act")
            self._out(mlp.down_proj, p + "mlp_out")
            if i == len(base.layers) - 1:
                self._out(layer, p + "output", pick=0)

    def _store(self, name, value, heads):
        if name == "rope":
            cos, sin = value
            self.taps["_rope_full"] = (cos, sin)
            # interleaved-repeated: entries 2i and 2i+1 hold the same angle i
            assert np.array_equal(_np(cos)[..., 0::2], _np(cos)[..., 1::2])
            self.taps["rope_cos"], self.taps["rope_sin"] = _np(cos)[..., 0::2], _np(sin)[..., 0::2]
            return
        if value is None:
            return
        a = _np(value)
        if heads:
            a = a.reshape(a.shape[0], a.shape[1], -1, self.Dh)
        self.taps[name] = a
        if heads or name.endswith("_normed"):
            self.taps["_torch." + name] = value  # kept as torch for apply_rotary_pos_emb

    def _out(self, module, name, heads=False, pick=None):
        def hook(mod, args, output):
            value = output
            if pick is not None and isinstance(output, (tuple, list)):
                value = output[pick]
            self._store(name, value, heads)
        self.handles.append(module.register_forward_hook(hook))

    def _in(self, module, name, heads=False):
        def hook(mod, args):
            self._store(name, args[0], heads)
        self.handles.append(module.register_forward_pre_hook(hook))

    def add_rope_taps(self) -> None:
        """q_rope / k_rope with transformers' own apply_rotary_pos_emb, where transformers applies it."""
        cos, sin = self.taps.pop("_rope_full")
        for i, layer in enumerate(self.model.model.layers):
            if getattr(layer.self_attn, "sliding_window", "all") is None:
                continue  # Cohere2 full-attention layer: NoPE
            p = f"layers.{i}."
            src = "_normed" if p + "q_normed" in self.taps else ""
            B, T = self.taps[p + "q"].shape[:2]
            q = self.taps["_torch." + p + "q" + src].reshape(B, T, self.H, self.Dh).transpose(1, 2)
            k = self.taps["_torch." + p + "k" + src].reshape(B, T, self.K, self.Dh).transpose(1, 2)
            q_rot, k_rot = self.modeling.apply_rotary_pos_emb(q, k, cos, sin)
            self.taps[p + "q_rope"] = _np(q_rot.transpose(1, 2))
            self.taps[p + "k_rope"] = _np(k_rot.transpose(1, 2))

    def remove(self):
        for h in self.handles:
            h.remove()


def forward_taps(model, ids: list[int]) -> dict[str, np.ndarray]:
    """All taps of one prompt (batch axis dropped)."""
    import torch
    hooks = TapHooks(model)
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
            hooks.add_rope_taps()
    finally:
        hooks.remove()
    taps = {k: v for k, v in hooks.taps.items() if not k.startswith("_")}
    hs = out.hidden_states
    taps["embed_tokens"] = _np(hs[0])
    for i in range(len(hs) - 2):  # hidden_states[i + 1] is layer i's output, except the last (final-normed)
        taps[f"layers.{i}.output"] = _np(hs[i + 1])
    taps["norm"] = _np(hs[-1])
    taps["logits"] = _np(out.logits)
    return {k: v[0] for k, v in taps.items()}


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def greedy(model, ids: list[int], n: int, k: int) -> dict[str, np.ndarray]:
    """n greedy steps, each a full forward pass over prompt + generated (no cache: independent of the
    cache code path); EOS is not special."""
    import torch
    seq, rows = list(ids), []
    with torch.no_grad():
        for step in range(n + 1):
            rows.append(_np(model(input_ids=torch.tensor([seq])).logits[0, -1]))
            if step < n:
                seq.append(int(np.argmax(rows[-1])))
    step_logits = np.stack(rows)
    lp = log_softmax(step_logits)
    order = np.argsort(-lp, axis=-1, kind="stable")[:, :k]
    return {"step_logits": step_logits, "generated_ids": np.array(seq[len(ids):], dtype=np.int64),
            "topk_ids": order.astype(np.int64), "topk_logprobs": np.take_along_axis(lp, order, -1)}


def order_key(name: str):
    ops = ["input_layernorm", "q", "k", "v", "q_normed", "k_normed", "q_rope", "k_rope", "attn_probs",
           "attn_context", "attn_out", "mlp_gate", "mlp_up", "mlp_act", "mlp_out", "output"]
    parts = name.split(".")
    if parts[0] == "layers":
        return (1, int(parts[1]), ops.index(parts[2]))
    return (0, ["embed_tokens", "rope_cos", "rope_sin"].index(name), 0) if name.startswith(("embed", "rope")) \
        else (2, ["norm", "logits"].index(name), 0)


def make(model_dir, prompts, out, generate=0, top_k=5, dtype="float64", max_attn_bytes=32 * 2**20) -> Path:
    import torch
    import transformers
    from safetensors.numpy import save_file

    model_dir, out = Path(model_dir), Path(out)
    model = load_model(model_dir, dtype)
    cfg = model.config
    attn_bytes = sum(cfg.num_hidden_layers * cfg.num_attention_heads * len(p) ** 2 * 8 for p in prompts)
    omitted = {}
    inputs, taps, outputs, shapes = {}, {}, {}, {}
    for p, ids in enumerate(prompts):
        pre = f"prompts.{p}."
        T = len(ids)
        inputs[pre + "input_ids"] = np.array(ids, dtype=np.int64)
        inputs[pre + "attention_mask"] = np.ones(T, dtype=np.int64)
        inputs[pre + "position_ids"] = np.arange(T, dtype=np.int64)
        for name, a in forward_taps(model, ids).items():
            if name.endswith("attn_probs") and attn_bytes > max_attn_bytes:
                omitted["attn_probs"] = f"size cap: {attn_bytes} bytes > {max_attn_bytes}"
                continue
            taps[pre + name] = np.ascontiguousarray(a, dtype=np.float64)
            shapes.setdefault(name, []).append(list(a.shape))
        for name, a in greedy(model, ids, generate, top_k).items():
            outputs[pre + name] = np.ascontiguousarray(a)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": SCHEMA, "schema_version": str(SCHEMA_VERSION)}
    save_file(inputs, str(out / "inputs.safetensors"), metadata=meta)
    save_file(taps, str(out / "taps.safetensors"), metadata=meta)
    save_file(outputs, str(out / "outputs.safetensors"), metadata=meta)
    files = {}
    for name in sorted(set(HASHED) | {f.name for f in model_dir.glob("*.safetensors")}):
        if (model_dir / name).is_file():
            raw = (model_dir / name).read_bytes()
            files[name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "producer": {"name": "transformers", "version": transformers.__version__, "torch": torch.__version__,
                     "tool": "tools/transformers_bundle.py", "attn_implementation": "eager"},
        "precision": "float32", "precision_note": PRECISION_NOTE, "dtype": "F64",
        "made_with": {"model_dtype": dtype, "generate": generate, "top_k": top_k,
                      "greedy": "full forward per step, no cache; EOS not special"},
        "model": {"name": model_dir.resolve().name, "model_type": cfg.model_type, "files": files},
        "config": json.loads((model_dir / "config.json").read_text()),
        "prompts": [{"index": p, "num_tokens": len(ids), "generated": generate, "text": None}
                    for p, ids in enumerate(prompts)],
        "taps": [{"name": n, "shapes": shapes[n], "dtype": "F64"} for n in sorted(shapes, key=order_key)],
        "derived_taps": {"q_rope": "modeling module's apply_rotary_pos_emb on the hooked q (or q_norm output) "
                         "and rotary_emb's cos/sin", "k_rope": "same, for k"},
        "omitted_taps": omitted,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint folder transformers can load")
    ap.add_argument("--ids", required=True, help="token ids, one prompt a line, space-separated")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--generate", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--max-attn-bytes", type=int, default=32 * 2**20)
    args = ap.parse_args(argv)
    out = make(args.model, read_ids(args.ids), args.output, args.generate, args.top_k, args.dtype, args.max_attn_bytes)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
