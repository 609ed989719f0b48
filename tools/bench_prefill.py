"""Prefill micro-benchmarks (issue 15): the kernels of BENCHMARKS.md "Prefill (issue 15)", interleaved,
min and median of N, on the bench shape.

    python tools/bench_prefill.py [--reps 5] [--threads 1]

``--threads`` sets NUMBA_NUM_THREADS and OPENBLAS_NUM_THREADS before NumPy loads (1: the least
sensitive to a shared machine). Matmuls: bf16 ``gemm_bf16`` (pycohere's prefill path) against BLAS on
an already-widened float32 copy (the best case of widened tiles + BLAS); attention: the tiled online
softmax ``flash_attention`` against ``blocked_attention`` (pycohere's prefill path). End to end against
another tree: ``tools/bench.py --impls numba,numba%OLD_TREE``. Not a test: numbers go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: leave the thread counts alone")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["NUMBA_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np
    from pycohere.io.dtypes import bf16_bits, widen
    from pycohere.kernels import attention as A, dense

    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    print("| x @ W.T (M x out x in, bf16) | BLAS on float32 W: min / median GFLOP/s | gemm_bf16 |")
    print("|---|---|---|")
    for M, N, K in ((128, 5632, 2048), (128, 2048, 2048), (128, 2048, 5632), (512, 5632, 2048), (512, 2048, 5632)):
        w = bf16_bits(rng.standard_normal((N, K)).astype(np.float32))
        wf, x = widen(w, "BF16"), rng.standard_normal((M, K)).astype(np.float32)
        dense.dense_matmul(x, w, "BF16")
        blas, ours = [], []
        for _ in range(args.reps):  # interleaved: a burst of the machine's load hits both alike
            blas += timed(lambda: x @ wf.T, 1)
            ours += timed(lambda: dense.dense_matmul(x, w, "BF16"), 1)
        gf = lambda ts: f"{2 * M * N * K / min(ts) / 1e9:.0f} / {2 * M * N * K / np.median(ts) / 1e9:.0f}"
        print(f"| {M} x {N} x {K} | {gf(blas)} | {gf(ours)} |", flush=True)
    print("\n| attention (T, kv heads of 16 query heads, window) | flash_attention ms (GFLOP/s) | blocked_attention |")
    print("|---|---|---|")
    H, Dh = 16, 128
    for T, K, W in ((1024, 16, 0), (2048, 16, 0), (2048, 16, 512), (2048, 2, 0)):
        q = rng.standard_normal((1, T, H, Dh)).astype(np.float32)
        k = rng.standard_normal((1, T, K, Dh)).astype(np.float32)
        v = rng.standard_normal((1, T, K, Dh)).astype(np.float32)
        qi, valid = np.arange(T), np.ones((1, T), bool)
        flash = lambda: A.flash_attention(q, k, v, qi, np.int64(0), valid, np.int64(W), np.int64(A.FLASH_TILE))
        blocked = lambda: A.blocked_attention(q, k, v, qi, 0, valid, W)
        flash(), blocked()
        tf, tb = [], []
        for _ in range(max(1, args.reps // 2)):
            tf += timed(flash, 1)
            tb += timed(blocked, 1)
        pairs = sum(min(t + 1, W) if W else t + 1 for t in range(T))
        fl = 4 * H * Dh * pairs
        print(f"| {T}, {K}, {W or 'none'} | {min(tf) * 1e3:.0f} ({fl / min(tf) / 1e9:.0f}) | "
              f"{min(tb) * 1e3:.0f} ({fl / min(tb) / 1e9:.0f}) |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
