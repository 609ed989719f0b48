"""Small prefills through a KV cache (a chat's follow-up turn, speculative decoding's draft check, batched
decoding): the kernel choices by input rows, and the forward over T new tokens on a cache.

    PYTHONPATH=. nice -n 10 python tools/bench_small_prefill.py [--model PATH] [--past 0,1000] [--reps 9]
        [--parts matmul,attention,forward] [--dims 2048,5632,16,16] [--storages BF16,F16,F32]

1. Dense matmuls x (R, in) @ W.T per storage on the model's shapes: the GEMV (``dense.gemv_*``) against
   ``tiles.gemm`` (f16: widened tiles + gemm) and against BLAS on a float32 copy, for R = 1 ... 64 (the
   choice ``dense.DENSE_GEMV_MAX_ROWS`` is read off this).
2. Attention of T queries on a cache of ``past`` keys: ``decode_attention`` against ``blocked_attention``
   (``attention.DECODE_MAX_QUERIES``).
3. ``model(ids, past_key_values=cache, logits_to_keep=1)`` for T new tokens on caches of ``past`` tokens.

Times are the median of ``--reps`` interleaved runs (ms). Not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

ROWS = (1, 2, 3, 4, 8, 9, 16, 28, 64)
TOKENS = (1, 2, 4, 8, 9, 16, 28, 64, 512)


def median_ms(fns, reps):
    """Each fn's median time (ms), the runs interleaved so a burst of the machine's load hits all alike."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for f, ts in zip(fns, times):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) * 1e3 for ts in times]


def matmuls(dims, reps, storages):
    from pycohere.io.dtypes import bf16_bits, widen
    from pycohere.kernels import dense, tiles
    D, F, H, K = dims
    Dh = D // H
    rng = np.random.default_rng(0)
    print("| storage, out x in | R | GEMV | gemm | BLAS (float32 copy) |")
    print("|---|---|---|---|---|")
    for storage in storages:
        for N, Kin in ((H * Dh, D), (K * Dh, D), (F, D), (D, F)):
            w32 = rng.standard_normal((N, Kin)).astype(np.float32)
            raw = bf16_bits(w32) if storage == "BF16" else w32.astype(np.float16).view(np.uint16) if storage == "F16" \
                else w32
            wf = widen(raw.view(np.float16) if storage == "F16" else raw, storage)
            gemv = {"BF16": dense.gemv_bf16, "F16": dense.gemv_f16, "F32": dense.gemv_f32}[storage]
            for R in ROWS:
                x = rng.standard_normal((R, Kin)).astype(np.float32)

                def ours():
                    if storage == "F16":
                        saved = dense.DENSE_GEMV_MAX_ROWS["F16"]
                        dense.DENSE_GEMV_MAX_ROWS["F16"] = 0
                        try:
                            return dense.dense_matmul(x, raw, storage)
                        finally:
                            dense.DENSE_GEMV_MAX_ROWS["F16"] = saved
                    out = np.empty((R, N), np.float32)
                    tiles.gemm(x, raw, np.int64(tiles.GEMM_ROW_BLOCK), out, np.int64(0))
                    return out
                a, b, c = median_ms([lambda: gemv(x, raw), ours, lambda: x @ wf.T], reps)
                print(f"| {storage}, {N} x {Kin} | {R} | {a:.3f} | {b:.3f} | {c:.3f} |", flush=True)


def attentions(dims, pasts, reps):
    from pycohere.kernels import attention as A
    D, _, H, K = dims
    Dh = D // H
    rng = np.random.default_rng(0)
    print(f"\n| attention ({H} heads, {K} kv heads, Dh {Dh}): past, T | decode_attention | blocked_attention |")
    print("|---|---|---|")
    for past in pasts:
        for T in ROWS:
            S = past + T
            q = rng.standard_normal((1, T, H, Dh)).astype(np.float32)
            k, v = (rng.standard_normal((1, S, K, Dh)).astype(np.float32) for _ in range(2))
            qi, valid = np.arange(past, S, dtype=np.int64), np.ones((1, S), np.bool_)
            a, b = median_ms([lambda: A.decode_attention(q, k, v, qi, np.int64(0), valid, np.int64(0)),
                              lambda: A.blocked_attention(q, k, v, qi, 0, valid, 0)], reps)
            print(f"| {past}, {T} | {a:.3f} | {b:.3f} |", flush=True)


def forwards(model, pasts, reps):
    from pycohere.spec.cache import KVCache
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    print("\n| past, T new tokens | forward ms | ms per token |")
    print("|---|---|---|")
    for past in pasts:
        cache = KVCache.for_model(model.config)
        if past:
            model(rng.integers(10, V, (1, past)), past_key_values=cache, use_cache=True, logits_to_keep=1)
        for T in TOKENS:
            ids = rng.integers(10, V, (1, T))

            def step():
                cache.crop(past)
                model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            (t,) = median_ms([step], reps)
            print(f"| {past}, {T} | {t:.2f} | {t / T:.3f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled demo model)")
    p.add_argument("--past", default="0,1000")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--parts", default="matmul,attention,forward")
    p.add_argument("--storages", default="BF16,F16,F32", help="the matmuls' weight storages")
    p.add_argument("--dims", default=None, help="hidden,intermediate,heads,kv_heads for the matmul and attention "
                   "parts instead of the model's (the bench shape: 2048,5632,16,16)")
    args = p.parse_args()
    from pycohere.demo import DEMO_MODEL
    from pycohere.model import AutoModelForCausalLM
    pasts = [int(s) for s in args.past.split(",")]
    parts = args.parts.split(",")
    model = None
    if args.dims:
        dims = tuple(int(v) for v in args.dims.split(","))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model or DEMO_MODEL, backend="numba")
        c = model.config
        dims = (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads)
    print(f"load average {os.getloadavg()[0]:.2f}")
    if "matmul" in parts:
        matmuls(dims, args.reps, args.storages.split(","))
    if "attention" in parts:
        attentions(dims, pasts, args.reps)
    if "forward" in parts and model is None:
        model = AutoModelForCausalLM.from_pretrained(args.model or DEMO_MODEL, backend="numba")
    if "forward" in parts:
        forwards(model, pasts, args.reps)


if __name__ == "__main__":
    main()
