"""Run one long prompt through the benchmark checkpoint and report time and peak RSS (issue 5: an
8k-token prompt must fit in 24 GiB). Peak is VmHWM of this process (not inherited from a parent).

    python tools/long_prompt.py [--ckpt /tmp/pycohere-bench-ckpt] [--tokens 8192] [--backend numba]
                                [--activations llama.cpp]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="/tmp/pycohere-bench-ckpt")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--activations", default="float32", choices=("float32", "llama.cpp"),
                    help="exact (the default) or llama.cpp's rounded activations")
    a = ap.parse_args(argv)
    import numpy as np
    import pycohere
    model = pycohere.AutoModelForCausalLM.from_pretrained(a.ckpt, backend=a.backend, activations=a.activations)
    ids = np.random.default_rng(0).integers(10, model.config.vocab_size, size=(1, a.tokens))
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens)
    dt = time.perf_counter() - t0
    ckpt = (Path(a.ckpt) / "model.safetensors").stat().st_size
    print(json.dumps({"tokens": a.tokens, "new_tokens": int(out.shape[1] - a.tokens), "seconds": round(dt, 1),
                      "prefill_tokens_per_s": round(a.tokens / dt, 1), "peak_rss_bytes": vm("VmHWM"),
                      "peak_rss_over_checkpoint": round(vm("VmHWM") / ckpt, 3), "backend": a.backend,
                      "activations": a.activations}))


if __name__ == "__main__":
    main()
