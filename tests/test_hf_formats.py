"""Hugging Face quantized checkpoints (pycohere.quant.hf_formats): bitsandbytes 4/8-bit, GPTQ, AWQ.

Oracles: bitsandbytes' own CPU dequantizers (``dequantize_4bit``, ``int8_vectorwise_dequant``) for
the bitsandbytes files (committed ones written by transformers' quantizer, others built here with
``quantize_4bit`` / ``int8_vectorwise_quant``); for GPTQ/AWQ, whose reference libraries do not install
here, an independent NumPy unpacking written below from the documented formulas
(/work/shared/reference/quantized-formats.md), applied to files packed by
tools/make_hf_quant_fixtures.py. Then every quantized checkpoint must give the logits of a float
checkpoint holding the oracle-dequantized weights, with both backends.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from safetensors.numpy import load_file, save_file

import make_hf_quant_fixtures as FX
import pycohere
from conftest import DATA
from helpers import TINY, random_tensors
from pycohere.checkpoints import AutoConfig
from pycohere.errors import (CorruptCheckpointError, QuantizationError, UnsupportedFormatError,
                             WeightMismatchError)
from pycohere.checkpoints import load_config, open_weights
from pycohere.kernels import hf as HF
from pycohere.kernels import quant as QK
from pycohere.checkpoints.hf_quantized import HFQuantizedSource
from pycohere.kernels.dispatch import fast_weight
from pycohere.quant.weight import PermutedWeight
from pycohere.quant.schemes import FP4_TABLE, INV127, NF4_TABLE, QuantizedTensor
from pycohere.quant.weight import QuantizedWeight
from pycohere.io.safetensors import Checkpoint

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
FIXTURES = DATA / "hf_quant"
BNB_FIXTURES = ["bnb-nf4-dq-bf16", "bnb-fp4", "bnb-int8"]
INT4_FIXTURES = ["gptq-v1-act-order", "gptq-v2-asym", "awq-gemm"]
UP = "model.layers.0.mlp.up_proj"


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def bnb_bits(a: np.ndarray) -> np.ndarray:
    """The bits to compare with bitsandbytes' own dequantization: every bit, but the sign of a zero.
    bitsandbytes disagrees with itself there: fp4 code 8 decodes to -0.0 in its AVX2 CPU and CUDA
    kernels and to +0.0 in its AVX-512 CPU kernel (bitsandbytes 0.50.2), so the oracle's zero sign depends
    on the host. pycohere's own choice (-0.0) is pinned by test_fp4_code_8_is_negative_zero."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return np.where(a == 0, np.float32(0), a).view(np.uint32)


# --- independent oracles -----------------------------------------------------------------------------
def nibble(words: np.ndarray, row_index, col_index, position) -> np.ndarray:
    """4-bit field ``position`` (0..7, bits 4p..4p+3) of the int32 words words[row_index, col_index]."""
    w = words.view(np.uint32)[row_index, col_index]
    return ((w >> (4 * np.asarray(position, dtype=np.uint32))) & 15).astype(np.int64)


