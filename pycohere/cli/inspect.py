"""``pycohere inspect``: config, tensor table (storage, bits per weight, block size) and memory of a checkpoint."""
from __future__ import annotations

import math

from ..checkpoints.manifest import check_manifest
from ..checkpoints.probe import probe
from ..kernels.dispatch import resolve_backend
from ..model import AutoModelForCausalLM
from .common import add_model_option, human, model_path

def cmd_inspect(args) -> int:
    """Config summary, parameter count, tensor table (storage type, bits per weight, block size)
    and memory estimates of a checkpoint: safetensors (float, pycohere-quantized, bitsandbytes,
    GPTQ, AWQ) or GGUF."""
    path = model_path(args)
    found = probe(path)
    config = found.config
    source = found.open_weights()  # logical tensor names, quantized or not
    check_manifest(config, source.shapes, where=str(path), problems=source.problems)
    c = config
    print(f"{path}: model_type {c.model_type}")
    print(f"  layers {c.num_hidden_layers}, hidden {c.hidden_size}, heads {c.num_attention_heads} "
          f"(kv {c.num_key_value_heads}, head dim {c.get_head_dim()}), ffn {c.intermediate_size} ({c.hidden_act}), "
          f"vocab {c.vocab_size}")
    print(f"  rope {c.rope_parameters}, max positions {c.max_position_embeddings}")
    extra = [f"logit_scale {c.logit_scale}", f"tied head {c.tie_word_embeddings}",
             f"attention bias {c.attention_bias}"]
    if hasattr(c, "use_qk_norm"):
        extra.append(f"qk-norm {c.use_qk_norm}")
    if getattr(c, "layer_types", None):
        n_sliding = sum(t == "sliding_attention" for t in c.layer_types)
        extra.append(f"{n_sliding} sliding (window {c.sliding_window}) + {c.num_hidden_layers - n_sliding} full (NoPE) layers")
    print("  " + ", ".join(extra))
    rows = source.tensor_table()
    if not args.all and len(rows) > 24:
        shown = [r for r in rows if ".layers." not in r.name or ".layers.0." in r.name]
        hidden = len(rows) - len(shown)
    else:
        shown, hidden = rows, 0
    w = max(len(r.name) for r in shown)
    sw = max(len("storage"), *(len(r.storage) for r in shown))
    print(f"\n  {'tensor':<{w}}  {'shape':<16} {'storage':<{sw}} {'bits/w':>6} {'block':>5} {'bytes':>10}")
    for r in shown:
        block = "-" if r.block_size is None else str(r.block_size)
        print(f"  {r.name:<{w}}  {str(list(r.shape)):<16} {r.storage:<{sw}} {r.bits_per_weight:>6.2f} {block:>5} "
              f"{human(r.nbytes):>10}")
    if hidden:
        print(f"  ... {hidden} more tensors of layers 1-{c.num_hidden_layers - 1} (--all shows them)")
    by_storage: dict[str, list[int]] = {}
    for r in rows:
        entry = by_storage.setdefault(r.storage, [0, 0])
        entry[0] += 1
        entry[1] += r.nbytes
    print("  storage: " + ", ".join(f"{k} {n} tensors {human(b)}" for k, (n, b) in sorted(by_storage.items())))
    n_params = sum(math.prod(shape) for n, shape in source.shapes.items() if not n.endswith("inv_freq"))
    total = sum(r.nbytes for r in rows)
    kv_per_token = 2 * c.num_key_value_heads * c.get_head_dim() * 4  # float32 K and V
    kv_layers = c.num_hidden_layers
    print(f"\n  parameters {n_params:,} in {len(source.files)} file(s), {human(total)} of weights "
          f"({8 * total / max(1, n_params):.2f} bits per parameter)")
    how = "repacked into RAM at load" if getattr(source, "method", None) in ("gptq", "awq") else "memory-mapped"
    print(f"  weights in RAM: {human(total)} {how} (float32 copy would be {human(4 * n_params)})")
    print(f"  KV cache (float32): {human(kv_per_token * kv_layers)} per token"
          + (" for full layers; sliding layers cap at their window" if getattr(c, "layer_types", None) else ""))
    backend = resolve_backend(getattr(args, "backend", None))
    if backend == "numba":  # what a load would run (mapping the weights costs no copy; nothing is compiled)
        model = AutoModelForCausalLM.from_pretrained(found, backend=backend)
        print("\n  kernels: " + "\n  ".join(model.kernel_report()))
    return 0


def register(sub) -> None:
    ins = sub.add_parser("inspect", help="summarise a checkpoint: config, tensors, memory")
    # no --dtype/--backend: inspect reads the config and the tensor headers and runs no model (it names the
    # kernels a load with the default backend would use)
    add_model_option(ins, positional=True)
    ins.add_argument("--all", action="store_true", help="list every tensor")
    ins.set_defaults(func=cmd_inspect)
