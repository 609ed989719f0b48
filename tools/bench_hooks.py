"""Benchmark: what hooks and run_with_cache cost, and that the forward without them is unchanged (issue 17).

    python tools/bench_hooks.py [--baseline TREE] [--reps 5] [--tokens 64] [--decode 32]

On the bundled demo model (numba backend, float32) it times, each in a fresh worker process:
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


def worker(case: str, tokens: int, decode: int, reps: int) -> dict:
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
    fn = calls[case]
    out = fn()  # compile and warm up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"case": case, "seconds": statistics.median(times), "min": min(times),
            "sha256": hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()}


def run(case: str, tree: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--worker", case, "--tokens", str(args.tokens), "--decode", str(args.decode),
           "--reps", str(args.reps)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="another pycohere source tree to compare the plain forward with")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.decode, args.reps)))
        return
    cases = ["plain", "hooks=None", "recorder(logits)", "one identity hook", "identity hook on every tap",
             "run_with_cache (all taps)", "greedy decode"]
    rows = []
    for case in cases:
        this = run(case, ROOT, args)
        base = run(case, args.baseline, args) if args.baseline and case in ("plain", "greedy decode") else None
        rows.append((case, this, base))
    plain = rows[0][1]["seconds"]
    print(f"demo model, numba backend, float32, {args.tokens}-token prompt (decode: {args.decode} new tokens), "
          f"median of {args.reps}\n")
    head = "| call | this tree | vs plain |" + (" baseline tree | same output bits |" if args.baseline else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for case, this, base in rows:
        line = f"| {case} | {this['seconds'] * 1e3:.1f} ms | {this['seconds'] / plain:.2f}x |"
        if args.baseline:
            line += (f" {base['seconds'] * 1e3:.1f} ms | {'yes' if base['sha256'] == this['sha256'] else 'NO'} |"
                     if base else " | |")
        print(line)
    same = all(this["sha256"] == rows[0][1]["sha256"] for case, this, _ in rows[:2])
    print(f"\nplain and hooks=None give the same logits bit for bit: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