def gptq_reference(a: dict, version: int, group: int, scale_only: bool = False) -> np.ndarray:
    """W [out, in] float64 = s[g, o] * (q - z'), z' = z + 1 for v1; g = g_idx[k] (or k // group).
    scale_only: the scale of each weight instead."""
    inp, out = a["qweight"].shape[0] * 8, a["qweight"].shape[1]
    k, o = np.arange(inp)[:, None], np.arange(out)[None, :]
    q = nibble(a["qweight"], k // 8, o, k % 8)                          # [in, out]
    g = (a["g_idx"] if "g_idx" in a else np.arange(inp) // (inp if group == -1 else group))[:, None]
    z = nibble(a["qzeros"], g, o // 8, o % 8) + (1 if version == 1 else 0)
    return (a["scales"].astype(np.float64)[g, o] * (1 if scale_only else q - z)).T


def awq_reference(a: dict, group: int, scale_only: bool = False) -> np.ndarray:
    """W [out, in] float64 = s * (q - z): column o sits in nibble i of word o // 8 with order[i] = o % 8."""
    inp, out = a["qweight"].shape[0], a["qweight"].shape[1] * 8
    position = np.array([0, 4, 1, 5, 2, 6, 3, 7])  # inverse of AutoAWQ's [0, 2, 4, 6, 1, 3, 5, 7]
    k, o = np.arange(inp)[:, None], np.arange(out)[None, :]
    g = k // (inp if group == -1 else group)
    q = nibble(a["qweight"], k, o // 8, position[o % 8])
    z = nibble(a["qzeros"], g, o // 8, position[o % 8])
    return (a["scales"].astype(np.float64)[g, o] * (1 if scale_only else q - z)).T


def bnb_reference(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a bitsandbytes checkpoint as float32, quantized ones dequantized by
    bitsandbytes on CPU in float32 (quant_state.dtype forced to float32: pycohere computes in
    float32, as bitsandbytes does with bnb_4bit_compute_dtype=float32)."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    from safetensors.torch import load_file as load_torch
    sd = load_torch(str(folder / "model.safetensors"))
    out = {}
    for name, t in sd.items():
        if ".quant_state.bitsandbytes__" in name:
            base = name.split(".quant_state.")[0]
            qs = F.QuantState.from_dict({k[len(base) + 1:]: v for k, v in sd.items() if k.startswith(base + ".")},
                                        device="cpu")
            qs.dtype = torch.float32
            out[base] = F.dequantize_4bit(sd[base], qs).numpy()
        elif name.endswith(".SCB"):
            base = name[:-len(".SCB")]
            out[base + ".weight"] = F.int8_vectorwise_dequant(sd[base + ".weight"], t).numpy()
    for name, t in sd.items():
        companion = ".weight." in name or name.endswith((".SCB", ".weight_format")) or name in out
        if not companion:
            out[name] = t.float().numpy()
    return out


def int4_reference(folder: Path) -> dict[str, np.ndarray]:
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    tensors = load_file(str(folder / "model.safetensors"))
    out = {}
    for prefix in sorted(n[:-len(".qweight")] for n in tensors if n.endswith(".qweight")):
        a = {s: tensors[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")
             if f"{prefix}.{s}" in tensors}
        if qc["quant_method"] == "gptq":
            w = gptq_reference(a, 2 if qc.get("checkpoint_format") == "gptq_v2" else 1, qc["group_size"])
        else:
            w = awq_reference(a, qc["group_size"])
        out[prefix + ".weight"] = w.astype(np.float32)  # exact: small integers times f16 values
    for name, t in tensors.items():
        if not name.endswith((".qweight", ".qzeros", ".scales", ".g_idx")):
            out[name] = t.astype(np.float32)
    return out


def write_float_twin(src: Path, dst: Path, tensors: dict[str, np.ndarray]) -> Path:
    dst.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(cfg))
    # (C order: safetensors.numpy writes an array's memory as it lies, so a transposed view would
    # be stored transposed)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dst / "model.safetensors"))
    return dst


def layer_source(tmp_path, tensors: dict, qc: dict, name="layer.safetensors") -> HFQuantizedSource:
    """A source over a safetensors file of loose tensors (no model config needed)."""
    path = tmp_path / name
    save_file(tensors, str(path))
    return HFQuantizedSource(Checkpoint(path), SimpleNamespace(quantization_config=qc))


def memmap_base(a: np.ndarray):
    while a.base is not None and not isinstance(a, np.memmap):
        a = a.base
    return a


# --- bitsandbytes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BNB_FIXTURES)
def test_transformers_bnb_files_dequantize_bit_exactly(name):
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    folder = FIXTURES / name
    want = bnb_reference(folder)
    source = open_weights(folder, load_config(folder))
    quantized = [n for n in source.shapes if n.endswith("_proj.weight")]
    assert len(quantized) == 14 and not source.problems
    for n in quantized:
        w = source.matrix(n, np.float32, "numpy")
        np.testing.assert_array_equal(bnb_bits(w.dequantize()), bnb_bits(want[n]), err_msg=n)
        np.testing.assert_array_equal(bnb_bits(QK.dequantize_rows(w.tensor, slice(0, w.shape[0]))), bnb_bits(want[n]))
    if name == "bnb-nf4-dq-bf16":
        # bitsandbytes' own bf16 output (the stored quant_state dtype) is our float32 rounded to bf16
        from safetensors.torch import load_file as load_torch
        sd = load_torch(str(folder / "model.safetensors"))
        base = "model.layers.1.mlp.down_proj.weight"
        qs = F.QuantState.from_dict({k[len(base) + 1:]: v for k, v in sd.items() if k.startswith(base + ".")}, "cpu")
        assert qs.dtype == torch.bfloat16 and qs.nested
        ours = torch.from_numpy(source.matrix(base, np.float32, "numpy").dequantize()).to(torch.bfloat16)
        assert torch.equal(F.dequantize_4bit(sd[base], qs).view(torch.int16), ours.view(torch.int16))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 1024])
@pytest.mark.parametrize("double_quant", [False, True])
def test_bnb_4bit_variants_are_bit_exact_and_zero_copy(tmp_path, quant_type, blocksize, double_quant):
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    rng = np.random.default_rng(blocksize)
    w = (rng.standard_normal((40, 1024)) * np.exp(rng.uniform(-4, 1, (40, 1)))).astype(np.float32)
    w[3] = 0  # all-zero blocks
    arrays = FX.bnb_4bit_arrays(w, quant_type, blocksize, double_quant)
    source = layer_source(tmp_path, {f"{UP}.weight{k}": v for k, v in arrays.items()},
                          {"quant_method": "bitsandbytes"})
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=blocksize, compress_statistics=double_quant,
                                    quant_type=quant_type)
    want = F.dequantize_4bit(packed, state).numpy()
    weight = source.matrix(f"{UP}.weight", np.float32, "numba")
    got = weight.dequantize()
    np.testing.assert_array_equal(bnb_bits(got), bnb_bits(want))
    assert weight.storage == quant_type and weight.group_size == min(blocksize, 128)
    (info,) = source.tensor_table()
    assert info.storage == f"bnb-{quant_type}" + ("+dq" if double_quant else "") and info.block_size == blocksize
    assert info.nbytes == sum(v.nbytes for v in arrays.values())
    # zero copy: the packed codes (and a plain absmax used as it is) are views of the mapped file
    assert np.shares_memory(weight.arrays["qweight"], source.ckpt[f"{UP}.weight"].array)
    assert isinstance(memmap_base(weight.arrays["qweight"]), np.memmap)
    scales_mapped = np.shares_memory(weight.arrays["scales"], source.ckpt[f"{UP}.weight.absmax"].array)
    assert scales_mapped == (not double_quant and blocksize <= 128)
    x = rng.standard_normal((2, 1024)).astype(np.float32)
    np.testing.assert_allclose(weight.matmul(x), x @ want.T, rtol=1e-4, atol=1e-4 * np.abs(x @ want.T).max())


def test_bnb_int8_matches_int8_vectorwise_dequant(tmp_path):
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((33, 80)) * np.exp(rng.uniform(-3, 2, (33, 1)))).astype(np.float32)
    arrays = FX.bnb_int8_arrays(w)
    source = layer_source(tmp_path, {UP + k: v for k, v in arrays.items()}, {"quant_method": "bitsandbytes"})
    want = F.int8_vectorwise_dequant(torch.from_numpy(arrays[".weight"]), torch.from_numpy(arrays[".SCB"])).numpy()
    weight = source.matrix(f"{UP}.weight", np.float32, "numba")
    np.testing.assert_array_equal(bits(weight.dequantize()), bits(want))
    np.testing.assert_array_equal(bits(weight.rows(np.array([32, 0]))), bits(want[[32, 0]]))
    # the plain int8 scheme's single rounding q * (SCB / 127) would not be bit exact:
    single = arrays[".weight"].astype(np.float32) * (arrays[".SCB"][:, None] / np.float32(127))
    assert (single != want).any()
    assert source.tensor_table()[0].storage == "bnb-int8"


def test_bnb_blocks_spanning_rows_are_refused(tmp_path):
    pytest.importorskip("bitsandbytes")
    w = np.ones((8, 96), np.float32)
    arrays = FX.bnb_4bit_arrays(w, "nf4", 64)
    with pytest.raises(UnsupportedFormatError, match=rf"{UP}.weight \[8, 96\]: bitsandbytes blocks of 64 do not "
                                                     "divide its rows of 96"):
        layer_source(tmp_path, {f"{UP}.weight{k}": v for k, v in arrays.items()}, {"quant_method": "bitsandbytes"})


# --- GPTQ / AWQ --------------------------------------------------------------------------------------
INT4_CASES = [  # method, group, version, sym, desc_act
    ("gptq", 32, 1, True, False), ("gptq", 64, 1, False, True), ("gptq", 128, 2, True, False),
    ("gptq", 128, 2, False, True), ("gptq", -1, 1, False, False), ("gptq", -1, 2, True, False),
    ("gptq", 256, 2, False, True), ("awq", 32, None, False, False), ("awq", 64, None, False, False),
    ("awq", 128, None, False, False), ("awq", -1, None, False, False)]


def int4_arrays(method, group, version, sym, desc_act, seed=0, shape=(40, 512)):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    w[:, :3] *= 50  # a wide range, and some f16 scales in the subnormal range
    w[5] *= 1e-5
    a = FX.quantize_layer(w, method, group, version=version or 1, sym=sym, desc_act=desc_act, rng=rng)
    qc = FX.gptq_config(group, version, desc_act, sym) if method == "gptq" else FX.awq_config(group)
    ref = gptq_reference(a, version, group) if method == "gptq" else awq_reference(a, group)
    return a, qc, ref


def kernel_bound(x, a, method, version, group) -> np.ndarray:
    """Error bound of a float32 product with repacked int4-asym weights: the kernel adds terms
    s * x * n and m * sum(x) with |n s| + |m| <= 31 s, so (in + 8) eps * sum_j |x_j| 31 s_j (x4)."""
    s = gptq_reference(a, version, group, True) if method == "gptq" else awq_reference(a, group, True)
    return 4 * (x.shape[1] + 8) * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ (31 * s).T) + 1e-30


@pytest.mark.parametrize("method,group,version,sym,desc_act", INT4_CASES)
def test_gptq_awq_repack_is_bit_exact(tmp_path, method, group, version, sym, desc_act):
    a, qc, ref = int4_arrays(method, group, version, sym, desc_act)
    if method == "gptq" and sym:  # symmetric files: every zero nibble stores 8 (v2) or 8 - 1 (v1)
        assert (a["qzeros"].view(np.uint32) == (0x77777777 if version == 1 else 0x88888888)).all()
    if method == "gptq" and not desc_act:
        a = {k: v for k, v in a.items() if k != "g_idx" or group == 32}  # g_idx may be absent without act-order
    source = layer_source(tmp_path, {f"{UP}.{k}": v for k, v in a.items()}, qc)
    spec = source.matrix(f"{UP}.weight", np.float32, "numpy")
    fast = source.matrix(f"{UP}.weight", np.float32, "numba")
    want = ref.astype(np.float32)
    assert (a["scales"] > 0).all()  # positive scales: equal bits (see _int4_asym_arrays)
    np.testing.assert_array_equal(bits(spec.dequantize()), bits(want))
    assert isinstance(spec, PermutedWeight) == desc_act
    inner = spec.inner if desc_act else spec
    assert inner.storage == "int4-asym" and inner.group_size == (128 if group in (-1, 256) else group)
    np.testing.assert_array_equal(bits(QK.dequantize_rows(inner.tensor, slice(0, 40))),
                                  bits(inner.dequantize()))  # the Numba dequantizer, in the repacked order
    ids = np.array([[39, 0], [5, 7]])
    np.testing.assert_array_equal(bits(fast.rows(ids)), bits(want[ids]))
    rng = np.random.default_rng(2)
    for rows in (1, 3, 17):  # decode GEMV and prefill tiles
        x = rng.standard_normal((rows, 512)).astype(np.float32)
        exact = x.astype(np.float64) @ ref.T
        tol = kernel_bound(x, a, method, version, group)
        assert (np.abs(spec.matmul(x) - exact) <= tol).all() and (np.abs(fast.matmul(x) - exact) <= tol).all()
    label = {"gptq": f"gptq-v{version} ", "awq": "awq "}[method] + ("per-channel" if group == -1 else f"g{group}")
    (info,) = source.tensor_table()
    on_disk = sum(v.nbytes for v in a.values())
    assert (info.storage, info.shape, info.nbytes) == (label, (40, 512), on_disk)
    assert info.bits_per_weight == pytest.approx(8 * on_disk / (40 * 512)) and info.block_size == (
        None if group == -1 else group)


def test_groups_the_kernels_cannot_take_are_refused(tmp_path):
    a, qc, _ = int4_arrays("gptq", 16, 2, False, False, shape=(8, 64))
    with pytest.raises(UnsupportedFormatError, match=rf"{UP}.weight: gptq-v2 g16 with groups of 16 input values "
                                                     r"over rows of 64; .* multiple of 32"):
        layer_source(tmp_path, {f"{UP}.{k}": v for k, v in a.items()}, qc)


def test_int4_asym_repacking_is_exact_for_every_f16_scale():
    # _int4_asym_arrays' claim, exhaustively: for every positive finite f16 scale (subnormals
    # included), code n in 0..15 and zero point z in 0..16, n*s + (-(s*z)) computed in float32 has
    # the bits of (n - z)*s; for negative scales the values are equal (zero's sign may differ).
    from pycohere.checkpoints.hf_quantized import _int4_asym_arrays
    positive = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16)
    for scales, exact_bits in ((positive, True), (-positive[::7], False)):
        z = np.arange(17)
        s, m = _int4_asym_arrays(scales[None, :], np.ones((1, scales.size), np.int64))
        s = s[:, 0][:, None, None]
        m_all = -(s * z[None, None, :].astype(np.float32))
        n = np.arange(16, dtype=np.float32)[None, :, None]
        ours = n * s + m_all
        theirs = (n - z[None, None, :].astype(np.float32)) * s
        exact = (np.arange(16)[None, :, None] - z[None, None, :]) * scales.astype(np.float64)[:, None, None]
        assert (theirs == exact).all() and (ours == exact).all()
        if exact_bits:
            np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


