"""Benchmark: pycohere (numba, numpy) against transformers (float32, bfloat16) and llama.cpp.

    python tools/bench.py [--ckpt DIR] [--reps 3] [--impls numba,numpy,hf-fp32,hf-bf16]
                          [--hidden 2048 --intermediate 5632 --heads 16 --layers 8 --vocab 256000]
                          [--prompt 128 --long-prompt 2048 --decode 32]
                          [--llama-cpp FILE.gguf[,FILE.gguf...]]

An impl may name its own checkpoint as ``impl@PATH`` (``numba@/tmp/bench-int8`` for a quantized folder,
``numba@/tmp/bench.q4_0.gguf``) and another pycohere source tree as ``impl%TREE`` (``numba%/tmp/old`` runs
the worker with that tree first on PYTHONPATH: before/after comparisons of a change, side by side); ``--llama-cpp A.gguf,B.gguf`` adds the pair ``numba@A.gguf``,
``llama.cpp@A.gguf`` for each file, so pycohere and llama.cpp (llama-cpp-python, built from source:
an optional peer) run the same weights side by side.

Default shape is Command-R-like (hidden 2048, ffn 5632, 16 heads of 128, 8 layers, vocab 256000, tied,
bf16: ~1.9 GB), generated once into --ckpt with tools/make_synthetic_checkpoint.py. Every measurement
runs in a fresh worker process (clean RSS), implementations alternate within each repetition (odd
repetitions in reverse order), and the machine's streaming bandwidth is measured in the same run so decode
can be quoted against the roofline (weight bytes read per token / bandwidth). Not a test: the numbers go to BENCHMARKS.md.
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
LLAMA_CPP = "llama.cpp"
# extra: "numba-omp" / "numba-tbb" / "numba-workqueue" = the numba backend with that Numba threading layer
# (plain "numba": pycohere's own choice, pycohere.kernels.jit)


# --- worker: one implementation, one fresh process -----------------------------------------------
def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux keeps that across
    execve, so a worker would inherit the parent's 1 GiB bandwidth buffer as its 'peak'."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepTimer:
    """A generate() streamer that only records when each new token arrives (both libraries first
    put() the prompt, then one token per step)."""

    def __init__(self):
        self.t = []

    def put(self, value):
        self.t.append(time.perf_counter())

    def end(self):
        pass

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.t[1:], self.t[2:])]  # after the first generated token


def llama_cpp_worker(gguf: str, ids_short, ids_long, decode: int) -> dict:
    """The same measurements with llama.cpp through llama-cpp-python's low-level context.

    Greedy decode after the short prompt, one token per llama_decode call, as pycohere's generate."""
    import numpy as np
    from llama_cpp import Llama
    r = {"impl": LLAMA_CPP}
    n_ctx = max(ids_short.shape[1] + decode, ids_long.shape[1] if ids_long is not None else 0) + 8
    t = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=n_ctx, n_batch=512, n_threads=os.cpu_count(),
                n_threads_batch=os.cpu_count(), verbose=False)
    r["load_s"] = time.perf_counter() - t
    r["threads"] = os.cpu_count()

    def prefill(ids):
        llm.reset()
        llm.eval(ids[0].tolist())

    llm.eval(ids_short[0, :8].tolist())  # warm up
    t = time.perf_counter()
    prefill(ids_short)
    r["prefill_short_s"] = time.perf_counter() - t
    r["prefill_short_tps"] = ids_short.shape[1] / r["prefill_short_s"]
    if ids_long is not None:
        t = time.perf_counter()
        prefill(ids_long)
        r["prefill_long_s"] = time.perf_counter() - t
        r["prefill_long_tps"] = ids_long.shape[1] / r["prefill_long_s"]
    prefill(ids_short)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    steps = []
    t0 = t = time.perf_counter()
    for _ in range(decode - 1):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        steps.append(time.perf_counter() - t)
        t = time.perf_counter()
    r["decode_tps"] = (decode - 1) / (time.perf_counter() - t0)
    r["decode_step_tps"] = 1 / statistics.median(steps)
    r["peak_rss"] = peak_rss()
    return r


def vocab_size(ckpt: str) -> int:
    if ckpt.endswith(".gguf"):
        import pycohere
        return pycohere.checkpoints.load_config(ckpt).vocab_size
    return json.loads((Path(ckpt) / "config.json").read_text())["vocab_size"]


def checkpoint_bytes(ckpt: str) -> int:
    p = Path(ckpt)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.glob("*.safetensors"))


