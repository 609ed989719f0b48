"""What the commands share: the model options, loading model and tokenizer from one probe, sizes."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import DEMO_MODEL
from ..errors import CheckpointNotFoundError, InputError


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


DTYPES = ("float32", "float64")
BACKENDS = ("auto", "numba", "numpy")


def add_model_option(p, positional: bool = False, required: bool = False) -> None:
    """``--model/-m`` of every command that reads a checkpoint (one spelling everywhere). ``positional``:
    the checkpoint may also be given as the first argument (``pycohere inspect PATH``); ``model_path``
    resolves the two."""
    what = "checkpoint folder, .gguf file or hub repo id"
    p.add_argument("--model", "-m", default=None, required=required,
                   help=what if required else f"{what} (default: the bundled demo model)")
    if positional:
        p.add_argument("checkpoint", nargs="?", default=None, metavar="MODEL", help=f"the same as --model")


def add_compute_options(p, dtype: str = "float32", backend: str = "auto") -> None:
    """``--dtype`` and ``--backend`` of every command that runs a model (from_pretrained's options)."""
    p.add_argument("--dtype", default=dtype, choices=DTYPES, help=f"compute dtype (default {dtype})")
    p.add_argument("--backend", default=backend, choices=BACKENDS,
                   help=f"numpy: the readable spec; numba: compiled twins (default {backend})")


def model_path(args):
    """The checkpoint of ``--model`` or the positional MODEL (not both), else the bundled demo model."""
    given = [v for v in (getattr(args, "checkpoint", None), args.model) if v is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise InputError(f"two checkpoints given ({given[0]!r} and --model {given[1]!r}); give one")
    return given[0] if given else demo_model_path()


def add_model_args(p, sampling=True):
    add_model_option(p)
    add_compute_options(p)
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
