"""Quantization measurements (not tests): quality on the demo model, and decode GEMV speed.

    python tools/quant_quality.py quality [--model DIR] [--text FILE] [--window 256] [--max-tokens N]
                                          [--json OUT] [--backend numba]
    python tools/quant_quality.py speed [--shape 5632x2048] [--rounds 15] [--reps 5] [--json OUT]

quality: every scheme and group size is applied to the bundled demo model (``pycohere.DEMO_MODEL``,
bf16 weights) by quantize-on-load, then run over its held-out text (``heldout.txt``) in
non-overlapping windows of ``--window`` tokens (its trained context). Reported against the
unquantized model (the bf16 weights computed in float32, "reference"): perplexity and its change,
mean / max absolute logit error, top-1 agreement (argmax equal) and the mean per-token KL divergence
KL(reference || quantized) in nats. A float64 run of the same weights is included to show the size
of pure float32 rounding. Embeddings are quantized too unless the row says "keep-emb".

speed: decode GEMV (one input row) of a random bf16 matrix and of its quantized versions, each
kernel timed ``--reps`` times per round (median), the kernels rotating position every round; the
result per kernel is the median over rounds and the median of its per-round ratio to bf16. The
machine is shared: quote the ratios, not the milliseconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUALITY_CASES = [("int8", None), ("int8", 128), ("int8", 64), ("int8", 32),
                 ("int4", 128), ("int4", 64), ("int4", 32),
                 ("int4-asym", 128), ("int4-asym", 64), ("int4-asym", 32),
                 ("nf4", 128), ("nf4", 64), ("nf4", 32),
                 ("q8_0", None), ("q4_0", None), ("q4_1", None)]
KEEP_EMB_CASES = [("int4", 64), ("nf4", 64), ("q4_0", None)]
SPEED_CASES = [("int8", None), ("int8", 128), ("int4", 64), ("int4", 128), ("int4-asym", 64), ("nf4", 64),
               ("q8_0", None), ("q4_0", None), ("q4_1", None)]


def label(scheme: str, asked: int | None, group: int) -> str:
    return "per-row" if scheme == "int8" and asked is None else f"g{group}"


# --- quality -----------------------------------------------------------------------------------------
def windows(ids: list[int], size: int, max_tokens: int | None) -> list[np.ndarray]:
    ids = ids[:max_tokens] if max_tokens else ids
    return [np.array(ids[i:i + size]) for i in range(0, len(ids) - 1, size) if len(ids[i:i + size]) > 1]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def run(model, chunks) -> list[np.ndarray]:
    """float32 logits of every window; position t predicts token t + 1."""
    return [model(w[None]).logits[0] for w in chunks]


def compare(ref: list[np.ndarray], got: list[np.ndarray], chunks) -> dict:
    nll, err_sum, err_max, top1, kl, n = 0.0, 0.0, 0.0, 0, 0.0, 0
    for r_logits, g_logits, w in zip(ref, got, chunks):
        r_logits, g_logits = r_logits[:-1], g_logits[:-1]  # the last position has no next token in the window
        r, g = log_softmax(r_logits), log_softmax(g_logits)
        target = w[1:]
        nll -= g[np.arange(len(target)), target].sum()
        d = np.abs(g_logits.astype(np.float64) - r_logits)
        err_sum, err_max = err_sum + d.sum(), max(err_max, float(d.max()))
        top1 += int((g_logits.argmax(-1) == r_logits.argmax(-1)).sum())
        kl += float((np.exp(r) * (r - g)).sum())
        n += len(target)
    return {"ppl": float(np.exp(nll / n)), "mean_logit_err": err_sum / (n * ref[0].shape[-1]),
            "max_logit_err": err_max, "top1": top1 / n, "kl": kl / n, "tokens": n}


def quality(args) -> list[dict]:
    import pycohere
    path = args.model or pycohere.DEMO_MODEL
    text = Path(args.text or Path(path) / "heldout.txt").read_text()
    tok = pycohere.CohereTokenizer.from_pretrained(path)
    chunks = windows(tok.encode(text), args.window, args.max_tokens)
    load = lambda **kw: pycohere.AutoModelForCausalLM.from_pretrained(path, backend=args.backend, **kw)
    ref = run(load(), chunks)
    rows = [{"name": "reference (stored bf16 weights, float32)", "bits": 16.0, **compare(ref, ref, chunks)}]
    f64 = run(pycohere.AutoModelForCausalLM.from_pretrained(path, backend="numpy", dtype="float64"), chunks)
    rows.append({"name": "float64 compute (same weights)", "bits": 16.0, **compare(ref, f64, chunks)})
    cases = [(s, g, False) for s, g in QUALITY_CASES] + [(s, g, True) for s, g in KEEP_EMB_CASES]
    for scheme, group, keep in cases:
        t = time.perf_counter()
        qc = pycohere.QuantizationConfig(scheme=scheme, group_size=group, keep_embeddings=keep)
        model = load(quantization_config=qc)
        w = model.params["layers"][0]["gate_proj"]
        name = f"{scheme} {label(scheme, group, w.group_size)}" + (" keep-emb" if keep else "")
        bits = 8 * w.nbytes / (w.shape[0] * w.shape[1])
        rows.append({"name": name, "bits": bits, **compare(ref, run(model, chunks), chunks)})
        print(f"{name}: {rows[-1]} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    base = rows[0]["ppl"]
    for r in rows:
        r["ppl_change"] = r["ppl"] / base - 1
    return rows


def quality_table(rows: list[dict]) -> str:
    out = ["| weights | bits/weight (linear) | perplexity | change | mean abs logit err | max abs logit err "
           "| top-1 agreement | KL (nats/token) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['bits']:.2f} | {r['ppl']:.3f} | {100 * r['ppl_change']:+.2f}% | "
                   f"{r['mean_logit_err']:.3g} | {r['max_logit_err']:.3g} | {100 * r['top1']:.2f}% | {r['kl']:.3g} |")
    return "\n".join(out)


# --- speed -------------------------------------------------------------------------------------------
def random_bf16(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """bf16 bits of |w| in ~[0.004, 0.03] with random signs (as tools/make_synthetic_checkpoint.py)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, cols), np.uint16)
    for r in range(0, rows, 8192):
        bits = rng.integers(0x3B80, 0x3D00, size=(min(8192, rows - r), cols), dtype=np.uint16)
        out[r:r + 8192] = bits | (rng.integers(0, 2, size=bits.shape, dtype=np.uint16) << 15)
    return out


