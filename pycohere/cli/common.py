"""What the commands share: the model options, loading model and tokenizer from one probe, sizes."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import DEMO_MODEL
from ..errors import CheckpointNotFoundError


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def demo_model_path() -> Path:
    """The bundled demo model (pycohere/demo), the default when --model is not given."""
    p = Path(DEMO_MODEL)
    if not (p / "config.json").exists():
        raise CheckpointNotFoundError(f"the bundled demo model is missing from {p}; reinstall pycohere or pass --model")
    return p


def load_model_and_tokenizer(args):
    """(model, tokenizer) for --model (default: the bundled demo model), from one probe of the path."""
    from ..checkpoints.probe import probe
    from ..model import AutoModelForCausalLM
    from ..text.tokenizer import CohereTokenizer
    found = probe(args.model if args.model else demo_model_path())
    model = AutoModelForCausalLM.from_pretrained(found, dtype=args.dtype, backend=args.backend,
                                                 activations=args.activations)
    return model, CohereTokenizer.from_pretrained(found)


def sampling_kwargs(args) -> dict:
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
              seed=args.seed)
    return {k: v for k, v in kw.items() if v is not None}


def add_model_args(p, sampling=True):
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