# --- whole models: logits equal a float checkpoint of the oracle-dequantized weights ------------------
def build_int4_model(folder: Path, method, group, version=1, sym=False, desc_act=False) -> Path:
    """A random tiny model (hidden 128, ffn 256) with GPTQ/AWQ projections, written in tmp."""
    cfg = dict(TINY, model_type="cohere", hidden_size=128, intermediate_size=256)
    folder.mkdir(parents=True)
    tensors = random_tensors(AutoConfig.from_dict(cfg), seed=3)
    save_file(FX.quantize_tensors(tensors, method, group, version=version, sym=sym, desc_act=desc_act, seed=4),
              str(folder / "model.safetensors"))
    qc = FX.gptq_config(group, version, desc_act, sym) if method == "gptq" else FX.awq_config(group)
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}))
    return folder


MODEL_CASES = BNB_FIXTURES + INT4_FIXTURES + ["tmp-gptq-v1-g128-act-order", "tmp-gptq-v2-per-channel",
                                              "tmp-awq-g128"]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_logits_equal_the_float_twin(tmp_path, case):
    if case.startswith("tmp-"):
        folder = {"tmp-gptq-v1-g128-act-order": lambda p: build_int4_model(p, "gptq", 128, 1, False, True),
                  "tmp-gptq-v2-per-channel": lambda p: build_int4_model(p, "gptq", -1, 2, True),
                  "tmp-awq-g128": lambda p: build_int4_model(p, "awq", 128)}[case](tmp_path / "q")
    else:
        folder = FIXTURES / case
    want = bnb_reference(folder) if case.startswith("bnb") else int4_reference(folder)
    twin = write_float_twin(folder, tmp_path / "float", want)
    ids = np.array([[5, 9, 13, 21, 8, 40, 2]])
    for backend in ("numpy", "numba"):
        q = pycohere.AutoModelForCausalLM.from_pretrained(folder, backend=backend)
        f = pycohere.AutoModelForCausalLM.from_pretrained(twin, backend=backend)
        a, b = q(ids).logits, f(ids).logits
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), (backend, np.abs(a - b).max())
        out = q.generate(ids, max_new_tokens=3, do_sample=False)
        assert out.shape == (1, ids.shape[1] + 3)
        twin_out = f.generate(ids, max_new_tokens=3, do_sample=False)
        assert out[0, ids.shape[1]:].tolist() == twin_out[0, ids.shape[1]:].tolist()