def speed(args) -> dict:
    from pycohere.kernels import attention as KA, dense as K
    from pycohere.kernels import quant as QK
    from pycohere.quant import quantize
    from pycohere.spec.weights import DenseWeight
    rows, cols = map(int, args.shape.lower().split("x"))
    raw = random_bf16(rows, cols)
    x = np.random.default_rng(1).standard_normal((1, cols)).astype(np.float32)
    fns, nbytes = {"bf16": lambda: K.gemv_bf16(x, raw)}, {"bf16": raw.nbytes}
    for scheme, group in SPEED_CASES:
        q = quantize(DenseWeight(raw, "BF16"), scheme, group)
        name = f"{scheme} {label(scheme, group, q.group_size)}"
        fns[name], nbytes[name] = (lambda q=q: QK.quantized_matmul(x, q)), q.nbytes
    for f in fns.values():  # compile and warm up
        f()
    names, times = list(fns), {k: [] for k in fns}
    for rnd in range(args.rounds):
        for k in names[rnd % len(names):] + names[:rnd % len(names)]:
            ts = []
            for _ in range(args.reps):
                t = time.perf_counter()
                fns[k]()
                ts.append(time.perf_counter() - t)
            times[k].append(float(np.median(ts)))
    bf = np.array(times["bf16"])
    return {"shape": [rows, cols], "rounds": args.rounds, "reps": args.reps, "results": {
        k: {"median_ms": 1e3 * float(np.median(times[k])), "min_ms": 1e3 * float(np.min(times[k])),
            "ratio_vs_bf16": float(np.median(bf / np.array(times[k]))), "MB": nbytes[k] / 1e6,
            "GBps": nbytes[k] / float(np.median(times[k])) / 1e9} for k in names}}


def speed_table(res: dict) -> str:
    rows, cols = res["shape"]
    out = [f"decode GEMV, {rows}x{cols}, 1 input row ({res['rounds']} rounds x {res['reps']} reps)",
           "| weights | MB | median ms | min ms | speed-up vs bf16 (median of paired ratios) | GB/s |",
           "|---|---|---|---|---|---|"]
    for k, v in res["results"].items():
        out.append(f"| {k} | {v['MB']:.1f} | {v['median_ms']:.3f} | {v['min_ms']:.3f} | "
                   f"{v['ratio_vs_bf16']:.2f}x | {v['GBps']:.1f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--model", default=None, help="float checkpoint (default: the bundled demo model)")
    q.add_argument("--text", default=None, help="held-out text (default: MODEL/heldout.txt)")
    q.add_argument("--window", type=int, default=256)
    q.add_argument("--max-tokens", type=int, default=None)
    q.add_argument("--backend", default="numba")
    s = sub.add_parser("speed")
    s.add_argument("--shape", default="5632x2048")
    s.add_argument("--rounds", type=int, default=15)
    s.add_argument("--reps", type=int, default=5)
    for p in (q, s):
        p.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.cmd == "quality":
        result = quality(args)
        print(quality_table(result))
    else:
        result = speed(args)
        print(speed_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
