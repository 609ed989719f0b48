"""Benchmark: what hooks and run_with_cache cost, and that the forward without them is unchanged (issue 17).

    python tools/bench_hooks.py [--baseline TREE] [--reps 7] [--processes 3] [--tokens 64] [--decode 32]

On the bundled demo model (numba backend, float32) it times, interleaved in worker processes:
the plain forward (the fast engine), ``hooks=None``, a recorder keeping only the logits (the spec layer),
one identity hook, an identity hook on every tap (``"*"``), ``run_with_cache`` of everything, and a greedy
decode. ``--baseline TREE`` runs the plain forward and the decode also with another pycohere source tree
first on PYTHONPATH (e.g. ``git archive 5176bdf | tar -x -C /tmp/pre-hooks``, the commit before hooks) and
checks that its logits and tokens are bit for bit the same. Not a test: the numbers go to
docs/introspection.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


CASES = ("plain", "hooks=None", "recorder(logits)", "one identity hook", "identity hook on every tap",
         "run_with_cache (all taps)", "greedy decode")
BASELINE_CASES = ("plain", "greedy decode")  # what a tree without hooks can run


def worker(cases, tokens: int, decode: int, rounds: int) -> dict:
    """Every case once per round, interleaved (so a burst of load on the shared machine hits all cases
    alike): {case: {"times": [...], "sha256": digest of its output}}."""
    import hashlib

    import numpy as np

    import pycohere
    model = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numba")
    tok = pycohere.CohereTokenizer.from_pretrained(pycohere.DEMO_MODEL)
    text = (Path(pycohere.DEMO_MODEL) / "heldout.txt").read_text(encoding="utf-8")
    ids = np.array([tok.encode(text)[:tokens]])
    calls = {
        "plain": lambda: model(ids).logits,
        "hooks=None": lambda: model(ids, hooks=None).logits,
        "recorder(logits)": lambda: model.run_with_cache(ids, names=["logits"])[0].logits,
        "one identity hook": lambda: model(ids, hooks={"layers.0.attn_out": lambda a, n: a}).logits,
        "identity hook on every tap": lambda: model(ids, hooks={"*": lambda a, n: a}).logits,
        "run_with_cache (all taps)": lambda: model.run_with_cache(ids)[0].logits,
        "greedy decode": lambda: model.generate(ids[:, :8], max_new_tokens=decode, do_sample=False,
                                                min_new_tokens=decode),
    }
    result = {}
    for case in cases:  # compile and warm up
        out = calls[case]()
        result[case] = {"times": [], "sha256": hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()}
    for _ in range(rounds):
        for case in cases:
            t = time.perf_counter()
            calls[case]()
            result[case]["times"].append(time.perf_counter() - t)
    return result


def run(cases, tree: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--worker", ",".join(cases), "--tokens", str(args.tokens), "--decode",
           str(args.decode), "--reps", str(args.reps)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="another pycohere source tree to compare the plain forward with")
    p.add_argument("--reps", type=int, default=7, help="rounds per worker process")
    p.add_argument("--processes", type=int, default=3, help="worker processes per tree, alternating trees")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker.split(","), args.tokens, args.decode, args.reps)))
        return
    this, base = {c: [] for c in CASES}, {c: [] for c in BASELINE_CASES}
    digests, base_digests = {}, {}
    for _ in range(args.processes):
        for case, r in run(CASES, ROOT, args).items():
            this[case] += r["times"]
            digests[case] = r["sha256"]
        if args.baseline:
            for case, r in run(BASELINE_CASES, args.baseline, args).items():
                base[case] += r["times"]
                base_digests[case] = r["sha256"]
    ms = lambda xs: f"{statistics.median(xs) * 1e3:.1f} ms (min {min(xs) * 1e3:.1f})"  # noqa: E731
    plain = statistics.median(this["plain"])
    print(f"demo model, numba backend, float32, {args.tokens}-token prompt (decode: {args.decode} new tokens "
          f"after 8), median (and min) of {args.processes} processes x {args.reps} interleaved rounds\n")
    head = "| call | this tree | vs plain |" + (" tree before hooks | same output bits |" if args.baseline else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for case in CASES:
        line = f"| {case} | {ms(this[case])} | {statistics.median(this[case]) / plain:.2f}x |"
        if args.baseline:
            line += (f" {ms(base[case])} | {'yes' if base_digests[case] == digests[case] else 'NO'} |"
                     if case in base else " | |")
        print(line)
    same = digests["plain"] == digests["hooks=None"]
    print(f"\nplain and hooks=None give the same logits bit for bit: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