def test_tensor_table_and_inspect_report_the_disk_format():
    folder = FIXTURES / "gptq-v1-act-order"
    rows = {r.name: r for r in open_weights(folder, load_config(folder)).tensor_table()}
    tensors = Checkpoint(folder).tensors
    up = rows["model.layers.0.mlp.up_proj.weight"]
    disk = sum(tensors[f"{UP}.{s}"].nbytes for s in ("qweight", "qzeros", "scales", "g_idx"))
    assert (up.storage, up.shape, up.block_size, up.nbytes) == ("gptq-v1 g32", (128, 64), 32, disk)
    # 4 bits + an f16 scale and a 4-bit zero per 32 weights + a 32-bit g_idx entry per input
    assert up.bits_per_weight == pytest.approx(4 + (16 + 4) / 32 + 32 / 128)
    assert rows["model.embed_tokens.weight"].storage == "F32" and len(rows) == 14 + 4
    nf4 = {r.name: r for r in open_weights(FIXTURES / "bnb-nf4-dq-bf16",
                                            load_config(FIXTURES / "bnb-nf4-dq-bf16")).tensor_table()}
    assert nf4[f"{UP}.weight"].storage == "bnb-nf4+dq" and nf4["model.norm.weight"].storage == "BF16"
    r = subprocess.run([sys.executable, "-m", "pycohere", "inspect", str(folder)], capture_output=True, text=True)
    assert r.returncode == 0 and "gptq-v1 g32" in r.stdout, r.stderr


