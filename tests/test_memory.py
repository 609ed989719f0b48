"""Loading a bf16 checkpoint maps it; it does not copy it into RAM."""
import json
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

from conftest import ROOT
from helpers import _retag_dtype


def test_loading_a_200mb_bf16_checkpoint_raises_rss_by_under_10_percent(tmp_path):
    cfg = dict(model_type="cohere", vocab_size=100_000, hidden_size=1024, intermediate_size=2048,
               num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128)
    D, F, V, Dh = 1024, 2048, 100_000, 128
    rng = np.random.default_rng(0)
    bits = lambda *shape: rng.integers(0x3C00, 0x3D00, size=shape, dtype=np.uint16)  # small positive bf16
    t = {"model.embed_tokens.weight": bits(V, D), "model.norm.weight": bits(D)}
    for i in range(2):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": bits(D), p + "self_attn.q_proj.weight": bits(8 * Dh, D),
                  p + "self_attn.k_proj.weight": bits(2 * Dh, D), p + "self_attn.v_proj.weight": bits(2 * Dh, D),
                  p + "self_attn.o_proj.weight": bits(D, 8 * Dh), p + "mlp.gate_proj.weight": bits(F, D),
                  p + "mlp.up_proj.weight": bits(F, D), p + "mlp.down_proj.weight": bits(D, F)})
    save_file(t, str(tmp_path / "model.safetensors"))
    _retag_dtype(tmp_path / "model.safetensors", "U16", "BF16")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    del t
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "memory_probe.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    size = r["checkpoint_bytes"]
    assert size >= 200e6
    growth = r["rss_after_load"] - r["rss_before"]
    assert growth < 0.10 * size, f"loading grew RSS by {growth / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
