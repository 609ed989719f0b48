"""Write a random Cohere checkpoint of any shape as bf16 safetensors (for memory and speed benchmarks).

    python tools/make_synthetic_checkpoint.py OUT [--hidden 1024 --intermediate 2048 --layers 2
        --heads 8 --kv-heads 2 --vocab 100000 --seed 0]

Values are random bf16 bit patterns of moderate magnitude; the file is written tensor by tensor so
the generator never holds the whole model.
"""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np


def tensor_shapes(hidden, intermediate, layers, heads, kv_heads, vocab, qk_norm=False):
    dh = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "self_attn.q_proj.weight": (heads * dh, hidden),
                       p + "self_attn.k_proj.weight": (kv_heads * dh, hidden),
                       p + "self_attn.v_proj.weight": (kv_heads * dh, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * dh),
                       p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                       p + "mlp.down_proj.weight": (hidden, intermediate)})
        if qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (heads, dh), p + "self_attn.k_norm.weight": (kv_heads, dh)})
    return shapes


def write(out, hidden=1024, intermediate=2048, layers=2, heads=8, kv_heads=2, vocab=100_000, seed=0,
          qk_norm=False, logit_scale=0.0625):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(hidden, intermediate, layers, heads, kv_heads, vocab, qk_norm)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(seed)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, shape in shapes.items():
            if "norm" in name:  # norm weights near 1 (bf16 0x3F80 = 1.0)
                bits = rng.integers(0x3F70, 0x3F90, size=shape, dtype=np.uint16)
            else:  # |w| in ~[0.004, 0.03], random sign
                bits = rng.integers(0x3B80, 0x3D00, size=shape, dtype=np.uint16) | \
                    (rng.integers(0, 2, size=shape, dtype=np.uint16) << 15)
            f.write(bits.tobytes())
    cfg = dict(model_type="cohere", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
               max_position_embeddings=8192, rope_theta=8e6, logit_scale=logit_scale, use_qk_norm=qk_norm,
               tie_word_embeddings=True, torch_dtype="bfloat16", pad_token_id=0, bos_token_id=5,
               eos_token_id=255001 if vocab > 255001 else vocab - 1)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    for flag, default in (("hidden", 1024), ("intermediate", 2048), ("layers", 2), ("heads", 8),
                          ("kv-heads", 2), ("vocab", 100_000), ("seed", 0)):
        ap.add_argument(f"--{flag}", type=int, default=default)
    ap.add_argument("--qk-norm", action="store_true")
    a = ap.parse_args(argv)
    write(a.out, a.hidden, a.intermediate, a.layers, a.heads, a.kv_heads, a.vocab, a.seed, a.qk_norm)


if __name__ == "__main__":
    main()
