"""``pycohere golden make|check|diff`` (also ``python -m pycohere.golden``): golden bundles from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoints.probe import probe
from ..errors import CheckpointNotFoundError, InputError
from ..golden.bundle import DEFAULT_MAX_ATTN_BYTES, DEFAULT_TOP_K, PROFILES, Bundle
from ..golden.compare import Report, compare_bundles, verify_model
from ..golden.job import DEFAULT_CHUNK, GoldenJob, TaskStore, tokenize
from ..golden.make import make_bundle, rerun
from ..model import AutoModelForCausalLM
from .common import add_compute_options, add_model_option
from .runner import run_commands


def read_ids_file(path: str | Path) -> list[list[int]]:
    """One prompt a line, space-separated token ids; blank lines and lines starting with '#' skipped."""
    text = _read_text(path, "--ids")
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            prompts.append([int(t) for t in line.replace(",", " ").split()])
        except ValueError:
            bad = next(t for t in line.replace(",", " ").split() if not t.lstrip("-").isdigit())
            raise InputError(f"{path} line {n}: {bad!r} is not an integer token id; --ids files hold one "
                             "prompt a line as space-separated token ids") from None
    if not prompts:
        raise InputError(f"{path} holds no prompt; write one prompt a line as space-separated token ids")
    return prompts


def read_prompts_file(path: str | Path) -> list[str]:
    """One text prompt a line (blank lines skipped); '\\n' inside a line stands for a newline."""
    lines = [line.replace("\\n", "\n") for line in _read_text(path, "--prompts").splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path} holds no prompt; write one text prompt a line")
    return lines


def _read_text(path, flag) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{flag} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"{flag} file {path} is not UTF-8 text") from None


def _load_model(path, dtype: str = "float64", backend: str = "numpy"):
    found = probe(path)
    return AutoModelForCausalLM.from_pretrained(found, dtype=dtype, backend=backend), found.path


def cmd_make(args) -> int:
    given = args.model if isinstance(args.model, list) else [args.model] if args.model else []
    models = list(getattr(args, "checkpoints", None) or []) + given
    if not models:
        raise InputError("golden make needs a checkpoint: pycohere golden make MODEL [MODEL ...] or --model MODEL")
    scheduler, cache = getattr(args, "scheduler", None), getattr(args, "cache", None)
    texts = read_prompts_file(args.prompts) if args.prompts else None
    ids = None if args.prompts else read_ids_file(args.ids)
    patterns = [p.strip() for p in args.taps.split(",") if p.strip()] if args.taps else ["*"]
    if len(models) == 1 and scheduler is None and cache is None:  # one bundle, in this process
        model, model_dir = _load_model(models[0], "float64", "numpy")
        prompts = tokenize(model_dir, texts) if texts else ids
        bundle = make_bundle(model, prompts, texts=texts, taps=patterns, generate=args.generate, top_k=args.top_k,
                             max_attn_bytes=args.max_attn_bytes, model_dir=model_dir, timestamp=args.timestamp)
        bundle.save(args.output)
        _report(Path(args.output), bundle, args.generate)
        return 0
    if cache is None and scheduler is not None:
        cache = str(Path(args.output)) + ".tasks"
    job = GoldenJob(models, Path(args.output), texts, ids, patterns, args.generate, args.top_k, args.max_attn_bytes,
                    args.timestamp, getattr(args, "chunk", DEFAULT_CHUNK), TaskStore(cache) if cache else None)
    if scheduler is None:
        done = job.run()
    else:
        from ..parallel.golden_dask import dask_executor
        with dask_executor(scheduler, getattr(args, "workers", None)) as executor:
            done = job.run(executor)
    for path, bundle, ran, found in done:
        _report(path, bundle, args.generate, f"; {ran} task(s) run, {found} found in {cache}" if cache else "")
    return 0


def _report(path: Path, bundle: Bundle, generate: int, tasks: str = "") -> None:
    n_taps = sum(len(t) for t in bundle.taps)
    print(f"wrote {path}: {bundle.num_prompts} prompt(s), {n_taps} tap tensors, "
          f"{generate} generated token(s) each (float64 spec){tasks}")
    for name, why in bundle.manifest["omitted_taps"].items():
        print(f"  omitted {name}: {why}")


def cmd_check(args) -> int:
    ref = Bundle.load(args.bundle)
    found = probe(args.model)
    if not args.allow_model_mismatch:
        verify_model(ref, Path(found.path))
    model, _ = _load_model(found, args.dtype, args.backend)
    cand = rerun(ref, model)
    title = (f"golden check: A = {args.bundle} ({ref.producer()}, {ref.precision})  "
             f"B = pycohere on {args.model} ({args.dtype}, {model.backend})")
    return _finish(compare_bundles(ref, cand, args.profile, args.tolerance_scale, title), args)


def cmd_diff(args) -> int:
    a, b = Bundle.load(args.a), Bundle.load(args.b)
    title = f"golden diff: A = {args.a} ({a.producer()}, {a.precision})  B = {args.b} ({b.producer()}, {b.precision})"
    return _finish(compare_bundles(a, b, args.profile, args.tolerance_scale, title), args)


def _finish(report: Report, args) -> int:
    print(report.format(failures_only=args.failures_only))
    return 0 if report.passed else 1


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _add_compare_options(p) -> None:
    p.add_argument("--profile", choices=PROFILES, help="tolerance profile (default: float32 if either side "
                   "computes in float32, else float64)")
    p.add_argument("--tolerance-scale", type=float, default=1.0, metavar="X",
                   help="multiply every tolerance by X (deeper models accumulate more rounding)")
    p.add_argument("--failures-only", action="store_true", help="print only failing rows and the summary")


def register(subparsers) -> None:
    """Add ``golden make|check|diff`` to the ``pycohere`` command line."""
    g = subparsers.add_parser("golden", help="golden bundles: make fixtures, check an implementation, diff two bundles",
                              description="Golden bundles of every intermediate (docs/golden-format.md). "
                              "Exit codes: 0 agree, 1 mismatch, 2 usage or input error.")
    gsub = g.add_subparsers(dest="golden_command", metavar="{make,check,diff}")
    g.set_defaults(func=lambda args: (g.print_help(), 2)[1])

    mk = gsub.add_parser("make", help="run the float64 spec and write a bundle (several checkpoints: a batch job)",
                         description="Run the float64 spec on the prompts and write a golden bundle: OUT itself for "
                         "one checkpoint, OUT/<checkpoint name> for each of several. --scheduler runs the "
                         "(checkpoint, prompt chunk) tasks on Dask, with the same bytes as the serial run.")
    # no --dtype/--backend: a golden bundle is by definition the float64 NumPy specification
    mk.add_argument("checkpoints", nargs="*", metavar="MODEL", help="checkpoint folder(s) or hub repo id(s)")
    mk.add_argument("--model", "-m", action="append", default=None, metavar="MODEL",
                    help="a checkpoint, the same as a MODEL argument (may be repeated)")
    src = mk.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", metavar="FILE", help="text prompts, one a line (needs the model's tokenizer.json)")
    src.add_argument("--ids", metavar="FILE", help="token ids, one prompt a line, space-separated")
    mk.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="folder to write")
    mk.add_argument("--taps", metavar="PATTERNS", help="comma-separated fnmatch patterns of tap names "
                    "(default: all), e.g. 'embed_tokens,layers.0.*,logits'")
    mk.add_argument("--generate", type=_positive_int, default=0, metavar="N", help="greedy tokens to generate")
    mk.add_argument("--top-k", type=_positive_int, default=DEFAULT_TOP_K, metavar="K", help="top-k log-probs kept per step")
    mk.add_argument("--max-attn-bytes", type=_positive_int, default=DEFAULT_MAX_ATTN_BYTES, metavar="N",
                    help="omit attention probabilities when they would take more bytes (0: always omit)")
    mk.add_argument("--timestamp", action="store_true", help="record the creation time (makes files differ run to run)")
    job = mk.add_argument_group("batch job")
    job.add_argument("--scheduler", metavar="local|tcp://HOST:8786", help="run the tasks on Dask distributed: "
                     "'local' starts a cluster on this machine, an address uses a running scheduler "
                     "(needs pip install 'pycohere[dask]'); default: in this process")
    job.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="with --scheduler local: worker processes (default: the CPU count)")
    job.add_argument("--chunk", type=_positive_int, default=DEFAULT_CHUNK, metavar="K",
                     help=f"prompts per task (default {DEFAULT_CHUNK})")
    job.add_argument("--cache", metavar="DIR", help="store of finished tasks, found again on a rerun "
                     "(content-addressed; default with --scheduler: OUT.tasks)")
    mk.set_defaults(func=cmd_make)

    ck = gsub.add_parser("check", help="re-run pycohere on a bundle's inputs and compare")
    ck.add_argument("bundle")
    add_model_option(ck, required=True)
    add_compute_options(ck, dtype="float64", backend="numpy")
    ck.add_argument("--allow-model-mismatch", action="store_true",
                    help="compare even if the checkpoint's hashes differ from the bundle's")
    _add_compare_options(ck)
    ck.set_defaults(func=cmd_check)

    df = gsub.add_parser("diff", help="compare two bundles (A is the reference)")
    df.add_argument("a")
    df.add_argument("b")
    _add_compare_options(df)
    df.set_defaults(func=cmd_diff)


def main(argv=None) -> int:
    """``python -m pycohere.golden make|check|diff ...``: the same as ``pycohere golden ...``."""
    return run_commands(register, "golden", sys.argv[1:] if argv is None else argv)
