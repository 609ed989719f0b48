"""Measure RSS around loading a checkpoint and running one forward (used by tests/test_memory.py and
for BENCHMARKS.md).

    python tools/memory_probe.py CHECKPOINT [--tokens N] [--dtype float32]

Prints one JSON line: rss_before, rss_after_load, peak_rss_forward (bytes), checkpoint_bytes.
Run it in a fresh process: RSS is per process.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--tokens", type=int, default=0, help="also run a forward of this many tokens")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args(argv)
    import numpy as np
    import pycohere
    from pycohere.kernels.dispatch import attention_kernel, resolve_backend
    from pycohere.io.safetensors import Checkpoint
    # import the backend's modules (numba, llvmlite) first: we measure the checkpoint, not the library
    attention_kernel(resolve_backend(args.backend), args.dtype)
    before = rss_bytes()
    t0 = time.perf_counter()
    model = pycohere.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype, backend=args.backend)
    load_s = time.perf_counter() - t0
    after = rss_bytes()
    result = {"rss_before": before, "rss_after_load": after, "load_seconds": load_s,
              "checkpoint_bytes": Checkpoint(args.checkpoint).nbytes}
    if args.tokens:
        ids = np.arange(args.tokens)[None] % model.config.vocab_size
        t0 = time.perf_counter()
        model(ids, logits_to_keep=1)
        result["forward_seconds"] = time.perf_counter() - t0
        result["peak_rss_forward"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