def worker(impl: str, ckpt: str, prompt: int, long_prompt: int, decode: int) -> dict:
    import numpy as np
    rng = np.random.default_rng(0)
    V = vocab_size(ckpt)
    ids_short = rng.integers(10, V, size=(1, prompt))
    ids_long = rng.integers(10, V, size=(1, long_prompt)) if long_prompt else None
    if impl == LLAMA_CPP:
        return llama_cpp_worker(ckpt, ids_short, ids_long, decode)
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

        def generate(ids, n, streamer=None):
            with torch.no_grad():
                model.generate(torch.tensor(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               streamer=streamer)
        r["threads"] = torch.get_num_threads()
    else:
        import pycohere
        t = time.perf_counter()
        # "numba-llamacpp-act": activations rounded as llama.cpp does (integer dot products on AVX2)
        act = "llama.cpp" if impl.endswith("-llamacpp-act") else "float32"
        model = pycohere.AutoModelForCausalLM.from_pretrained(ckpt, backend=impl.split("-")[0], activations=act)
        r["load_s"] = time.perf_counter() - t
        # first-call JIT compile (cache=True on disk) of the kernels a prefill of 64+ rows runs, and a decode's
        warm = model(ids_short[:, :64], logits_to_keep=1)
        cache = pycohere.KVCache.for_model(model.config)
        model(ids_short[:, :8], past_key_values=cache, use_cache=True, logits_to_keep=1)
        model(ids_short[:, 8:9], past_key_values=cache, use_cache=True, logits_to_keep=1)
        r["first_call_s"] = time.perf_counter() - t - r["load_s"]
        r["kernels"] = " | ".join(model.kernel_report())
        del warm

        def prefill(ids):
            model(ids, logits_to_keep=1)

        def generate(ids, n, streamer=None):
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
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
    timer = StepTimer()
    t = time.perf_counter()
    generate(ids_short, decode, streamer=timer)
    gen_s = time.perf_counter() - t
    # both calls prefill the same prompt; the difference is (decode - 1) one-token steps
    r["decode_tps"] = (decode - 1) / max(gen_s - one_s, 1e-9)
    # per-step times (between successive tokens handed to the streamer): robust to a noisy neighbour
    r["decode_step_tps"] = 1 / statistics.median(timer.steps())
    r["peak_rss"] = peak_rss()
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


# --- prefill FLOP/s against the machine's peak (issue 15) ------------------------------------------
def fma_probe_ir(lanes: int, chains: int) -> str:
    """LLVM IR of ``probe(n, m, k)``: ``chains`` independent vector FMAs (``llvm.fma.v<lanes>f32``) per
    iteration, n iterations; the chains are summed at the end so none is dead code."""
    vt = f"<{lanes} x float>"
    phis = "\n".join(f"  %a{c} = phi {vt} [ %m, %entry ], [ %b{c}, %loop ]" for c in range(chains))
    fmas = "\n".join(f"  %b{c} = call {vt} @llvm.fma.v{lanes}f32({vt} %a{c}, {vt} %m, {vt} %k)" for c in range(chains))
    sums = "\n".join(f"  %s{c} = fadd {vt} %s{c - 1}, %b{c}" for c in range(1, chains))
    return f"""
declare {vt} @llvm.fma.v{lanes}f32({vt}, {vt}, {vt})
define float @probe(i64 %n, float %x, float %y) {{
entry:
  %x0 = insertelement {vt} undef, float %x, i32 0
  %m = shufflevector {vt} %x0, {vt} undef, <{lanes} x i32> zeroinitializer
  %y0 = insertelement {vt} undef, float %y, i32 0
  %k = shufflevector {vt} %y0, {vt} undef, <{lanes} x i32> zeroinitializer
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %j, %loop ]
{phis}
{fmas}
  %j = add i64 %i, 1
  %c = icmp ult i64 %j, %n
  br i1 %c, label %loop, label %done
done:
  %s0 = fadd {vt} %b0, zeroinitializer
{sums}
  %r = extractelement {vt} %s{chains - 1}, i32 0
  ret float %r
}}"""


def compile_fma_probe():
    """(probe(n, m, k) -> float, lanes, cpu name, the engine that owns the code) for this CPU."""
    import ctypes
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features().flatten()
    lanes = 16 if "+avx512f" in features else 8 if "+avx" in features else 4
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=llvm.get_host_cpu_name(), features=features,
                                                                   opt=2)
    mod = llvm.parse_assembly(fma_probe_ir(lanes, FMA_CHAINS))
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    probe = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64, ctypes.c_float, ctypes.c_float)(
        engine.get_function_address("probe"))
    return probe, lanes, llvm.get_host_cpu_name(), engine


FMA_CHAINS = 12  # independent accumulators: more than FMA latency x units (4 x 2), fewer than registers


