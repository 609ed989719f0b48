"""Benchmark: pycohere (numba, numpy) against transformers (float32, bfloat16) on one checkpoint.

    python tools/bench.py [--ckpt DIR] [--reps 3] [--impls numba,numpy,hf-fp32,hf-bf16]
                          [--hidden 2048 --intermediate 5632 --heads 16 --layers 8 --vocab 256000]
                          [--prompt 128 --long-prompt 2048 --decode 32] [--markdown]

Default shape is Command-R-like (hidden 2048, ffn 5632, 16 heads of 128, 8 layers, vocab 256000, tied,
bf16: ~1.9 GB), generated once into --ckpt with tools/make_synthetic_checkpoint.py. Every measurement
runs in a fresh worker process (clean RSS), implementations alternate within each repetition, and the
machine's streaming bandwidth is measured in the same run so decode can be quoted against the roofline
(weight bytes read per token / bandwidth). Not a test: the numbers go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPLS = ("numba", "numpy", "hf-fp32", "hf-bf16")
# extra: "numba-omp" = the numba backend with Numba's OpenMP threading layer instead of workqueue


# --- worker: one implementation, one fresh process -----------------------------------------------
def worker(impl: str, ckpt: str, prompt: int, long_prompt: int, decode: int) -> dict:
    import numpy as np
    rng = np.random.default_rng(0)
    cfg = json.loads((Path(ckpt) / "config.json").read_text())
    V = cfg["vocab_size"]
    ids_short = rng.integers(10, V, size=(1, prompt))
    ids_long = rng.integers(10, V, size=(1, long_prompt)) if long_prompt else None
    r = {"impl": impl}
    if impl.startswith("hf"):
        import torch
        import transformers
        torch.manual_seed(0)
        dtype = torch.float32 if impl == "hf-fp32" else torch.bfloat16
        t = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).eval()
        r["load_s"] = time.perf_counter() - t

        def prefill(ids):
            with torch.no_grad():
                model(input_ids=torch.tensor(ids), logits_to_keep=1)

        def generate(ids, n):
            with torch.no_grad():
                model.generate(torch.tensor(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        r["threads"] = torch.get_num_threads()
    else:
        import pycohere
        t = time.perf_counter()
        model = pycohere.AutoModelForCausalLM.from_pretrained(ckpt, backend=impl.split("-")[0])
        r["load_s"] = time.perf_counter() - t
        warm = model(ids_short[:, :8], logits_to_keep=1)  # first-call JIT compile (cache=True on disk)
        cache = pycohere.KVCache.for_model(model.config)
        model(ids_short[:, :8], past_key_values=cache, use_cache=True, logits_to_keep=1)
        model(ids_short[:, 8:9], past_key_values=cache, use_cache=True, logits_to_keep=1)
        r["first_call_s"] = time.perf_counter() - t - r["load_s"]
        del warm

        def prefill(ids):
            model(ids, logits_to_keep=1)

        def generate(ids, n):
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    t = time.perf_counter()
    prefill(ids_short)
    r["prefill_short_s"] = time.perf_counter() - t
    r["prefill_short_tps"] = prompt / r["prefill_short_s"]
    if ids_long is not None:
        t = time.perf_counter()
        prefill(ids_long)
        r["prefill_long_s"] = time.perf_counter() - t
        r["prefill_long_tps"] = long_prompt / r["prefill_long_s"]
    generate(ids_short[:, :16], 2)  # warm up the generation path
    t = time.perf_counter()
    generate(ids_short, 1)
    one_s = time.perf_counter() - t
    t = time.perf_counter()
    generate(ids_short, decode)
    gen_s = time.perf_counter() - t
    # both calls prefill the same prompt; the difference is (decode - 1) one-token steps
    r["decode_tps"] = (decode - 1) / max(gen_s - one_s, 1e-9)
    r["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return r


# --- the machine ---------------------------------------------------------------------------------
def bandwidth_gbs(n_bytes=1 << 30, reps=5) -> float:
    """Streaming read bandwidth with all cores (a parallel Numba sum over 1 GiB): best of reps."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def total(a):
        s = 0.0
        for i in prange(a.shape[0]):
            s += a[i]
        return s
    a = np.ones(n_bytes // 4, dtype=np.float32)
    total(a[:1024])
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        total(a)
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def machine() -> dict:
    import numpy as np
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                f = line.split(":")[1].split()
                flags = " ".join(x for x in f if x.startswith(("avx", "fma", "f16c", "amx")))
                break
        model = next(l.split(":")[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name"))
    except Exception:
        model = platform.processor()
    blas = ""
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i['version']} ({i.get('architecture')}, {i['num_threads']} threads)"
                         for i in threadpool_info() if i["user_api"] == "blas")
    except Exception:
        blas = "unknown (install threadpoolctl)"
    return {"cpu": model, "cores": os.cpu_count(), "flags": flags, "blas": blas, "numpy": np.__version__,
            "python": platform.python_version()}


def summarise(results: list[dict], key: str):
    vals = [r[key] for r in results if key in r]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="/tmp/pycohere-bench-ckpt")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--long-prompt", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--numpy-decode", type=int, default=8, help="fewer decode steps for the slow spec path")
    for flag, default in (("hidden", 2048), ("intermediate", 5632), ("heads", 16), ("kv-heads", 16),
                          ("layers", 8), ("vocab", 256000)):
        ap.add_argument(f"--{flag}", type=int, default=default)
    ap.add_argument("--json", default=None, help="also write all raw results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.ckpt, args.prompt, args.long_prompt, args.decode)))
        return
    ckpt = Path(args.ckpt)
    if not (ckpt / "model.safetensors").exists():
        sys.path.insert(0, str(HERE))
        from make_synthetic_checkpoint import write
        print(f"writing the benchmark checkpoint to {ckpt} ...", file=sys.stderr)
        write(ckpt, args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.vocab)
    ckpt_bytes = (ckpt / "model.safetensors").stat().st_size
    impls = args.impls.split(",")
    results = {i: [] for i in impls}
    bws = []
    for rep in range(args.reps):
        bws.append(bandwidth_gbs())
        for impl in impls:
            n = args.numpy_decode if impl == "numpy" else args.decode
            cmd = [sys.executable, __file__, "--worker", impl, "--ckpt", str(ckpt), "--prompt", str(args.prompt),
                   "--long-prompt", str(args.long_prompt), "--decode", str(n)]
            env = dict(os.environ, NUMBA_THREADING_LAYER="omp" if impl == "numba-omp" else "workqueue")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{impl} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[impl].append(r)
            print(f"rep {rep} {impl}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in r.items()), file=sys.stderr)
    m = machine()
    bw = statistics.median(bws)
    print(f"\nCommand: `python tools/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    print(f"Machine: {m['cpu']}, {m['cores']} cores, flags {m['flags']}; BLAS {m['blas']}; "
          f"NumPy {m['numpy']}, Python {m['python']}  ")
    print(f"Checkpoint: {ckpt_bytes / 1e9:.2f} GB bf16 (hidden {args.hidden}, ffn {args.intermediate}, "
          f"{args.heads} heads, {args.layers} layers, vocab {args.vocab}, tied)  ")
    print(f"Streaming read bandwidth (parallel Numba sum of 1 GiB): median {bw:.1f} GB/s "
          f"(min {min(bws):.1f}, max {max(bws):.1f}), {args.reps} reps  \n")
    print("| impl | load s | prefill 128 tok/s | prefill 2048 tok/s | decode tok/s | decode / roofline | peak RSS / ckpt |")
    print("|---|---|---|---|---|---|---|")
    for impl in impls:
        rs = results[impl]
        if not rs:
            print(f"| {impl} | failed | | | | | |")
            continue
        fmt = lambda key, f="{:.1f}": (lambda s: "" if s is None else f"{f.format(s[0])} ({f.format(s[1])}–{f.format(s[2])})")(summarise(rs, key))
        weight_bytes = ckpt_bytes * (2 if impl in ("hf-fp32", "numpy") else 1)  # fp32 weights: 2x the bytes
        roof = bw * 1e9 / weight_bytes
        dec = summarise(rs, "decode_tps")
        rss = summarise(rs, "peak_rss")
        print(f"| {impl} | {fmt('load_s', '{:.2f}')} | {fmt('prefill_short_tps')} | {fmt('prefill_long_tps')} | "
              f"{fmt('decode_tps', '{:.2f}')} | {dec[0] / roof:.0%} of {roof:.2f} | {rss[0] / ckpt_bytes:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "bandwidth": bws, "results": results}, indent=2))


if __name__ == "__main__":
    main()
