"""Command line: ``pycohere <command>`` (also ``python -m pycohere``).

Errors print as one readable line and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import PycohereError


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_inspect(args) -> int:
    """Config summary, parameter count, tensor table and memory estimates of a checkpoint."""
    from .config import AutoConfig
    from .weights import Checkpoint, check_manifest

    config = AutoConfig.from_pretrained(args.model)
    ckpt = Checkpoint(args.model)
    check_manifest(config, {n: t.shape for n, t in ckpt.tensors.items()}, where=str(args.model))
    c = config
    print(f"{args.model}: model_type {c.model_type}")
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
    rows = [(n, t.shape, t.dtype, t.nbytes) for n, t in sorted(ckpt.tensors.items())]
    if not args.all and len(rows) > 24:
        shown = [r for r in rows if ".layers." not in r[0] or ".layers.0." in r[0]]
        hidden = len(rows) - len(shown)
    else:
        shown, hidden = rows, 0
    w = max(len(r[0]) for r in shown)
    print(f"\n  {'tensor':<{w}}  {'shape':<16} {'dtype':<5} {'bytes':>10}")
    for name, shape, dtype, nbytes in shown:
        print(f"  {name:<{w}}  {str(list(shape)):<16} {dtype:<5} {_human(nbytes):>10}")
    if hidden:
        print(f"  ... {hidden} more tensors of layers 1-{c.num_hidden_layers - 1} (--all shows them)")
    n_params = sum(t.array.size for n, t in ckpt.tensors.items() if not n.endswith("inv_freq"))
    kv_per_token = 2 * c.num_key_value_heads * c.get_head_dim() * 4  # float32 K and V
    kv_layers = c.num_hidden_layers
    print(f"\n  parameters {n_params:,} in {len(ckpt.files)} file(s), {_human(ckpt.nbytes)} on disk")
    print(f"  weights in RAM: {_human(ckpt.nbytes)} memory-mapped (float32 copy would be {_human(4 * n_params)})")
    print(f"  KV cache (float32): {_human(kv_per_token * kv_layers)} per token"
          + (" for full layers; sliding layers cap at their window" if getattr(c, "layer_types", None) else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycohere", description="Cohere Command-R family in NumPy: inspect "
                                "checkpoints and run them on a CPU.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command")
    ins = sub.add_parser("inspect", help="summarise a checkpoint: config, tensors, memory")
    ins.add_argument("model", help="checkpoint folder (config.json + safetensors)")
    ins.add_argument("--all", action="store_true", help="list every tensor")
    ins.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (PycohereError, OSError) as e:
        if args.debug:
            raise
        print(f"pycohere: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
