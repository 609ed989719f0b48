"""Make the benchmark files of BENCHMARKS.md in one folder (default /dev/shm/bench: this VM reclaims page cache):

    python tools/make_bench_files.py [--out /dev/shm/bench] [--skip-llama-cpp]

1. ``bf16/``: the bench shape (hidden 2048, ffn 5632, 16 heads, 8 layers, vocab 256000, tied; ~1.9 GB) as bf16
   safetensors by tools/make_synthetic_checkpoint.py, with the demo model's tokenizer files beside it (a GGUF
   carries a vocabulary: ``pycohere convert`` pads the demo's to the 256000 rows with ``[PADi]`` tokens).
2. ``f16.gguf``, ``q8_0.gguf`` and ``q4_0.gguf`` (pure: ``--token-embedding-type q4_0``) by ``pycohere convert``.
3. ``q4_k_m.gguf`` and ``q6_k.gguf`` by llama.cpp's own quantizer (``llama_model_quantize``, ftypes 15 and 18)
   from a bf16 GGUF, when llama-cpp-python is installed (the optional peer; ``--skip-llama-cpp`` leaves them out).
Files that exist are kept.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE = ["--hidden", "2048", "--intermediate", "5632", "--layers", "8", "--heads", "16", "--kv-heads", "16",
         "--vocab", "256000"]
LLAMA_FTYPES = {"q4_k_m.gguf": 15, "q6_k.gguf": 18}  # LLAMA_FTYPE_MOSTLY_Q4_K_M, _Q6_K


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/dev/shm/bench"))
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args(argv)
    out, py = args.out, sys.executable
    ckpt = out / "bf16"
    if not (ckpt / "model.safetensors").exists():
        run(py, str(HERE / "make_synthetic_checkpoint.py"), str(ckpt), *SHAPE)
    demo = HERE.parent / "pycohere" / "demo"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if not (ckpt / name).exists():
            shutil.copy(demo / name, ckpt / name)
    for name, extra in (("f16", []), ("q8_0", []), ("q4_0", ["--token-embedding-type", "q4_0"])):
        if not (out / f"{name}.gguf").exists():
            run(py, "-m", "pycohere", "convert", str(ckpt), str(out / f"{name}.gguf"), "--type", name, "-q", *extra)
    if args.skip_llama_cpp or all((out / n).exists() for n in LLAMA_FTYPES):
        return
    import ctypes

    try:
        import llama_cpp  # the optional peer (BENCHMARKS.md says how it was built)
    except ImportError:
        raise SystemExit("q4_k_m.gguf and q6_k.gguf need llama.cpp's quantizer: pip install llama-cpp-python "
                         "(built from source, see BENCHMARKS.md), or pass --skip-llama-cpp") from None
    src = out / "bf16.gguf"
    run(py, "-m", "pycohere", "convert", str(ckpt), str(src), "--type", "bf16", "-q", "--force")
    try:
        for name, ftype in LLAMA_FTYPES.items():
            if (out / name).exists():
                continue
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.nthread = ftype, 2
            if llama_cpp.llama_model_quantize(str(src).encode(), str(out / name).encode(), ctypes.byref(params)):
                raise SystemExit(f"llama.cpp's quantizer failed for {name}")
    finally:
        src.unlink()


if __name__ == "__main__":
    main()
