"""Quantized checkpoints on disk: the incremental safetensors writer (checked with the safetensors
library as the oracle), the metadata, memory-mapped loading in logical names, manifest errors,
sharding and 64-bit offsets."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import pycohere
from helpers import write_checkpoint
from pycohere.errors import (CorruptCheckpointError, QuantizationError, UnsupportedFormatError,
                             WeightMismatchError)
from pycohere.quant import QuantizedWeight, quantize
from pycohere.io.safetensors import RowReader, SafetensorsWriter, TensorSpec, plan_shards, shard_file_names
from pycohere.kernels.dispatch import fast_weight
from pycohere.quant.config import METADATA_KEY
from pycohere.io.dtypes import widen
from pycohere.spec.weights import DenseWeight
from pycohere.io.safetensors import Checkpoint

# Row lengths 128 (hidden, o_proj) and 256 (down_proj): every group size (32/64/128) divides them.
DIMS = dict(hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="module")
def bf16_src(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("src") / "bf16", "cohere", storage="BF16", **DIMS)


# --- the writer ------------------------------------------------------------------------------------
def test_writer_output_is_read_by_the_safetensors_library(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3)).astype(np.float32)
    b = rng.integers(-128, 128, size=(7, 16), dtype=np.int8)
    c = rng.integers(0, 256, size=(9,), dtype=np.uint8)
    specs = [TensorSpec("a", "F32", a.shape), TensorSpec("b", "I8", b.shape), TensorSpec("c", "U8", c.shape)]
    w = SafetensorsWriter(tmp_path / "x.safetensors", specs, {"k": "v"})
    w.write("c", c)                    # any order, and in pieces of rows
    w.write("b", b[4:], 4)
    w.write("a", a)
    w.write("b", b[:4], 0)
    w.close()
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0 and len(raw) == 8 + n + a.nbytes + b.nbytes + c.nbytes
    loaded = load_file(str(tmp_path / "x.safetensors"))
    for name, want in (("a", a), ("b", b), ("c", c)):
        assert loaded[name].dtype == want.dtype
        np.testing.assert_array_equal(loaded[name], want)
    with safe_open(str(tmp_path / "x.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"k": "v"}


def test_writer_refuses_incomplete_or_wrong_writes(tmp_path):
    w = SafetensorsWriter(tmp_path / "y.safetensors", [TensorSpec("a", "F32", (4, 2))])
    with pytest.raises(ValueError, match="cannot write"):
        w.write("a", np.zeros((4, 2), np.float64))
    with pytest.raises(ValueError, match="cannot write"):
        w.write("a", np.zeros((2, 2), np.float32), 3)  # rows 3..4 of a 4-row tensor
    w.write("a", np.zeros((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="not completely written"):
        w.close()
    with pytest.raises(FileExistsError):  # never overwrites
        SafetensorsWriter(tmp_path / "y.safetensors", [])


def test_shard_planning_keeps_a_tensors_arrays_together():
    s = lambda name, n: TensorSpec(name, "U8", (n,))
    groups = [[s("a.qweight", 60), s("a.scales", 10)], [s("n", 20)], [s("b.qweight", 100)], [s("c", 5)]]
    shards = plan_shards(groups, 90)
    assert [[t.name for t in shard] for shard in shards] == [["a.qweight", "a.scales", "n"], ["b.qweight"], ["c"]]
    assert plan_shards(groups, None) == [sum(groups, [])]
    assert shard_file_names(1) == ["model.safetensors"]
    assert shard_file_names(3)[1] == "model-00002-of-00003.safetensors"


# --- a quantized checkpoint ------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,group", [("int4", 64), ("q4_0", None), ("int8", None)])
def test_quantized_checkpoint_layout_and_bit_exact_arrays(bf16_src, tmp_path, scheme, group):
    dst = pycohere.quantize_checkpoint(bf16_src, tmp_path / "q", scheme, group, progress=False)
    src_tensors = Checkpoint(bf16_src).tensors
    with safe_open(str(dst / "model.safetensors"), framework="numpy") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        # (safetensors' numpy framework cannot return BF16 tensors: only the packed arrays are read)
        stored = {k: f.get_tensor(k) for k in f.keys() if f.get_slice(k).get_dtype() != "BF16"}
    assert meta["format_version"] == 1
    quantized = sorted(meta["tensors"])
    # every projection and the embedding are quantized; norms stay float under their own names
    assert quantized == sorted(n for n in src_tensors if n.endswith("_proj.weight") or "embed" in n)
    for name in quantized:
        want = quantize(widen(src_tensors[name].array, "BF16"), scheme, group)
        assert meta["tensors"][name] == {**want.metadata}
        for array, value in want.arrays.items():
            got = stored[f"{name}.{array}"]
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), (name, array)
    raw_norm = Checkpoint(dst)["model.norm.weight"]
    assert raw_norm.dtype == "BF16" and raw_norm.array.tobytes() == src_tensors["model.norm.weight"].array.tobytes()
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"] == {"scheme": scheme, "group_size": group, "keep_embeddings": False,
                                          "quant_method": "pycohere", "format_version": 1}
    assert cfg["hidden_size"] == 128 and cfg["model_type"] == "cohere"


def test_loaded_weights_are_views_of_the_memory_map(bf16_src, tmp_path):
    dst = pycohere.quantize_checkpoint(bf16_src, tmp_path / "q", "int4-asym", 32, progress=False)
    model = pycohere.AutoModelForCausalLM.from_pretrained(dst, backend="numpy")
    ckpt = model.model.checkpoint.ckpt
    W = model.params["layers"][1]["down_proj"]
    assert isinstance(W, QuantizedWeight) and W.shape == (128, 256) and W.storage == "int4-asym"
    for array in ("qweight", "scales", "mins"):
        view = ckpt[f"model.layers.1.mlp.down_proj.weight.{array}"].array
        assert W.arrays[array] is view and not view.flags.writeable and not view.flags.owndata
    # the tied head IS the quantized embedding: one matrix for the lookup and the logits
    assert model.params["lm_head"] is model.params["embed_tokens"]
    assert isinstance(model.params["embed_tokens"], QuantizedWeight)
    assert model.params["norm"].dtype == np.float32


def test_keep_embeddings_and_untied_head(tmp_path):
    src = write_checkpoint(tmp_path / "untied", "cohere", storage="BF16", tie_word_embeddings=False, **DIMS)
    dst = pycohere.quantize_checkpoint(src, tmp_path / "q", "nf4", keep_embeddings=True, progress=False)
    model = pycohere.AutoModelForCausalLM.from_pretrained(dst, backend="numpy")
    for name in ("embed_tokens", "lm_head"):
        assert isinstance(model.params[name], DenseWeight) and model.params[name].storage == "BF16"
    assert isinstance(model.params["layers"][0]["q_proj"], QuantizedWeight)
    dst2 = pycohere.quantize_checkpoint(src, tmp_path / "q2", "nf4", progress=False)
    model2 = pycohere.AutoModelForCausalLM.from_pretrained(dst2, backend="numpy")
    assert isinstance(model2.params["lm_head"], QuantizedWeight)  # untied head: quantized too
    assert model2.params["lm_head"] is not model2.params["embed_tokens"]


def test_sharded_checkpoint_loads_like_the_single_file(bf16_src, tmp_path):
    one = pycohere.quantize_checkpoint(bf16_src, tmp_path / "one", "int8", progress=False)
    many = pycohere.quantize_checkpoint(bf16_src, tmp_path / "many", "int8", max_shard_size=40_000, progress=False)
    files = sorted(p.name for p in many.glob("*.safetensors"))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.layers.0.mlp.up_proj.weight.qweight"] in files
    ids = np.array([[3, 1, 4, 1, 5]])
    a = pycohere.AutoModelForCausalLM.from_pretrained(one, backend="numpy")(ids).logits
    b = pycohere.AutoModelForCausalLM.from_pretrained(many, backend="numpy")(ids).logits
    np.testing.assert_array_equal(a, b)


# --- errors on load --------------------------------------------------------------------------------
def _rewrite(path, edit):
    """Re-save a quantized file after edit(tensors) -> tensors, keeping its metadata."""
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(edit(tensors), str(path), metadata=meta)


def test_missing_and_misshaped_arrays_are_reported_together_in_logical_names(tmp_path):
    src = write_checkpoint(tmp_path / "f32", "cohere", **DIMS)  # F32: safetensors.numpy can re-save it
    dst = pycohere.quantize_checkpoint(src, tmp_path / "q", "int4", 64, progress=False)

    def edit(t):
        del t["model.layers.0.mlp.up_proj.weight.scales"]
        k = "model.layers.1.self_attn.k_proj.weight.qweight"
        t[k] = t[k][:, :10]
        t["model.layers.1.self_attn.k_proj.weight.extra"] = np.zeros(3, np.uint8)
        del t["model.norm.weight"]
        return t
    _rewrite(dst / "model.safetensors", edit)
    with pytest.raises(WeightMismatchError) as e:
        pycohere.AutoModelForCausalLM.from_pretrained(dst)
    msg = str(e.value)
    assert "1 missing: model.norm.weight" in msg
    assert "2 incomplete quantized" in msg
    assert "model.layers.0.mlp.up_proj.weight (int4): scales missing" in msg
    assert "model.layers.1.self_attn.k_proj.weight (int4): qweight is U8 [64, 10], int4 needs U8 [64, 64]" in msg
    assert "unexpected array extra" in msg


def test_quantized_shape_that_contradicts_the_config_is_misshaped(tmp_path):
    src = write_checkpoint(tmp_path / "f32", "cohere", **DIMS)
    dst = pycohere.quantize_checkpoint(src, tmp_path / "q", "int8", progress=False)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["intermediate_size"] = 192
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightMismatchError, match=r"misshaped: model.layers.0.mlp.down_proj.weight: file \[128, 256\], "
                                                  r"config wants \[128, 192\]"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst)


def test_metadata_and_config_inconsistencies(tmp_path):
    src = write_checkpoint(tmp_path / "f32", "cohere", **DIMS)
    dst = pycohere.quantize_checkpoint(src, tmp_path / "q", "int8", progress=False)
    path = dst / "model.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    m = json.loads(meta[METADATA_KEY])

    def save(new_meta):
        save_file(tensors, str(path), metadata=new_meta)

    save({METADATA_KEY: json.dumps({**m, "format_version": 2})})
    with pytest.raises(UnsupportedFormatError, match="format version 2.*upgrade pycohere"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst)
    bad = json.loads(json.dumps(m))
    bad["tensors"]["model.layers.0.mlp.up_proj.weight"]["scheme"] = "int3"
    save({METADATA_KEY: json.dumps(bad)})
    with pytest.raises(UnsupportedFormatError, match="'int3'"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst)
    save({METADATA_KEY: "{not json"})
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst)
    save({})  # the files lost their metadata but config.json still says quantized
    with pytest.raises(CorruptCheckpointError, match="carry no pycohere_quantization metadata"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (dst / "config.json").write_text(json.dumps(cfg))
    # read by pycohere.quant.hf_formats, which finds none of the bitsandbytes arrays it declares
    with pytest.raises(CorruptCheckpointError, match="declares bitsandbytes quantization, but no tensor carries "
                                                     "bitsandbytes arrays"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst)


# --- reading and 64-bit offsets --------------------------------------------------------------------
def test_row_reader_equals_the_memory_map(bf16_src):
    ref = Checkpoint(bf16_src)["model.layers.0.mlp.gate_proj.weight"]
    read = RowReader(ref)
    np.testing.assert_array_equal(read(3, 17), widen(ref.array[3:17], "BF16"))
    np.testing.assert_array_equal(read.raw(0, ref.shape[0]), ref.array)


def test_rows_beyond_2_to_the_31_bytes_in_a_sparse_file(tmp_path):
    # A q8_0 "embedding" of 2**26 x 32 values = 2**26 rows of 34 bytes = 2.28e9 bytes > 2**31,
    # written as a sparse file: only the last rows hold data. Row ids and byte offsets beyond
    # 2**31 must be computed in 64 bits by the loader, the spec and the Numba gather.
    rows, cols = 1 << 26, 32
    q = quantize(np.random.default_rng(0).standard_normal((3, cols)).astype(np.float32), "q8_0")
    path = tmp_path / "big.safetensors"
    meta = {"scheme": "q8_0", "group_size": 32, "shape": [rows, cols], "version": 1}
    w = SafetensorsWriter(path, [TensorSpec("e.qweight", "U8", (rows, 34))])
    os.truncate(path, w.size)               # a hole instead of 2.2 GB of zeros
    w.write("e.qweight", q.arrays["qweight"], rows - 3)
    w.abort()
    assert path.stat().st_size > 2**31
    ref = Checkpoint(path)["e.qweight"]
    assert ref.array.shape == (rows, 34)
    ids = np.array([rows - 1, rows - 3, 0])
    want = np.concatenate([q.dequantize()[[2, 0]], np.zeros((1, cols), np.float32)])
    for backend in ("numpy", "numba"):
        W = QuantizedWeight({"qweight": ref.array}, meta)
        W = fast_weight(W) if backend == "numba" else W
        np.testing.assert_array_equal(W.rows(ids), want)


def test_quantize_on_load_refuses_an_already_quantized_checkpoint(bf16_src, tmp_path):
    dst = pycohere.quantize_checkpoint(bf16_src, tmp_path / "q", "int8", progress=False)
    with pytest.raises(QuantizationError, match="already quantized"):
        pycohere.AutoModelForCausalLM.from_pretrained(dst, load_in_4bit=True)


# --- memory: streaming, never the float model ------------------------------------------------------
RSS_PROBE = """
import json, sys
from pathlib import Path
import pycohere
from pycohere.kernels import quant  # noqa: F401  (numba and the kernels are imported before measuring)
def status(key):  # VmRSS now, VmHWM peak (ru_maxrss would include the parent's peak: kept across exec)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
mode, src, dst = sys.argv[1:]
before = status("VmRSS")
if mode == "convert":
    pycohere.quantize_checkpoint(src, dst, "int4", progress=False)
