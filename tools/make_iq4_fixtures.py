#!/usr/bin/env python
"""IQ4_NL / IQ4_XS fixtures (tests/data/iq4/): tiny GGUF models quantized by llama.cpp, llama.cpp's logits,
and ggml blocks with gguf-py's dequantization.

    pip install llama-cpp-python==0.3.36 gguf==0.19.0   # llama.cpp builds from source (~9 min on 2 cores)
    python tools/make_iq4_fixtures.py [--out tests/data/iq4] [--seed 20261203]

What it writes, all deterministic for a seed:

1. ``tiny.iq4_nl.gguf`` / ``tiny.iq4_xs.gguf``: a random one-layer Command-R model (hidden 256 so that
   every row holds whole 256-value IQ4_XS blocks; intermediate 288, so ffn_down's rows of 288 do not, and
   llama.cpp's quantizer falls back to IQ4_NL for it in the IQ4_XS file: both types in one file), the tiny
   Command-R vocabulary of tests/data/tokenizer/tiny-command-r, exported to F32 by ``pycohere convert`` and
   quantized by llama.cpp's own ``llama_model_quantize`` (ftype LLAMA_FTYPE_MOSTLY_IQ4_NL = 25 /
   LLAMA_FTYPE_MOSTLY_IQ4_XS = 30, ``pure``: every matrix, the tied token embedding included, in the
   file's type instead of llama.cpp's Q6_K output / mixed choices, so that the tests exercise IQ4 only).
2. ``tiny.<type>.npz``: llama.cpp's float32 logits of ``TOKENS`` (one thread, F32 KV cache, all logits).
3. ``blocks.npz``: random IQ4_NL and IQ4_XS blocks (every byte random except a finite f16 ``d`` of random
   magnitude) and gguf-py's dequantization of them; plus the first rows of every IQ4 tensor of the two
   GGUF files (blocks made by llama.cpp's quantizer) and gguf-py's dequantization, so the tests compare
   against both kinds of blocks without gguf-py installed (with it, they compare whole files live).
4. ``provenance.json``: versions, seed, sha256 of every file, tensor types of the GGUFs, and pycohere's
   agreement with llama.cpp (both activation modes) at the time the fixtures were made.

The model has random weights (std 1 / sqrt(fan_in), embeddings std 1): not a language model, but its logits
have a spread that makes a wrong nibble or scale visible.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "iq4"
TOKENIZER = ROOT / "tests" / "data" / "tokenizer" / "tiny-command-r"
SEED = 20261203
FTYPES = {"iq4_nl": 25, "iq4_xs": 30}  # llama.h LLAMA_FTYPE_MOSTLY_IQ4_NL / _IQ4_XS
CONFIG = {"architectures": ["CohereForCausalLM"], "model_type": "cohere", "vocab_size": 485, "hidden_size": 256,
          "intermediate_size": 288, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1,
          "hidden_act": "silu", "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "logit_scale": 0.5,
          "use_qk_norm": False, "tie_word_embeddings": True, "attention_bias": False, "rope_theta": 10000.0,
          "pad_token_id": 0, "bos_token_id": 5, "eos_token_id": 481, "torch_dtype": "float32"}
N_TOKENS = 24


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokens(seed: int = SEED) -> list[int]:
    """BOS + random ids of ordinary tokens (ids above the 10 special ones, below the 485-token vocabulary's
    added tokens)."""
    rng = np.random.default_rng(seed + 1)
    return [CONFIG["bos_token_id"]] + [int(t) for t in rng.integers(10, 470, N_TOKENS - 1)]


def tiny_checkpoint(folder: Path, seed: int = SEED) -> Path:
    """The random float32 transformers checkpoint (config.json + model.safetensors + tokenizer files)."""
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, folder / f.name)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    c = CONFIG
    rng = np.random.default_rng(seed)
    D, F, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    dh = D // c["num_attention_heads"]

    def w(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)
    t = {"model.embed_tokens.weight": rng.standard_normal((V, D)).astype(np.float32),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        t[p + "self_attn.q_proj.weight"] = w(c["num_attention_heads"] * dh, D)
        t[p + "self_attn.k_proj.weight"] = w(c["num_key_value_heads"] * dh, D)
        t[p + "self_attn.v_proj.weight"] = w(c["num_key_value_heads"] * dh, D)
        t[p + "self_attn.o_proj.weight"] = w(D, c["num_attention_heads"] * dh)
        t[p + "mlp.gate_proj.weight"] = w(F, D)
        t[p + "mlp.up_proj.weight"] = w(F, D)
        t[p + "mlp.down_proj.weight"] = w(D, F)
    save_file(t, str(folder / "model.safetensors"))
    return folder


def llama_quantize(src: Path, dst: Path, ftype: int) -> Path:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    params.pure = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}) returned {rc}")
    return dst


def compare_all(path: Path, ids: list[int], theirs: np.ndarray) -> dict:
    """pycohere (both backends, both activation modes) against llama.cpp's logits: max |difference| relative
    to max |logit|, and argmax agreement."""
    import pycohere
    out = {}
    for backend in ("numpy", "numba"):
        for act in ("float32", "llama.cpp"):
            model = pycohere.AutoModelForCausalLM.from_pretrained(path, backend=backend, activations=act)
            ours = model(np.array([ids])).logits[0]
            out[f"{backend}/{act}"] = {"max_rel": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
                                       "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean())}
    return out


def random_blocks(rng, type_size: int, n: int) -> np.ndarray:
    """n random blocks whose f16 d (bytes 0-1) is finite, of random sign and magnitude."""
    blocks = rng.integers(0, 256, (n, type_size), dtype=np.uint8)
    d = rng.uniform(-1, 1, n) * np.exp(rng.uniform(-12, 2, n))
    blocks[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(n, 2)
    return blocks


ROWS_KEPT = 4  # rows of each llama.cpp-quantized tensor kept in blocks.npz (the whole files are committed)


def gguf_blocks(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The first ROWS_KEPT rows of every IQ4 tensor of the GGUF files: bytes [rows, row bytes] and gguf-py's
    dequantization."""
    import gguf
    out = {}
    for kind, path in files.items():
        reader = gguf.GGUFReader(str(path))
        for t in reader.tensors:
            if t.tensor_type.name not in ("IQ4_NL", "IQ4_XS"):
                continue
            raw = np.asarray(t.data)[:ROWS_KEPT]
            key = f"{kind}/{t.name}/{t.tensor_type.name.lower()}"
            out[key + "/bytes"] = raw
            out[key + "/deq"] = gguf.quants.dequantize(raw, t.tensor_type).astype(np.float32)
    return out


