"""Command line: ``pycohere <command>`` (also ``python -m pycohere``).

Errors print as one readable line and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import math
import sys

from .errors import InputError, PycohereError


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_inspect(args) -> int:
    """Config summary, parameter count, tensor table (storage type, bits per weight, block size)
    and memory estimates of a checkpoint: safetensors (float, pycohere-quantized, bitsandbytes,
    GPTQ, AWQ) or GGUF."""
    from .formats import load_config, open_weights
    from .weights import check_manifest

    config = load_config(args.model)
    source = open_weights(args.model, config)  # logical tensor names, quantized or not
    check_manifest(config, source.shapes, where=str(args.model), problems=source.problems)
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
              f"{_human(r.nbytes):>10}")
    if hidden:
        print(f"  ... {hidden} more tensors of layers 1-{c.num_hidden_layers - 1} (--all shows them)")
    by_storage: dict[str, list[int]] = {}
    for r in rows:
        entry = by_storage.setdefault(r.storage, [0, 0])
        entry[0] += 1
        entry[1] += r.nbytes
    print("  storage: " + ", ".join(f"{k} {n} tensors {_human(b)}" for k, (n, b) in sorted(by_storage.items())))
    n_params = sum(math.prod(shape) for n, shape in source.shapes.items() if not n.endswith("inv_freq"))
    total = sum(r.nbytes for r in rows)
    kv_per_token = 2 * c.num_key_value_heads * c.get_head_dim() * 4  # float32 K and V
    kv_layers = c.num_hidden_layers
    print(f"\n  parameters {n_params:,} in {len(source.files)} file(s), {_human(total)} of weights "
          f"({8 * total / max(1, n_params):.2f} bits per parameter)")
    how = "repacked into RAM at load" if getattr(source, "method", None) in ("gptq", "awq") else "memory-mapped"
    print(f"  weights in RAM: {_human(total)} {how} (float32 copy would be {_human(4 * n_params)})")
    print(f"  KV cache (float32): {_human(kv_per_token * kv_layers)} per token"
          + (" for full layers; sliding layers cap at their window" if getattr(c, "layer_types", None) else ""))
    return 0


# --- loading -----------------------------------------------------------------------------------------
def demo_model_path():
    """The bundled demo model (pycohere/demo), the default when --model is not given."""
    from pathlib import Path
    from . import DEMO_MODEL
    from .errors import CheckpointNotFoundError
    p = Path(DEMO_MODEL)
    if not (p / "config.json").exists():
        raise CheckpointNotFoundError(f"the bundled demo model is missing from {p}; reinstall pycohere or pass --model")
    return p


def _load(args):
    """(model, tokenizer) for --model (default: the bundled demo model)."""
    from .hub import resolve
    from .model import AutoModelForCausalLM
    from .tokenizer import CohereTokenizer
    path = resolve(args.model) if args.model else demo_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=args.dtype, backend=args.backend,
                                                 activations=args.activations)
    return model, CohereTokenizer.from_pretrained(path)


def _sampling_kwargs(args) -> dict:
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
              seed=args.seed)
    return {k: v for k, v in kw.items() if v is not None}


def _add_model_args(p, sampling=True):
    p.add_argument("--model", "-m", default=None, help="checkpoint folder, .gguf file or hub repo id (default: the bundled demo model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"])
    p.add_argument("--activations", default="float32", choices=["float32", "llama.cpp"],
                   help="llama.cpp: round each matmul's input as llama.cpp does (reproduces its numbers on GGUF)")
    if sampling:
        g = p.add_argument_group("generation")
        g.add_argument("--max-new-tokens", "-n", type=int, default=64)
        g.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                       help="sample instead of greedy decoding (default: the model's generation_config)")
        g.add_argument("--temperature", type=float, default=None)
        g.add_argument("--top-k", type=int, default=None)
        g.add_argument("--top-p", type=float, default=None)
        g.add_argument("--min-p", type=float, default=None)
        g.add_argument("--repetition-penalty", type=float, default=None)
        g.add_argument("--seed", type=int, default=None, help="seed of the sampler (reproducible runs)")


class _CountingStreamer:
    """Wraps a TextStreamer: also counts the generated tokens and times the first one."""

    def __init__(self, inner):
        import time
        self.inner, self.n, self.first, self.t0 = inner, None, None, time.perf_counter()

    def put(self, value):
        import time
        import numpy as np
        if self.n is None:  # the first put is the prompt (transformers' streamer protocol)
            self.n = 0
        else:
            self.n += int(np.asarray(value).size)
            if self.first is None:
                self.first = time.perf_counter() - self.t0
        self.inner.put(value)

    def end(self):
        self.inner.end()


def cmd_generate(args) -> int:
    """Stream a continuation of the prompt (or of standard input when piped)."""
    import json
    import time
    from .generation import TextStreamer
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise InputError("give a prompt: pycohere generate \"text\" (or pipe it in on standard input)")
        prompt = sys.stdin.read()
        prompt = prompt[:-1] if prompt.endswith("\n") else prompt
    model, tok = _load(args)
    if args.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tok.encode(prompt)
    kw = _sampling_kwargs(args)
    t0 = time.perf_counter()
    if args.json:
        out = model.generate([ids], **kw)[0, len(ids):]
        dt = time.perf_counter() - t0
        text = tok.decode(out.tolist(), skip_special_tokens=True)
        print(json.dumps({"prompt": prompt, "completion": text, "prompt_tokens": len(ids),
                          "completion_tokens": int(out.size), "seconds": round(dt, 4),
                          "tokens_per_second": round(out.size / dt, 2) if dt > 0 else None,
                          "token_ids": out.tolist()}, ensure_ascii=False))
        return 0
    if not args.chat:
        print(prompt, end="", flush=True)
    streamer = _CountingStreamer(TextStreamer(tok, skip_prompt=True, skip_special_tokens=True))
    model.generate([ids], streamer=streamer, **kw)
    dt = time.perf_counter() - t0
    first = f", first token after {streamer.first:.2f} s" if streamer.first is not None else ""
    print(f"[{streamer.n} tokens in {dt:.2f} s: {streamer.n / dt:.1f} tokens/s{first}]", file=sys.stderr)
    return 0


CHAT_HELP = "commands: /system TEXT (set the system message), /reset (forget the conversation), /exit"


def cmd_chat(args) -> int:
    """Interactive chat with history; works on a terminal and with piped input."""
    from .generation import TextStreamer
    model, tok = _load(args)
    tty = sys.stdin.isatty()
    system = args.system
    history: list[dict] = []
    if tty:
        print(f"pycohere chat ({model.config.model_type}); {CHAT_HELP}", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                history.clear()
                print("[conversation reset]", file=sys.stderr)
            elif cmd == "/system":
                system = rest.strip() or None
                history.clear()
                print(f"[system message {'set' if system else 'cleared'}; conversation reset]", file=sys.stderr)
            else:
                print(f"[unknown command {cmd}; {CHAT_HELP}]", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        out = model.generate([ids], streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
                             **_sampling_kwargs(args))
        reply = tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
        history.append({"role": "assistant", "content": reply.strip()})
    return 0


def cmd_mask(args) -> int:
    """Print the attention masks the model applies to the prompt."""
    from .visualize import AttentionMaskVisualizer
    from .hub import resolve
    path = resolve(args.model)
    AttentionMaskVisualizer(path, color=sys.stdout.isatty() and not args.no_color)(args.prompt)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycohere", description="Cohere Command-R family in NumPy: inspect "
                                "checkpoints and run them on a CPU.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command")
    ins = sub.add_parser("inspect", help="summarise a checkpoint: config, tensors, memory")
    ins.add_argument("model", help="checkpoint folder (config.json + safetensors) or .gguf file")
    ins.add_argument("--all", action="store_true", help="list every tensor")
    ins.set_defaults(func=cmd_inspect)
    from . import explain, golden  # local import keeps `pycohere inspect` start-up light
    golden.register(sub)
    explain.register(sub)
    from .quant import convert as quant_convert
    quant_convert.register(sub)
    from . import gguf_export
    gguf_export.register(sub)

    gen = sub.add_parser("generate", help="continue a prompt, streaming the tokens",
                         description="Continue PROMPT (or standard input when piped) and stream the tokens; "
                                     "prints tokens/s to stderr at the end.")
    gen.add_argument("prompt", nargs="?", default=None, help="the text to continue (default: read standard input)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    _add_model_args(gen)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat (also works with piped input)",
                          description="Chat with the model. " + CHAT_HELP + ".")
    chat.add_argument("--system", default=None, help="system message (preamble)")
    _add_model_args(chat)
    chat.set_defaults(func=cmd_chat)

    mask = sub.add_parser("mask", help="picture the attention masks for a prompt",
                          description="Show which tokens attend to which, with the sliding-window panel for "
                                      "Cohere2 models (as transformers' AttentionMaskVisualizer).")
    mask.add_argument("model", help="checkpoint folder or hub repo id (with tokenizer files)")
    mask.add_argument("prompt")
    mask.add_argument("--no-color", action="store_true")
    mask.set_defaults(func=cmd_mask)
    return p


def main(argv=None) -> int:
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse and dispatch; every pycohere-style command line (also ``python -m pycohere.golden``)
    handles errors here: one line on stderr and exit 2, a traceback only with --debug."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except BrokenPipeError:  # `pycohere ... | head`: the reader left; not an error (Python docs recipe)
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (PycohereError, OSError) as e:
        if args.debug:
            raise
        print(f"pycohere: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
