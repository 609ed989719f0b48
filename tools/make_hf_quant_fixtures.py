#!/usr/bin/env python
"""Tiny Hugging Face quantized checkpoints (bitsandbytes, GPTQ, AWQ) for tests/test_hf_formats.py.

    python tools/make_hf_quant_fixtures.py [--out tests/data/hf_quant] [--seed 0]
                                           [--autoawq-packing path/to/awq/utils/packing_utils.py]

Writes, under ``--out``, one folder per checkpoint (config.json + model.safetensors) and
``provenance.json`` (tool versions, seed, what each folder is, file hashes):

* ``bnb-nf4-dq-bf16``, ``bnb-fp4``, ``bnb-int8``: a tiny random ``CohereForCausalLM`` (tools/oracle.py)
  quantized and saved by transformers' own bitsandbytes quantizer (``BitsAndBytesConfig``) on CPU, so
  the tensor names, dtypes and quant_state JSON are the genuine serialisation. Needs torch,
  transformers, bitsandbytes and accelerate (transformers requires it for bitsandbytes loading).
* ``gptq-v1-act-order``, ``gptq-v2-asym``, ``awq-gemm``: the same kind of model whose projections are
  round-to-nearest quantized and packed by :func:`pack_gptq` / :func:`pack_awq` below, written from
  the documented layouts (/work/shared/reference/quantized-formats.md, AutoGPTQ ``pack``, AutoAWQ
  ``WQLinear_GEMM.from_linear``): the reference libraries (gptqmodel, autoawq) need GPU toolchains
  and do not install here. With ``--autoawq-packing`` (the file ``awq/utils/packing_utils.py`` of an
  AutoAWQ source tree, which imports only torch) the AWQ packing is cross-checked against AutoAWQ's
  own ``dequantize_gemm`` and the result recorded in provenance.json.

The packers are plain NumPy and pycohere is never imported: tests import them (tools/ is on their
sys.path) to build more checkpoints in a temporary folder, and unpack them with formulas of their own.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of an AWQ word holds column 8c + AWQ_ORDER[i]
TINY_F16 = 2.0 ** -24  # smallest positive float16 (a subnormal): all-zero groups keep a positive scale
# hidden 64 / ffn 128: every group size used here divides every row; 2 layers, GQA.
MODEL = dict(hidden_size=64, intermediate_size=128, num_key_value_heads=2)


# --- GPTQ / AWQ: round-to-nearest codes and the packers ------------------------------------------------
def rtn_int4(w: np.ndarray, group: int, *, sym: bool, min_zero: int = 0, g_idx=None, rng=None):
    """Round-to-nearest 4-bit quantization of w [out, in] by groups of input columns.

    g_idx [in] gives each input's group (None: k // group). Returns (codes u8 [out, in], zeros
    int [G, out] (the true zero points), scales f16 [G, out]) with w ~ s * (q - z). Symmetric:
    z = 8; asymmetric: the range [min(w, 0), max(w, 0)] over 15 steps, z in [min_zero, 15]."""
    out, inp = w.shape
    group = inp if group == -1 else group
    g_idx = np.arange(inp) // group if g_idx is None else np.asarray(g_idx)
    n_groups = inp // group
    codes = np.zeros((out, inp), np.uint8)
    zeros = np.zeros((n_groups, out), np.int64)
    scales = np.zeros((n_groups, out), np.float16)
    for g in range(n_groups):
        cols = np.flatnonzero(g_idx == g)
        block = w[:, cols].astype(np.float64)
        if sym:
            s = np.maximum(np.abs(block).max(axis=1) / 7.0, TINY_F16).astype(np.float16)
            z = np.full(out, 8)
        else:
            lo, hi = np.minimum(block.min(axis=1), 0), np.maximum(block.max(axis=1), 0)
            s = np.maximum((hi - lo) / 15.0, TINY_F16).astype(np.float16)
            z = np.clip(np.rint(-lo / s.astype(np.float64)), min_zero, 15).astype(np.int64)
        q = np.rint(block / s.astype(np.float64)[:, None]) + z[:, None]
        codes[:, cols] = np.clip(q, 0, 15).astype(np.uint8)
        zeros[g], scales[g] = z, s
    return codes, zeros, scales


def _pack_rows(codes_in_by_out: np.ndarray) -> np.ndarray:
    """u8 codes [in, out] -> int32 [in/8, out]: row r holds inputs 8r + j at bits 4j."""
    c = codes_in_by_out.astype(np.uint32).reshape(-1, 8, codes_in_by_out.shape[1])
    words = np.zeros((c.shape[0], c.shape[2]), np.uint32)
    for j in range(8):
        words |= c[:, j, :] << np.uint32(4 * j)
    return words.view(np.int32)


def _pack_cols(values: np.ndarray, order=range(8)) -> np.ndarray:
    """ints [r, n] -> int32 [r, ceil(n/8)]: nibble i of word c holds column 8c + order[i]
    (columns past n are zero, as GPTQ pads qzeros)."""
    r, n = values.shape
    v = np.zeros((r, -(-n // 8) * 8), np.uint32)
    v[:, :n] = values.astype(np.uint32) & np.uint32(15)
    v = v.reshape(r, -1, 8)
    words = np.zeros(v.shape[:2], np.uint32)
    for i, col in enumerate(order):
        words |= v[:, :, col] << np.uint32(4 * i)
    return words.view(np.int32)


def pack_gptq(codes, zeros, scales, g_idx, version: int = 1) -> dict[str, np.ndarray]:
    """GPTQ arrays of one linear layer (AutoGPTQ's QuantLinear.pack): qweight i32 [in/8, out],
    qzeros i32 [G, ceil(out/8)] holding z - 1 (v1) or z (v2, gptqmodel's checkpoint_format
    gptq_v2), scales f16 [G, out], g_idx i32 [in]."""
    stored = zeros - (1 if version == 1 else 0)
    if stored.min() < 0:
        raise ValueError("GPTQ v1 cannot store a zero point of 0 (z - 1 = -1); use min_zero=1")
    return {"qweight": _pack_rows(codes.T), "qzeros": _pack_cols(stored),
            "scales": np.asarray(scales, np.float16), "g_idx": np.asarray(g_idx, np.int32)}


def pack_awq(codes, zeros, scales) -> dict[str, np.ndarray]:
    """AutoAWQ GEMM arrays (WQLinear_GEMM.from_linear): qweight i32 [in, out/8] and qzeros
    i32 [G, out/8] with nibble i of word c = column 8c + AWQ_ORDER[i]; scales f16 [G, out]."""
    return {"qweight": _pack_cols(codes.T, AWQ_ORDER), "qzeros": _pack_cols(zeros, AWQ_ORDER),
            "scales": np.asarray(scales, np.float16)}


def quantize_layer(w, method: str, group: int, *, version: int = 1, sym: bool = False, desc_act: bool = False,
                   rng=None) -> dict[str, np.ndarray]:
    """The GPTQ (``method="gptq"``) or AWQ arrays of a float [out, in] weight. desc_act: the input
    columns are grouped in a random order (g_idx = rank // group), as act-order GPTQ does."""
    inp = w.shape[1]
    g = inp if group == -1 else group
    g_idx = np.arange(inp) // g
    if desc_act:
        g_idx = np.argsort((rng or np.random.default_rng(0)).permutation(inp)) // g
    codes, zeros, scales = rtn_int4(w, group, sym=sym, min_zero=1 if method == "gptq" and version == 1 else 0,
                                    g_idx=g_idx)
    if method == "gptq":
        return pack_gptq(codes, zeros, scales, g_idx, version)
    return pack_awq(codes, zeros, scales)


def gptq_config(group: int, version: int, desc_act: bool, sym: bool) -> dict:
    """quantization_config as transformers' GPTQConfig / gptqmodel write it."""
    return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": desc_act, "sym": sym,
            "damp_percent": 0.01, "true_sequential": True, "static_groups": False, "lm_head": False,
            "pack_dtype": "int32", "checkpoint_format": "gptq" if version == 1 else "gptq_v2",
            "meta": {"quantizer": ["tools/make_hf_quant_fixtures.py"]}}


def awq_config(group: int) -> dict:
    """quantization_config as transformers' AwqConfig writes it."""
    return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


def quantize_tensors(tensors: dict, method: str, group: int, *, version=1, sym=False, desc_act=False,
                     seed=0) -> dict[str, np.ndarray]:
    """A float state dict -> the same with every ``*_proj.weight`` replaced by GPTQ/AWQ arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in tensors.items():
        if name.endswith("_proj.weight"):
            prefix = name[:-len(".weight")]
            arrays = quantize_layer(np.asarray(w, np.float32), method, group, version=version, sym=sym,
                                    desc_act=desc_act, rng=rng)
            out.update({f"{prefix}.{k}": v for k, v in arrays.items()})
        else:
            out[name] = w
    return out


# --- bitsandbytes arrays with bitsandbytes' own functions -----------------------------------------------
def bnb_4bit_arrays(w: np.ndarray, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False):
    """{suffix: array} of one 4-bit weight as transformers saves it under ``P.weight``: suffix ""
    is the packed u8 [(n+1)//2, 1], then ".absmax", ".quant_map", (".nested_absmax",
    ".nested_quant_map"), ".quant_state.bitsandbytes__<type>" (QuantState.as_dict(packed=True))."""
    import torch
    import bitsandbytes.functional as F
    packed, state = F.quantize_4bit(torch.from_numpy(np.ascontiguousarray(w, np.float32)), blocksize=blocksize,
                                    compress_statistics=double_quant, quant_type=quant_type)
    arrays = {"": packed.numpy()}
    arrays.update({"." + k: v.numpy() for k, v in state.as_dict(packed=True).items()})
    return arrays


def bnb_int8_arrays(w: np.ndarray) -> dict[str, np.ndarray]:
    """{suffix: array} of one LLM.int8 weight under ``P``: ".weight" i8, ".SCB" f32, ".weight_format"."""
    import torch
    import bitsandbytes.functional as F
    cb, scb, _ = F.int8_vectorwise_quant(torch.from_numpy(np.ascontiguousarray(w)).to(torch.float16))
    return {".weight": cb.numpy(), ".SCB": scb.numpy(), ".weight_format": np.zeros((), np.uint8)}


# --- committed fixtures ------------------------------------------------------------------------------
def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "safetensors", "torch", "transformers", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _float_model(folder: Path, seed: int, dtype: str = "float32"):
    import torch
    from oracle import build_model
    model = build_model("cohere", MODEL, seed).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    return model


def make_bnb(out: Path, name: str, seed: int, dtype: str, **bnb_kwargs) -> dict:
    import torch
    import transformers
    tmp = out / f".{name}-float"
    shutil.rmtree(tmp, ignore_errors=True)
    _float_model(tmp, seed, dtype)
    cfg = transformers.BitsAndBytesConfig(**bnb_kwargs)
    q = transformers.CohereForCausalLM.from_pretrained(tmp, quantization_config=cfg, dtype=getattr(torch, dtype))
    q.save_pretrained(out / name)
    (out / name / "generation_config.json").unlink(missing_ok=True)  # (not needed by the tests)
    shutil.rmtree(tmp)
    return {"how": "transformers BitsAndBytesConfig quantizer on CPU, save_pretrained", "model_dtype": dtype,
            "bnb_config": {k: (str(v) if not isinstance(v, (bool, int, float, str, type(None))) else v)
                           for k, v in bnb_kwargs.items()}}


def make_int4(out: Path, name: str, seed: int, method: str, group: int, **kw) -> dict:
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import load_file
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    _float_model(folder, seed)
    tensors = {k: v.to(torch.float32).numpy() for k, v in load_file(folder / "model.safetensors").items()}
    save_file(quantize_tensors(tensors, method, group, seed=seed, **kw), folder / "model.safetensors",
              metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = gptq_config(group, kw.get("version", 1), kw.get("desc_act", False),
                                             kw.get("sym", False)) if method == "gptq" else awq_config(group)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "generation_config.json").unlink(missing_ok=True)
    return {"how": f"round-to-nearest {method} packed by tools/make_hf_quant_fixtures.py", "group_size": group, **kw}


def check_against_autoawq(packing_utils: Path, seed: int) -> str:
    """Cross-check pack_awq with AutoAWQ's dequantize_gemm (a file that imports only torch)."""
    import importlib.util
    import torch
    spec = importlib.util.spec_from_file_location("awq_packing_utils", packing_utils)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((48, 128)).astype(np.float32) * 0.1
    codes, zeros, scales = rtn_int4(w, 32, sym=False)
    a = pack_awq(codes, zeros, scales)
    got = mod.dequantize_gemm(torch.from_numpy(a["qweight"]), torch.from_numpy(a["qzeros"]),
                              torch.from_numpy(a["scales"]), 4, 32).float().numpy()  # [in, out], in f16
    zg = np.repeat(zeros, 32, axis=0)
    want = ((codes.T.astype(np.float64) - zg) * np.repeat(scales, 32, axis=0)).astype(np.float16).astype(np.float32)
    if not np.array_equal(got, want):
        raise AssertionError("pack_awq disagrees with AutoAWQ's dequantize_gemm")
    return f"pack_awq equals AutoAWQ dequantize_gemm ({packing_utils.name}) on a 48x128 g32 layer (f16 results)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "hf_quant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autoawq-packing", type=Path, help="AutoAWQ's awq/utils/packing_utils.py, to cross-check")
    args = ap.parse_args(argv)
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    import torch
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    f32 = torch.float32
    cases = {
        "bnb-nf4-dq-bf16": make_bnb(out, "bnb-nf4-dq-bf16", args.seed, "bfloat16", load_in_4bit=True,
                                    bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16),
        "bnb-fp4": make_bnb(out, "bnb-fp4", args.seed + 1, "float32", load_in_4bit=True, bnb_4bit_quant_type="fp4",
                            bnb_4bit_compute_dtype=f32),
        "bnb-int8": make_bnb(out, "bnb-int8", args.seed + 2, "float32", load_in_8bit=True),
        "gptq-v1-act-order": make_int4(out, "gptq-v1-act-order", args.seed + 3, "gptq", 32, version=1, sym=True,
                                       desc_act=True),
        "gptq-v2-asym": make_int4(out, "gptq-v2-asym", args.seed + 4, "gptq", 64, version=2, sym=False),
        "awq-gemm": make_int4(out, "awq-gemm", args.seed + 5, "awq", 32),
    }
    prov = {"tool": "tools/make_hf_quant_fixtures.py", "seed": args.seed, "versions": _versions(),
            "model": {"oracle": "tools/oracle.py build_model('cohere', ...)", **MODEL}, "cases": cases}
    if args.autoawq_packing:
        prov["autoawq_cross_check"] = check_against_autoawq(args.autoawq_packing, args.seed)
    for name in cases:
        for f in sorted((out / name).iterdir()):
            f.chmod(0o644)  # (transformers writes 0600 files)
            cases[name].setdefault("files", {})[f.name] = {
                "bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (out / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    for name in cases:
        print(name, sum(f.stat().st_size for f in (out / name).iterdir()), "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