def fma_peak_gflops(seconds: float = 0.25, reps: int = 5) -> dict:
    """The machine's float32 peak, measured: cores x FMA units x lanes x 2 x clock, as the best of
    ``reps`` runs of an FMA-only loop (llvmlite-compiled for this CPU: AVX-512 -> 16 lanes) on every
    core at once (one thread per core; ctypes releases the GIL)."""
    import threading
    probe, lanes, cpu, _engine = compile_fma_probe()
    n = 1 << 16
    t = time.perf_counter()
    probe(n, 1.0, 0.0)
    n = max(n, int(n * seconds / max(time.perf_counter() - t, 1e-9)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    best = 0.0
    for _ in range(reps):
        threads = [threading.Thread(target=probe, args=(n, 1.0, 0.0)) for _ in range(cores)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        best = max(best, cores * n * FMA_CHAINS * lanes * 2 / (time.perf_counter() - t) / 1e9)
    return {"peak_gflops": best, "cores": cores, "lanes": lanes, "cpu": cpu}


def prefill_flops(D: int, F: int, H: int, K: int, layers: int, V: int, T: int, kept: int = 1) -> float:
    """FLOPs (a multiply-add = 2) of a T-token prefill with a causal mask and ``kept`` logits rows:
    per layer q/k/v/o + gate/up/down matmuls, QK^T and PV over T(T+1)/2 visible pairs per head; the head."""
    Dh = D // H
    linear = 2 * T * (D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F)
    attention = 2 * 2 * H * Dh * T * (T + 1) // 2
    return float(layers * (linear + attention) + 2 * kept * D * V)


def openblas_core() -> str:
    """The kernel family NumPy's OpenBLAS runs (``OPENBLAS_CORETYPE`` forces it; the env var is shown)."""
    import ctypes
    import glob
    import numpy as np
    name = "unknown"
    for lib in glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*")):
        for sym in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(ctypes.CDLL(lib), sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                name = fn().decode()
                break
    return f"{name} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})"


def prefill_flops_report(impls, results, args, peak: dict) -> list[str]:
    """Lines: each impl's prefill GFLOP/s (median of reps) and its fraction of the measured peak."""
    lines = [f"- FMA probe: peak {peak['peak_gflops']:.0f} GFLOP/s float32 ({peak['cores']} cores x "
             f"{peak['lanes']} lanes x 2 x FMA units x clock, {peak['cpu']}); NumPy's OpenBLAS: {openblas_core()}"]
    shape = (args.hidden, args.intermediate, args.heads, args.kv_heads, args.layers, args.vocab)
    for impl in impls:
        parts = []
        for key, T in (("prefill_short_s", args.prompt), ("prefill_long_s", args.long_prompt)):
            s = summarise(results[impl], key)
            if s is not None and T:
                gf = prefill_flops(*shape, T) / s[0] / 1e9
                parts.append(f"{T} tokens {gf:.0f} GFLOP/s ({gf / peak['peak_gflops']:.0%} of peak)")
        if parts:
            lines.append(f"- prefill FLOP/s {impl}: " + ", ".join(parts))
    return lines


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
    ap.add_argument("--llama-cpp", default="", help="comma-separated GGUF files: run numba and llama.cpp on each")
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
    impls = [i for i in args.impls.split(",") if i]
    for g in filter(None, args.llama_cpp.split(",")):
        impls += [f"numba@{g}", f"numba-llamacpp-act@{g}", f"{LLAMA_CPP}@{g}"]
    trees = {i: (i.split("%", 1) + [""])[1] for i in impls}  # impl -> pycohere source tree ("": this one)
    where = {i: (i.split("%", 1)[0].split("@", 1) + [str(ckpt)])[:2] for i in impls}  # impl -> (kind, checkpoint)
    ckpt_bytes = checkpoint_bytes(str(ckpt))
    results = {i: [] for i in impls}
    bws = []
    for rep in range(args.reps):
        bws.append(bandwidth_gbs())
        # odd reps run the list backwards (A B .. B A): a drift of the host's speed over a rep, and whatever one
        # worker leaves behind for the next (a 6 GB transformers fp32 process exiting: BENCHMARKS.md "Round 5"),
        # fall on different neighbours each rep, while a pair compared side by side stays adjacent
        for impl in (impls if rep % 2 == 0 else impls[::-1]):
            kind, path = where[impl]
            n = args.numpy_decode if kind == "numpy" else args.decode
            cmd = [sys.executable, __file__, "--worker", kind, "--ckpt", path, "--prompt", str(args.prompt),
                   "--long-prompt", str(args.long_prompt), "--decode", str(n)]
            env = dict(os.environ)
            layer = kind.split("-")[1] if kind.count("-") == 1 and kind.split("-")[1] in ("omp", "tbb", "workqueue") \
                else None
            if layer:
                env["NUMBA_THREADING_LAYER"] = layer
            if trees[impl]:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [trees[impl], env.get("PYTHONPATH", "")]))
            load_before = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            load_after = os.getloadavg()[0]
            if out.returncode != 0:
                print(f"{impl} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["load_avg"] = [load_before, load_after]  # 1-minute load average before and after the worker
            results[impl].append(r)
            print(f"rep {rep} {impl}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in r.items()), file=sys.stderr)
    m = machine()
    peak = fma_peak_gflops()  # (issue 15: prefill FLOP/s against the measured peak, printed below the table)
    bw = statistics.median(bws)
    print(f"\nCommand: `python tools/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    print(f"Machine: {m['cpu']}, {m['cores']} cores, flags {m['flags']}; BLAS {m['blas']}; "
          f"NumPy {m['numpy']}, Python {m['python']}  ")
    print(f"Checkpoint: {ckpt_bytes / 1e9:.2f} GB bf16 (hidden {args.hidden}, ffn {args.intermediate}, "
          f"{args.heads} heads, {args.layers} layers, vocab {args.vocab}, tied)  ")
    print(f"Streaming read bandwidth (parallel Numba sum of 1 GiB): median {bw:.1f} GB/s "
          f"(min {min(bws):.1f}, max {max(bws):.1f}), {args.reps} reps  \n")
    print(f"| impl | load s | prefill {args.prompt} tok/s | prefill {args.long_prompt} tok/s | decode tok/s | "
          "decode / roofline | peak RSS / weights file |")
    print("|---|---|---|---|---|---|---|")
    for impl in impls:
        rs = results[impl]
        if not rs:
            print(f"| {impl} | failed | | | | | |")
            continue
        fmt = lambda key, f="{:.1f}": (lambda s: "" if s is None else f"{f.format(s[0])} ({f.format(s[1])}–{f.format(s[2])})")(summarise(rs, key))
        kind, path = where[impl]
        file_bytes = checkpoint_bytes(path)
        weight_bytes = file_bytes * (2 if kind in ("hf-fp32", "numpy") else 1)  # fp32 weights: 2x the bytes
        roof = bw * 1e9 / weight_bytes
        dec = summarise(rs, "decode_step_tps")
        rss = summarise(rs, "peak_rss")
        print(f"| {impl} | {fmt('load_s', '{:.2f}')} | {fmt('prefill_short_tps')} | {fmt('prefill_long_tps')} | "
              f"{fmt('decode_step_tps', '{:.2f}')} | {dec[0] / roof:.0%} of {roof:.2f} | {rss[0] / file_bytes:.2f}× |")
    loads = [x for rs in results.values() for r in rs for x in r["load_avg"]]
    if loads:
        print(f"\nLoad average (1 min) around the workers: {min(loads):.2f}–{max(loads):.2f} "
              f"(a 2-core host above ~0.5 shared its cores with other work)  ")
    paths = {impl: rs[0]["kernels"] for impl, rs in results.items() if rs and "kernels" in rs[0]}
    if paths:
        print("\nKernel paths (model.kernel_report()):\n")
        for impl, path in paths.items():
            print(f"- {impl}: {path}")
        print()
    print("\n".join(prefill_flops_report(impls, results, args, peak)))
    # Side-by-side ratios: per repetition (the two ran back to back), then the median and range.
    base = impls[0]
    for impl in impls[1:]:
        pairs = [(a["decode_step_tps"], b["decode_step_tps"]) for a, b in zip(results[base], results[impl])]
        if pairs:
            ratios = sorted(b / a for a, b in pairs)
            print(f"- decode {impl} / {base}: median {statistics.median(ratios):.2f}× "
                  f"(range {ratios[0]:.2f}–{ratios[-1]:.2f}, {len(ratios)} reps)")
    for g in filter(None, args.llama_cpp.split(",")):
        for ours in (f"numba@{g}", f"numba-llamacpp-act@{g}"):
            pairs = [(a["decode_step_tps"], b["decode_step_tps"])
                     for a, b in zip(results[ours], results[f"{LLAMA_CPP}@{g}"])]
            if pairs:
                ratios = sorted(a / b for a, b in pairs)
                print(f"- decode {ours.split('@')[0]} / llama.cpp on {Path(g).name}: median "
                      f"{statistics.median(ratios):.2f}× (range {ratios[0]:.2f}–{ratios[-1]:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "bandwidth": bws, "results": results}, indent=2))


if __name__ == "__main__":
    main()