# --- errors ------------------------------------------------------------------------------------------
def copy_fixture(tmp_path, name) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def edit_tensors(folder: Path, change) -> None:
    from safetensors.torch import load_file as load_torch, save_file as save_torch
    path = folder / "model.safetensors"
    tensors = load_torch(str(path))
    change(tensors)
    save_torch(tensors, str(path), metadata={"format": "pt"})


def edit_config(folder: Path, **qc) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(qc)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_absmax_is_reported_by_name(tmp_path):
    pytest.importorskip("torch")
    folder = copy_fixture(tmp_path, "bnb-nf4-dq-bf16")
    edit_tensors(folder, lambda t: t.pop(f"{UP}.weight.absmax"))
    with pytest.raises(WeightMismatchError, match=rf"incomplete quantized: {UP}.weight \(bnb-nf4\+dq\): "
                                                  rf"{UP}.weight.absmax missing"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)


def test_wrong_qzeros_shape_is_reported_by_name(tmp_path):
    pytest.importorskip("torch")
    folder = copy_fixture(tmp_path, "gptq-v2-asym")
    edit_tensors(folder, lambda t: t.update({f"{UP}.qzeros": t[f"{UP}.qzeros"][:, :3].contiguous()}))
    with pytest.raises(WeightMismatchError, match=rf"{UP}.weight \(gptq-v2 g64\): {UP}.qzeros is I32 \[1, 3\], "
                                                  r"expected I32 \[1, 16\]"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("fixture,change,message", [
    ("gptq-v2-asym", dict(bits=8),
     r"model.layers.0.mlp.down_proj.weight: GPTQ with bits=8 .* pycohere reads .*GPTQ 4-bit"),
    ("gptq-v2-asym", dict(checkpoint_format="marlin"), r"GPTQ with checkpoint_format 'marlin'"),
    ("gptq-v2-asym", dict(dynamic={"-:.*down.*": {}}), r"per-module 'dynamic' overrides"),
    ("awq-gemm", dict(version="gemv"), r"AWQ with version 'gemv' .*AWQ 4-bit GEMM"),
    ("awq-gemm", dict(version="exllama"), r"AWQ with version 'exllama'"),
])
def test_unsupported_variants_name_the_tensor(tmp_path, fixture, change, message):
    folder = copy_fixture(tmp_path, fixture)
    edit_config(folder, **change)
    with pytest.raises(UnsupportedFormatError, match=message):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)


