"""``pycohere explain``: walk one token through the network, op by op, with the COHERE differences."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from ..checkpoints.probe import probe
from ..errors import InputError, TokenizerError
from ..introspect.explain import explain
from ..introspect.report import write_report
from ..model import AutoModelForCausalLM
from ..text.tokenizer import CohereTokenizer
from .common import add_compute_options, add_model_option, model_path
from .runner import run_commands


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"--ids must be space-separated integers, e.g. --ids \"5 17 33\"; got {text!r}") from None
    if not ids:
        raise InputError("--ids is empty; give at least one token id")
    return ids


def parse_layers(text: str | None, n_layers: int) -> list[int] | None:
    if text is None:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"--layers takes layer indices and ranges like '0,1' or '0-3,39'; got {part!r}")
        lo = int(m.group(1)) % n_layers if int(m.group(1)) < 0 else int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        out += list(range(lo, hi + 1))
    return sorted(set(out))


def cmd_explain(args) -> int:
    args.model = model_path(args)
    found = probe(args.model)
    model_dir = found.path
    model = AutoModelForCausalLM.from_pretrained(found, dtype=args.dtype, backend=args.backend)
    tok = None
    if (Path(model_dir) / "tokenizer.json").is_file():
        tok = CohereTokenizer.from_pretrained(model_dir)
    if args.prompt is not None:
        if tok is None:
            raise TokenizerError(f"{model_dir} has no tokenizer.json, so --prompt cannot be tokenized; pass token "
                                 "ids instead, e.g. --ids \"5 17 33\"")
        ids = list(tok.encode(args.prompt))
    else:
        ids = parse_ids(args.ids)
    layers = parse_layers(args.layers, model.config.num_hidden_layers)
    if args.html:
        return write_html(model, ids, tok, layers, args)
    print(explain(model, ids, layers, tok, args.top_k, name=str(args.model), full=args.full))
    return 0


def write_html(model, ids, tok, layers, args) -> int:
    """--html FILE: the self-contained report (pycohere.introspect.report) instead of the terminal text."""
    path = write_report(model, ids, args.html, tok, layers=layers, top_k=args.top_k, name=str(args.model))
    print(f"wrote {path}: {len(ids)} tokens, {model.config.num_hidden_layers} layers, "
          f"{path.stat().st_size / 1024:.0f} KiB (open it in a browser; it needs no network)")
    return 0


def register(subparsers) -> None:
    """Add ``explain`` to the ``pycohere`` command line."""
    p = subparsers.add_parser("explain", help="walk one token through the network, op by op, with the COHERE differences",
                              description="Walk the last token of a prompt through the network: every operation "
                              "with its shape and summary statistics, and the places Cohere differs from Llama.")
    add_model_option(p, positional=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text (needs the model's tokenizer.json)")
    src.add_argument("--ids", help='token ids, e.g. "5 17 33"')
    p.add_argument("--layers", help="layers to show, e.g. '0,1' or '0-3,-1' (default: all)")
    add_compute_options(p, dtype="float64", backend="auto")
    p.add_argument("--top-k", type=int, default=5, help="next-token candidates to list")
    p.add_argument("--full", action="store_true", help="one line per tensor (k, v, k_normed, ... with full statistics)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (tokens, logit lens, attention "
                   "heatmaps, norms, attribution, the COHERE differences) to FILE instead of the text walkthrough")
    p.set_defaults(func=cmd_explain)


def main(argv=None) -> int:
    """``python -m pycohere.introspect.explain MODEL --ids ...`` (the same as ``pycohere explain ...``)."""
    return run_commands(register, "explain", sys.argv[1:] if argv is None else argv)
