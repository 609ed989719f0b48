#!/usr/bin/env python
"""Micro-benchmark: one decode GEMV (R input rows x an [out, in] weight) of IQ4_NL / IQ4_XS against Q4_0 and
Q4_K on the same shape, both activation modes, through the same wrappers the model uses.

    python tools/bench_iq4.py [--out 4096 --in 4096 --rows 1 --rounds 30]

Exact mode (float32 activations): ``pycohere.kernels.quant.GEMV_KERNELS[scheme]``; llama.cpp mode (activations
rounded to Q8_0 / Q8_K, integer dot products): ``int8_dot.gemv_rounded`` (q4_0) and ``iquant.gemv_rounded``
(iq4_nl, iq4_xs), activation rounding included. The cases run in interleaved rounds (the shared machine's
bursts hit every case alike); printed: min and median over the rounds, in ms, and GB/s of weight bytes at the
min. Weights are random valid blocks (finite f16 scales): the kernels' cost does not depend on the values.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def blocks(rng, scheme, out, n_in):
    from pycohere.quant import get_scheme
    cls = get_scheme(scheme)
    nb = n_in // cls.block_size
    raw = rng.integers(0, 256, (out, nb, cls.bytes_per_block), dtype=np.uint8)
    offsets = {"q4_0": (0,), "q4_k": (0, 2), "iq4_nl": (0,), "iq4_xs": (0,)}[scheme]
    for off in offsets:
        raw[:, :, off:off + 2] = (rng.uniform(-1, 1, (out, nb)) * 1e-2).astype(np.float16).view(np.uint8) \
            .reshape(out, nb, 2)
    q = raw.reshape(out, -1)
    q.flags.writeable = False
    return q


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=int, default=4096)
    ap.add_argument("--in", dest="n_in", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    from pycohere.kernels import int8_dot, iquant, quant
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.n_in)).astype(np.float32)
    w = {s: blocks(rng, s, args.out, args.n_in) for s in ("q4_0", "q4_k", "iq4_nl", "iq4_xs")}
    cases = {f"{s} exact": (lambda s=s: quant.GEMV_KERNELS[s](x, {"qweight": w[s]})) for s in w}
    cases["q4_0 llama.cpp"] = lambda: int8_dot.gemv_rounded(x, w["q4_0"], "q4_0")
    for s in ("iq4_nl", "iq4_xs"):
        cases[f"{s} llama.cpp"] = lambda s=s: iquant.gemv_rounded(x, w[s], s)
    for f in cases.values():  # compile, warm the caches
        assert f() is not None
        f()
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, f in cases.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    print(f"shape [{args.out}, {args.n_in}], {args.rows} input row(s), {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.2f}")
    base = {"exact": min(times["q4_0 exact"]), "llama.cpp": min(times["q4_0 llama.cpp"])}
    print(f"{'case':<20} {'min ms':>8} {'median ms':>10} {'GB/s':>6} {'vs q4_0 (min)':>14}")
    for name, ts in times.items():
        nbytes = w[name.split()[0]].nbytes
        mode = name.split()[1]
        print(f"{name:<20} {1e3 * min(ts):8.3f} {1e3 * np.median(ts):10.3f} {nbytes / min(ts) / 1e9:6.1f} "
              f"{min(ts) / base[mode]:13.2f}x")


if __name__ == "__main__":
    main()