def tensor_types(path: Path) -> dict[str, str]:
    import gguf
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def versions() -> dict:
    from importlib.metadata import version
    import llama_cpp
    v = {"llama_cpp_python": llama_cpp.__version__, "gguf": version("gguf"), "numpy": np.__version__,
         "python": sys.version.split()[0]}
    try:
        v["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode()
    except Exception:  # pragma: no cover - informational only
        pass
    return v


def make(out: Path, seed: int) -> None:
    import gguf
    import pycohere
    from llama_cpp_oracle import llama_logits
    out.mkdir(parents=True, exist_ok=True)
    ids = tokens(seed)
    prov = {"made_by": "tools/make_iq4_fixtures.py", "seed": seed, "versions": versions(), "config": CONFIG,
            "tokens": ids, "llama_quantize": {"pure": True, "ftypes": FTYPES}, "files": {}}
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tiny_checkpoint(tmp / "tiny", seed)
        f32 = pycohere.convert_to_gguf(ckpt, tmp / "tiny.f32.gguf", type="f32", progress=False)
        for kind, ftype in FTYPES.items():
            files[kind] = llama_quantize(f32, out / f"tiny.{kind}.gguf", ftype)
    for kind, path in files.items():
        logits = llama_logits(path, ids)
        np.savez_compressed(out / f"tiny.{kind}.npz", logits=logits)
        entry = {"sha256": sha256(path), "bytes": path.stat().st_size, "tensor_types": tensor_types(path),
                 "made_by": f"llama_model_quantize(ftype={FTYPES[kind]}, pure) of the pycohere convert f32 export",
                 "logits_sha256": sha256(out / f"tiny.{kind}.npz"), "pycohere": compare_all(path, ids, logits)}
        prov["files"][kind] = entry
        print(kind, json.dumps(entry["pycohere"]), file=sys.stderr)
    rng = np.random.default_rng(seed + 2)
    arrays = {}
    for name, qtype in (("iq4_nl", gguf.GGMLQuantizationType.IQ4_NL), ("iq4_xs", gguf.GGMLQuantizationType.IQ4_XS)):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = random_blocks(rng, size, 24).reshape(3, -1)  # 3 rows of 8 blocks
        arrays[f"random/{name}/bytes"] = raw
        arrays[f"random/{name}/deq"] = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    arrays.update(gguf_blocks(files))
    np.savez_compressed(out / "blocks.npz", **arrays)
    prov["blocks"] = {"file": "blocks.npz", "sha256": sha256(out / "blocks.npz"), "keys": sorted(arrays),
                      "random": "rng = default_rng(seed + 2): 3 rows x 8 blocks per type, f16 d = "
                                "uniform(-1, 1) * exp(uniform(-12, 2))"}
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tools"))
    make(args.out, args.seed)


if __name__ == "__main__":
    main()