def test_unknown_quant_method(tmp_path):
    folder = copy_fixture(tmp_path, "awq-gemm")
    edit_config(folder, quant_method="hqq")
    with pytest.raises(UnsupportedFormatError, match="'hqq'"):  # formats.open_weights -> WeightSource
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(UnsupportedFormatError, match=r"quant_method 'hqq'; this source reads bitsandbytes, gptq, awq"):
        HFQuantizedSource(Checkpoint(folder), load_config(folder))


def test_quantize_on_load_of_a_quantized_checkpoint_is_refused():
    with pytest.raises(QuantizationError, match=r"already quantized \(gptq\)"):
        pycohere.AutoModelForCausalLM.from_pretrained(FIXTURES / "gptq-v1-act-order", load_in_4bit=True)


def test_damaged_bnb_files(tmp_path):
    torch = pytest.importorskip("torch")
    folder = copy_fixture(tmp_path, "bnb-int8")
    edit_tensors(folder, lambda t: t.update({f"{UP}.weight_format": torch.tensor(2, dtype=torch.uint8)}))
    with pytest.raises(UnsupportedFormatError, match=rf"{UP}.weight: bitsandbytes weight_format 2"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    folder = copy_fixture(tmp_path, "bnb-fp4")
    key = f"{UP}.weight.quant_state.bitsandbytes__fp4"
    edit_tensors(folder, lambda t: t.update({key: torch.tensor(list(b"{not json"), dtype=torch.uint8)}))
    with pytest.raises(CorruptCheckpointError, match=rf"{key} is not bitsandbytes' quant_state JSON"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    shutil.rmtree(folder)
    folder = copy_fixture(tmp_path, "bnb-fp4")
    edit_tensors(folder, lambda t: t.update({key.replace("fp4", "af4"): t.pop(key)}))
    with pytest.raises(UnsupportedFormatError,
                       match=rf"{UP}.weight: bitsandbytes 4-bit type 'af4'; pycohere reads nf4 and fp4"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    shutil.rmtree(folder)
    folder = copy_fixture(tmp_path, "bnb-fp4")
    edit_tensors(folder, lambda t: t.update({f"{UP}.weight.quant_map": t[f"{UP}.weight.quant_map"].flip(0)}))
    with pytest.raises(UnsupportedFormatError, match=rf"{UP}.weight.quant_map is not bitsandbytes' fp4 code book"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    shutil.rmtree(folder)
    folder = copy_fixture(tmp_path, "bnb-fp4")  # every bitsandbytes array gone: packed bytes alone
    edit_tensors(folder, lambda t: [t.pop(k) for k in list(t) if k.startswith(UP + ".weight.")])
    with pytest.raises(WeightMismatchError,
                       match=rf"{UP}.weight is U8 \[4096, 1\] but has neither bitsandbytes 4-bit arrays"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)


def test_damaged_gptq_files(tmp_path):
    torch = pytest.importorskip("torch")
    folder = copy_fixture(tmp_path, "gptq-v1-act-order")
    edit_tensors(folder, lambda t: t[f"{UP}.g_idx"].copy_((torch.arange(64) >= 24).to(torch.int32)))
    with pytest.raises(UnsupportedFormatError, match=rf"{UP}.g_idx: groups of unequal size \(24..40 inputs"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    edit_tensors(folder, lambda t: t[f"{UP}.g_idx"].fill_(7))
    with pytest.raises(CorruptCheckpointError, match=rf"{UP}.g_idx has group indices outside 0..1"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    shutil.rmtree(folder)
    folder = copy_fixture(tmp_path, "gptq-v1-act-order")
    edit_tensors(folder, lambda t: t[f"{UP}.scales"].__setitem__((0, 0), float("inf")))
    with pytest.raises(CorruptCheckpointError, match=rf"{UP}.scales \(the scales of {UP}.weight\) holds inf or NaN"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)
    shutil.rmtree(folder)
    folder = copy_fixture(tmp_path, "gptq-v1-act-order")
    edit_tensors(folder, lambda t: t.pop(f"{UP}.qweight"))
    with pytest.raises(WeightMismatchError, match=rf"{UP}.qzeros has no {UP}.qweight beside it"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)


def test_config_that_does_not_belong_to_the_files(tmp_path):
    folder = copy_fixture(tmp_path, "gptq-v2-asym")
    edit_config(folder, quant_method="bitsandbytes")
    with pytest.raises(CorruptCheckpointError, match=r"declares bitsandbytes quantization, but no tensor carries "
                                                     r"bitsandbytes arrays .* look like another quantized format"):
        pycohere.AutoModelForCausalLM.from_pretrained(folder)


# --- kernels of the bitsandbytes schemes (hypothesis against the NumPy spec) --------------------------
SETTINGS = settings(max_examples=3 if NO_JIT else 15, deadline=None)


def random_tensor(rng, scheme, out_dim, n_groups, group):
    in_dim = group * n_groups
    scales = np.exp(rng.uniform(-6, 2, (out_dim, n_groups))).astype(np.float32)
    scales[rng.random(scales.shape) < 0.1] = 0
    if scheme == "fp4":
        arrays = {"qweight": rng.integers(0, 256, (out_dim, in_dim // 2), dtype=np.uint8), "scales": scales}
    else:
        arrays = {"qweight": rng.integers(-127, 128, (out_dim, in_dim), dtype=np.int8), "scales": scales[:, :1]}
        group = in_dim
    return QuantizedTensor.from_arrays(arrays, {"scheme": scheme, "group_size": group, "shape": [out_dim, in_dim]})


@pytest.mark.parametrize("scheme,group", [("fp4", 32), ("fp4", 64), ("fp4", 128), ("bnb-int8", 64)])
@SETTINGS
@given(rows=st.integers(1, 20), out_dim=st.integers(1, 3 if NO_JIT else 40), n_groups=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_bnb_schemes_equal_spec(scheme, group, rows, out_dim, n_groups, seed):
    rng = np.random.default_rng(seed)
    q = random_tensor(rng, scheme, out_dim, n_groups, group)
    spec = q.dequantize()
    np.testing.assert_array_equal(bits(QK.dequantize_rows(q, slice(0, out_dim))), bits(spec))
    x = rng.standard_normal((rows, q.shape[1])).astype(np.float32)
    got = QK.quantized_matmul(x, q)
    if rows <= QK.GEMV_MAX_ROWS:
        assert QK._gemv(x, q.arrays, scheme) is not None  # the registered decode kernel ran
    exact = x.astype(np.float64) @ spec.astype(np.float64).T
    bound = 4 * (q.shape[1] + 8) * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(spec).T) + 1e-37
    assert (np.abs(got - exact) <= bound).all()


@SETTINGS
@given(out_dim=st.integers(1, 5 if NO_JIT else 40), half=st.integers(1, 8 if NO_JIT else 64),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_permute_codes_equals_spec(out_dim, half, seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 256, (out_dim, half), dtype=np.uint8)
    perm = rng.permutation(2 * half)
    got = np.empty_like(q)
    HF.permute_codes(q, perm, got)
    np.testing.assert_array_equal(got, HF.permute_codes_spec(q, perm))
    codes = np.stack([q & 15, q >> 4], axis=-1).reshape(out_dim, -1)  # element 2j low, 2j + 1 high
    np.testing.assert_array_equal(np.stack([got & 15, got >> 4], axis=-1).reshape(out_dim, -1), codes[:, perm])


def test_fp4_code_8_is_negative_zero():
    """pycohere decodes fp4 code 8 as -0.0 (bitsandbytes' AVX2 CPU and CUDA kernels; its AVX-512 kernel and
    get_4bit_type give +0.0): the same bits on every host, whatever bitsandbytes does there."""
    assert bits(FP4_TABLE)[8] == 0x80000000 and bits(FP4_TABLE)[0] == 0
    codes = np.array([[0x80, 0x08]], dtype=np.uint8)  # element 0: code 8 (high nibble), 1: 0, 2: 0, 3: 8
    w = QuantizedWeight({"qweight": np.tile(codes, (1, 16)), "scales": np.full((1, 1), 0.5, np.float32)},
                        {"scheme": "fp4", "group_size": 64, "shape": [1, 64]})
    assert bits(w.dequantize()[0, :4]).tolist() == [0x80000000, 0, 0, 0x80000000]
    assert bits(QK.dequantize_rows(w.tensor, slice(0, 1))[0, :4]).tolist() == [0x80000000, 0, 0, 0x80000000]


def test_tables_are_bitsandbytes():
    pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    assert np.array_equal(FP4_TABLE, F.get_4bit_type("fp4", "cpu").numpy())  # values (-0.0 == 0.0)
    assert np.array_equal(NF4_TABLE, F.get_4bit_type("nf4", "cpu").numpy())
    assert INV127 == np.float32(1 / 127)


def test_kernel_permuted_weight():
    rng = np.random.default_rng(0)
    inner = QuantizedWeight.from_tensor(random_tensor(rng, "fp4", 9, 2, 32))
    perm = rng.permutation(64)
    pw = fast_weight(PermutedWeight(inner, perm))
    w = np.empty((9, 64), np.float32)
    w[:, perm] = inner.dequantize()  # W[:, perm[i]] = inner[:, i]
    np.testing.assert_array_equal(pw.dequantize(), w)
    np.testing.assert_array_equal(pw.rows(np.array([8, 1])), w[[8, 1]])
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(pw.matmul(x), x @ w.T, rtol=1e-5, atol=1e-5 * np.abs(x @ w.T).max())
    assert pw.nbytes == inner.nbytes + 64 * 8 and pw.shape == (9, 64)


@pytest.mark.skipif(NO_JIT, reason="this is the launcher of the NUMBA_DISABLE_JIT run itself")
def test_kernel_tests_also_pass_as_plain_python():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "kernel and not plain",
                        __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and " passed" in r.stdout and "failed" not in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