else:
    model = pycohere.AutoModelForCausalLM.from_pretrained(src, load_in_4bit=True, backend="numpy")
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def test_peak_rss_of_converting_and_of_quantize_on_load(tmp_path):
    import subprocess
    import sys
    from make_synthetic_checkpoint import write
    src = write(tmp_path / "src", hidden=1024, intermediate=2048, layers=2, heads=8, kv_heads=2, vocab=32000)
    size = (src / "model.safetensors").stat().st_size           # ~101 MB of bf16, 65 MB of it the embedding

    def probe(mode, dst):
        r = subprocess.run([sys.executable, "-c", RSS_PROBE, mode, str(src), str(dst)],
                           capture_output=True, text=True, check=True, timeout=300)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        return m["peak"] - m["before"]
    grown = probe("convert", tmp_path / "q")
    # A float32 copy of the embedding alone would be 131 MB; streaming keeps a few MiB-sized chunks.
    assert grown < min(40e6, 0.4 * size), f"converting grew RSS by {grown / 1e6:.1f} MB for a {size / 1e6:.0f} MB model"
    quantized = (tmp_path / "q" / "model.safetensors").stat().st_size  # ~28 MB
    grown = probe("load", "-")
    # The loaded model is the quantized arrays; the float model (101 MB bf16, 202 MB f32) is never held.
    assert grown < quantized + 40e6, f"quantize-on-load grew RSS by {grown / 1e6:.1f} MB"
