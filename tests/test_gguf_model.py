"""GGUF models (llama.cpp) of the command-r / cohere2 architectures: pycohere.gguf_model and the
q4_k / q6_k kernels (and q5_0 / q5_1 / q2_k / q3_k / q5_k dequantizers) of pycohere.quant.kquant_kernels.

Oracles:
* committed fixtures (tests/data/gguf, tools/make_gguf_fixtures.py): gguf-py wrote the files from tiny
  transformers models with the tiny Command-R vocabulary, and transformers computed the logits of the
  weights they stand for (gguf-py-dequantized) — these tests need neither gguf nor torch;
* the committed transformers parity checkpoints (tests/data/parity, with transformers' logits),
  converted here with gguf-py's GGUFWriter as llama.cpp's converter does; quantized files are read
  back with gguf-py's ``dequantize`` into a float checkpoint (the oracle model);
* for the kernels, the NumPy spec in pycohere.quant.schemes (itself bit-exact vs gguf-py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pycohere
from pycohere.checkpoints import AutoConfig
from pycohere.errors import (CheckpointNotFoundError, CorruptCheckpointError, InputError, QuantizationError,
                             UnsupportedFormatError, WeightMismatchError)
from pycohere.checkpoints import load_config, open_weights
from pycohere.checkpoints.gguf import GGUFSource, config_from_gguf, gguf_file, transformers_name
from pycohere.quant import QuantizationConfig, get_scheme
from pycohere.kernels import quant as QK
from pycohere.quant.schemes import Q4_K, QuantizedTensor
from pycohere.spec.weights import DenseWeight
from pycohere.checkpoints.manifest import expected_tensors

from conftest import DATA, ROOT

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
GGUF_DATA = DATA / "gguf"
PARITY = DATA / "parity"
COMMITTED = {"command-r-q8_0": "command-r-q8_0.gguf", "cohere2-f16": "cohere2-f16-00001-of-00002.gguf"}
# config.json keys with no GGUF counterpart: bookkeeping, and transformers 4.x's sliding_window_pattern
# (pycohere turns it into layer_types, which the comparison covers)
BOOKKEEPING = ("architectures", "dtype", "torch_dtype", "transformers_version", "sliding_window_pattern")
EPS = float(np.finfo(np.float32).eps)


def _config_dict(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING}


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(1e-30, np.abs(b).max()))


def _logits(path, ids, backend="numpy", **kw):
    model = pycohere.AutoModelForCausalLM.from_pretrained(path, backend=backend, **kw)
    return model(ids).logits


# --- q4_k / q6_k kernels against the NumPy spec ---------------------------------------------------------
def _kquant_tensor(rng, scheme: str, rows: int, n_blocks: int) -> QuantizedTensor:
    """Random block bytes with finite f16 scales of random magnitude (random bytes can be NaN/inf)."""
    size = get_scheme(scheme).bytes_per_block
    raw = rng.integers(0, 256, size=(rows, n_blocks, size), dtype=np.uint8)
    for off in ((0, 2) if scheme == "q4_k" else (208,)):
        d = rng.uniform(-1, 1, (rows, n_blocks)) * np.exp(rng.uniform(-12, 0, (rows, 1)))
        raw[:, :, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(rows, n_blocks, 2)
    return QuantizedTensor.from_arrays({"qweight": raw.reshape(rows, -1)},
                                       {"scheme": scheme, "group_size": 256, "shape": [rows, 256 * n_blocks]})


def _kquant_bound(q: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """Float32 error bound of a kernel output: every term it adds is at most the element's magnitude
    bound M times |x_j| (Q4_K: |d sc| 15 + |dmin m|, the scaled code and the min applied through the
    sub-block sums; Q6_K: |d sc| 32); the accumulation error is below (terms + 8) eps sum |x_j| M_j."""
    raw = q.arrays["qweight"].reshape(-1, get_scheme(q.scheme).bytes_per_block)
    f16 = lambda a: np.ascontiguousarray(a).view(np.float16).astype(np.float64)
    if q.scheme == "q4_k":
        sc, m = Q4_K.scale_min(raw[:, 4:16])
        mag = np.abs(f16(raw[:, 0:2]) * sc) * 15 + np.abs(f16(raw[:, 2:4]) * m)  # [blocks, 8]
        per = np.repeat(mag, 32, axis=1)
    else:
        sc = np.ascontiguousarray(raw[:, 192:208]).view(np.int8).astype(np.float64)
        per = np.repeat(np.abs(f16(raw[:, 208:210]) * sc) * 32, 16, axis=1)
    M = per.reshape(q.shape)
    return 4 * (q.shape[1] + 8) * EPS * (np.abs(x).astype(np.float64) @ M.T) + 1e-37


@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
@settings(max_examples=3 if NO_JIT else 15, deadline=None)
@given(rows=st.integers(1, QK.GEMV_MAX_ROWS), out_dim=st.integers(1, 3 if NO_JIT else 40),
       n_blocks=st.integers(1, 2 if NO_JIT else 4), seed=st.integers(0, 2**32 - 1))
def test_kquant_gemv_equals_spec(scheme, rows, out_dim, n_blocks, seed):
    rng = np.random.default_rng(seed)
    q = _kquant_tensor(rng, scheme, out_dim, n_blocks)
    x = (rng.standard_normal((rows, q.shape[1])) * np.exp(rng.uniform(-3, 3))).astype(np.float32)
    ref = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    assert QK._gemv(x, q.arrays, scheme) is not None  # the registered decode kernel, not the tiles
    got = QK.quantized_matmul(x, q)
    assert got.shape == (rows, out_dim) and got.dtype == np.float32
    assert (np.abs(got - ref) <= _kquant_bound(q, x)).all()


@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
@settings(max_examples=2 if NO_JIT else 8, deadline=None)
@given(rows=st.integers(QK.GEMV_MAX_ROWS + 1, 20), out_dim=st.integers(1, 3 if NO_JIT else 30),
       tile=st.sampled_from([256, 1000, 1 << 22]), seed=st.integers(0, 2**32 - 1))
def test_kquant_prefill_tiles_equal_spec(scheme, rows, out_dim, tile, seed):
    rng = np.random.default_rng(seed)
    q = _kquant_tensor(rng, scheme, out_dim, 2)
    x = rng.standard_normal((rows, q.shape[1])).astype(np.float32)
    saved, QK.TILE_ELEMENTS = QK.TILE_ELEMENTS, tile  # small tiles: several dequantize + BLAS calls
    try:
        got = QK.quantized_matmul(x, q)
    finally:
        QK.TILE_ELEMENTS = saved
    ref = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    assert (np.abs(got - ref) <= _kquant_bound(q, x)).all()


@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
@settings(max_examples=3 if NO_JIT else 15, deadline=None)
@given(out_dim=st.integers(1, 3 if NO_JIT else 20), n_blocks=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_kquant_dequantize_is_bit_identical_to_the_spec(scheme, out_dim, n_blocks, seed):
    rng = np.random.default_rng(seed)
    q = _kquant_tensor(rng, scheme, out_dim, n_blocks)
    spec = q.dequantize()
    got = QK.dequantize_rows(q, slice(0, out_dim))
    np.testing.assert_array_equal(got.view(np.uint32), spec.view(np.uint32))
    ids = rng.integers(0, out_dim, size=(2, 3))
    np.testing.assert_array_equal(QK.quantized_rows(q, ids).view(np.uint32), spec[ids].view(np.uint32))


@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
def test_kquant_nan_in_x_propagates(scheme):
    q = _kquant_tensor(np.random.default_rng(1), scheme, 4, 1)
    x = np.ones((2, 256), np.float32)
    x[1, 100] = np.nan
    got = QK.quantized_matmul(x, q)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()


# --- q5_0 / q5_1 / q2_k / q3_k / q5_k: Numba dequantizers (tiles for BLAS) against the NumPy spec ----------
# ("kquant" in the test names: they are part of the NUMBA_DISABLE_JIT re-run below)
NEW_F16_FIELDS = {"q5_0": (0,), "q5_1": (0, 2), "q2_k": (80, 82), "q3_k": (108,), "q5_k": (0, 2)}


def _new_type_tensor(rng, scheme: str, rows: int, n_blocks: int) -> QuantizedTensor:
    """Random block bytes with finite f16 fields of random magnitude (random bytes can be NaN/inf)."""
    cls = get_scheme(scheme)
    raw = rng.integers(0, 256, size=(rows, n_blocks, cls.bytes_per_block), dtype=np.uint8)
    for off in NEW_F16_FIELDS[scheme]:
        d = rng.uniform(-1, 1, (rows, n_blocks)) * np.exp(rng.uniform(-12, 0, (rows, 1)))
        raw[:, :, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(rows, n_blocks, 2)
    return QuantizedTensor.from_arrays({"qweight": raw.reshape(rows, -1)},
                                       {"scheme": scheme, "group_size": cls.block_size,
                                        "shape": [rows, cls.block_size * n_blocks]})


@pytest.mark.parametrize("scheme", sorted(NEW_F16_FIELDS))
@settings(max_examples=3 if NO_JIT else 15, deadline=None)
@given(out_dim=st.integers(1, 3 if NO_JIT else 20), n_blocks=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_kquant_new_types_dequantize_is_bit_identical_to_the_spec(scheme, out_dim, n_blocks, seed):
    rng = np.random.default_rng(seed)
    q = _new_type_tensor(rng, scheme, out_dim, n_blocks)
    assert scheme in QK.DEQUANT_KERNELS  # registered by pycohere.quant.kquant_kernels
    spec = q.dequantize()
    np.testing.assert_array_equal(QK.dequantize_rows(q, slice(0, out_dim)).view(np.uint32), spec.view(np.uint32))
    ids = rng.integers(0, out_dim, size=(2, 3))
    np.testing.assert_array_equal(QK.quantized_rows(q, ids).view(np.uint32), spec[ids].view(np.uint32))


@pytest.mark.parametrize("scheme", sorted(NEW_F16_FIELDS))
@settings(max_examples=2 if NO_JIT else 8, deadline=None)
@given(rows=st.integers(1, 12), out_dim=st.integers(1, 3 if NO_JIT else 30),
       tile=st.sampled_from([256, 1000, 1 << 22]), seed=st.integers(0, 2**32 - 1))
def test_kquant_new_types_matmul_through_tiles_equals_spec(scheme, rows, out_dim, tile, seed):
    # decode (no GEMV for these types) and prefill both multiply dequantized tiles with BLAS: float32
    # accumulation error below (in + 8) eps sum |x_j| |w_j| per output (times 4 for slack)
    rng = np.random.default_rng(seed)
    q = _new_type_tensor(rng, scheme, out_dim, 2)
    x = rng.standard_normal((rows, q.shape[1])).astype(np.float32)
    assert QK._gemv(x, q.arrays, scheme) is None
    saved, QK.TILE_ELEMENTS = QK.TILE_ELEMENTS, tile  # small tiles: several dequantize + BLAS calls
    try:
        got = QK.quantized_matmul(x, q)
    finally:
        QK.TILE_ELEMENTS = saved
    w = q.dequantize().astype(np.float64)
    assert got.shape == (rows, out_dim) and got.dtype == np.float32
    bound = 4 * (q.shape[1] + 8) * EPS * (np.abs(x).astype(np.float64) @ np.abs(w).T) + 1e-37
    assert (np.abs(got - x.astype(np.float64) @ w.T) <= bound).all()


@pytest.mark.skipif(NO_JIT, reason="this is the launcher of the NUMBA_DISABLE_JIT run itself")
def test_kquant_kernels_also_pass_as_plain_python():
    # As conftest.assert_passes_without_jit, restricted to the kernel tests of this file (the model
    # tests would run the whole Numba backend as Python).
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "kquant"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


# --- committed fixtures: no gguf / torch needed ---------------------------------------------------------
@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
class TestCommittedFixtures:
    def test_recorded(self):
        prov = json.loads((GGUF_DATA / "provenance.json").read_text())
        assert set(prov["cases"]) == set(COMMITTED) and prov["versions"]["gguf"] and prov["seed"] == 0
        for case in prov["cases"].values():
            for f in case["files"]:
                assert (GGUF_DATA / f).stat().st_size < 200_000

    @pytest.mark.parametrize("name", sorted(COMMITTED))
    def test_config_equals_transformers_config(self, name):
        expected = AutoConfig.from_dict(json.loads((GGUF_DATA / f"{name}.config.json").read_text()))
        got = load_config(GGUF_DATA / COMMITTED[name])
        assert _config_dict(got) == _config_dict(expected)
        assert type(got) is type(expected)

    @pytest.mark.parametrize("name", sorted(COMMITTED))
    @pytest.mark.parametrize("backend", ["numpy", "numba"])
    def test_logits_match_transformers(self, name, backend):
        exp = np.load(GGUF_DATA / f"{name}.expected.npz")
        out = _logits(GGUF_DATA / COMMITTED[name], exp["input_ids"], backend)
        assert _rel(out, exp["logits"]) <= 1e-4

    def test_split_fixture_reads_both_parts(self):
        config = load_config(GGUF_DATA / COMMITTED["cohere2-f16"])
        source = open_weights(GGUF_DATA / COMMITTED["cohere2-f16"], config)
        assert [f.name for f in source.files] == ["cohere2-f16-00001-of-00002.gguf", "cohere2-f16-00002-of-00002.gguf"]
        assert {r.path.name for r in source.readers} == {f.name for f in source.files}
        assert set(source.shapes) == set(expected_tensors(config))
        with pytest.raises(CheckpointNotFoundError, match="part 2 of 2.*cohere2-f16-00001-of-00002.gguf"):
            load_config(GGUF_DATA / "cohere2-f16-00002-of-00002.gguf")

    def test_a_folder_of_parts_loads_from_its_first_part(self, tmp_path):
        for f in ("cohere2-f16-00001-of-00002.gguf", "cohere2-f16-00002-of-00002.gguf"):
            shutil.copy(GGUF_DATA / f, tmp_path / f)
        exp = np.load(GGUF_DATA / "cohere2-f16.expected.npz")
        np.testing.assert_array_equal(_logits(tmp_path, exp["input_ids"]),
                                      _logits(GGUF_DATA / COMMITTED["cohere2-f16"], exp["input_ids"]))

    def test_a_gguf_is_recognised_by_its_magic_not_only_its_name(self, tmp_path):
        # llama.cpp never looks at the name: Ollama keeps GGUFs as blobs/sha256-<hex>, other tools
        # write .GGUF. Before, such a path was read as config.json (a raw UnicodeDecodeError).
        exp = np.load(GGUF_DATA / "command-r-q8_0.expected.npz")
        want = _logits(GGUF_DATA / COMMITTED["command-r-q8_0"], exp["input_ids"])
        for name in ("sha256-6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa", "model.GGUF"):
            blob = tmp_path / name
            shutil.copy(GGUF_DATA / COMMITTED["command-r-q8_0"], blob)
            assert load_config(blob).to_dict() == load_config(GGUF_DATA / COMMITTED["command-r-q8_0"]).to_dict()
            np.testing.assert_array_equal(_logits(blob, exp["input_ids"]), want)
            blob.unlink()
        # a file that is neither GGUF nor named .gguf is not taken for one
        (tmp_path / "notes.txt").write_text("GGU")
        assert gguf_file(tmp_path / "notes.txt") is None

    def test_folders_of_split_parts(self, tmp_path):
        # only the second part: say that the first one is missing (it was "holds several GGUF models ()")
        shutil.copy(GGUF_DATA / "cohere2-f16-00002-of-00002.gguf", tmp_path)
        with pytest.raises(CheckpointNotFoundError, match="holds only later parts of a split GGUF model "
                                                          "\\(cohere2-f16-00002-of-00002.gguf\\) but not its first"):
            load_config(tmp_path)
        # a single-file model whose name merely contains "-of-" is a model, not a later part
        (tmp_path / "cohere2-f16-00002-of-00002.gguf").unlink()
        shutil.copy(GGUF_DATA / COMMITTED["command-r-q8_0"], tmp_path / "best-of-both.gguf")
        assert gguf_file(tmp_path) == tmp_path / "best-of-both.gguf"
        assert load_config(tmp_path).model_type == "cohere"
        folder = tmp_path / "c4ai-command-r.gguf"  # a folder named like a file is a folder
        folder.mkdir()
        shutil.copy(GGUF_DATA / COMMITTED["command-r-q8_0"], folder)
        assert gguf_file(folder) == folder / COMMITTED["command-r-q8_0"]

    @pytest.mark.parametrize("name", sorted(COMMITTED))
    def test_tokenizer_from_gguf_equals_tokenizer_json(self, name):
        ours = pycohere.CohereTokenizer.from_pretrained(GGUF_DATA / COMMITTED[name])
        ref = pycohere.CohereTokenizer.from_pretrained(DATA / "tokenizer" / "tiny-command-r")
        for text in ("Hello world! 123 🦙", "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Äpfel<|END_OF_TURN_TOKEN|>"):
            assert ours.encode(text) == ref.encode(text)
        chat = [{"role": "user", "content": "hi there"}]
        assert ours.apply_chat_template(chat, add_generation_prompt=True) == \
            ref.apply_chat_template(chat, add_generation_prompt=True)
        assert ours.eos_token == "<|END_OF_TURN_TOKEN|>" and ours.bos_token == "<BOS_TOKEN>"


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pycohere", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_cli_generate_and_inspect_a_gguf_file():
    path = GGUF_DATA / COMMITTED["command-r-q8_0"]
    r = _cli("generate", "Hello world", "--model", str(path), "-n", "5", "--json", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    model = pycohere.AutoModelForCausalLM.from_pretrained(path, backend="numpy")
    tok = pycohere.CohereTokenizer.from_pretrained(path)
    ids = tok.encode("Hello world")
    expected = model.generate([ids], max_new_tokens=5)[0, len(ids):].tolist()
    assert got["token_ids"] == expected and got["prompt_tokens"] == len(ids)
    r = _cli("inspect", str(GGUF_DATA / COMMITTED["cohere2-f16"]))
    assert r.returncode == 0, r.stderr
    assert "model_type cohere2" in r.stdout and "2 file(s)" in r.stdout
    assert "2 sliding (window 4) + 1 full" in r.stdout
    assert "model.embed_tokens.weight" in r.stdout and " F16 " in r.stdout
    r = _cli("inspect", str(path))
    assert "lm_head.weight" in r.stdout and " Q8_0 " in r.stdout and "8.50" in r.stdout


# --- converted parity checkpoints (gguf-py writes them here) ---------------------------------------------
@pytest.fixture(scope="module")
def G():
    """tools/make_gguf_fixtures.py (needs the gguf oracle package)."""
    pytest.importorskip("gguf", reason="the gguf package (llama.cpp's gguf-py, the oracle) is not installed")
    import make_gguf_fixtures
    return make_gguf_fixtures


CONFIG_CASES = ["gqa", "mqa", "qk_norm", "attn_bias", "untied", "f16", "bf16", "sharded", "schema4_type_linear",
                "left_padded", "cohere2_layer_types", "cohere2_pattern4x"]
SELF_TYPE = {"f16": "F16", "bf16": "BF16"}  # the rest are float32 checkpoints


def _convert(G, tmp_path, case, qtype=None, **kw):
    pattern = kw.pop("pattern", "array" if case.startswith("cohere2") else None)
    out = tmp_path / f"{case}-{qtype or 'self'}.gguf"
    files = G.convert_folder(PARITY / case, out, qtype or SELF_TYPE.get(case, "F32"), pattern=pattern, **kw)
    return files[0], files


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_from_gguf_equals_config_json(G, tmp_path, case):
    path, _ = _convert(G, tmp_path, case)
    assert _config_dict(config_from_gguf(path)) == _config_dict(AutoConfig.from_pretrained(PARITY / case))


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_cohere2_without_pattern_key_slides_like_llama_cpp(G, tmp_path):
    # The (non-MoE) cohere2 converter writes no sliding_window_pattern: llama.cpp's load_swa_pattern(ml, 4)
    # + set_swa_pattern(4, dense_first=false) make layer il sliding iff il % 4 < 3. For 3 layers: S, S, S
    # (the checkpoint's own layer_types F, S, S is lost in such a file). With an int pattern n = 2: S, F, S.
    path, _ = _convert(G, tmp_path, "cohere2_layer_types", pattern=None)
    assert config_from_gguf(path).layer_types == ["sliding_attention"] * 3
    cfg = json.loads((PARITY / "cohere2_layer_types" / "config.json").read_text())
    cfg.update(sliding_window_pattern=2)
    _, tensors = G.read_checkpoint(PARITY / "cohere2_layer_types")
    path = G.write_gguf(tmp_path / "int.gguf", cfg, tensors, pattern="int")[0]
    assert config_from_gguf(path).layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    cfg.update(sliding_window_pattern=0)  # 0: every layer slides
    path = G.write_gguf(tmp_path / "zero.gguf", cfg, tensors, pattern="int")[0]
    assert config_from_gguf(path).layer_types == ["sliding_attention"] * 3


FLOAT_CASES = ["gqa", "qk_norm", "attn_bias", "untied", "schema4_type_linear", "cohere2_layer_types",
               "cohere2_pattern4x"]


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
@pytest.mark.parametrize("case", FLOAT_CASES + ["f16", "bf16"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_float_gguf_logits_equal_safetensors(G, tmp_path, case, backend):
    """F32 within 1e-5 of the safetensors model, F16 / BF16 GGUFs identical to the same-dtype
    safetensors (same stored values, same kernels); all within the parity bar of transformers."""
    path, _ = _convert(G, tmp_path, case)
    exp = np.load(PARITY / case / "expected.npz")
    ids = exp["input_ids"]
    mask = exp["attention_mask"] if bool(exp["use_mask"]) else None
    gguf_model = pycohere.AutoModelForCausalLM.from_pretrained(path, backend=backend)
    st_model = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / case, backend=backend)
    ours, theirs = gguf_model(ids, attention_mask=mask).logits, st_model(ids, attention_mask=mask).logits
    if case in SELF_TYPE:
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert _rel(ours, theirs) <= 1e-5
    keep = exp["attention_mask"].astype(bool)
    assert np.abs(ours - exp["logits"])[keep].max() <= 1e-4 * max(1.0, float(np.abs(exp["logits"]).max()))


def _oracle_folder(G, tmp_path, files, case_or_config):
    """A float32 checkpoint of the weights a GGUF stands for, dequantized by gguf-py."""
    config = case_or_config if isinstance(case_or_config, dict) else \
        json.loads((PARITY / case_or_config / "config.json").read_text())
    return G.write_checkpoint(tmp_path / "oracle", config, G.dequantized_weights(files, config))


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("case", ["untied", "qk_norm", "cohere2_pattern4x"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_quantized_gguf_logits_equal_the_dequantized_oracle(G, tmp_path, qtype, case, backend):
    path, files = _convert(G, tmp_path, case, qtype)
    oracle = _oracle_folder(G, tmp_path, files, case)
    ids = np.load(PARITY / case / "expected.npz")["input_ids"]
    model = pycohere.AutoModelForCausalLM.from_pretrained(path, backend=backend)
    assert model.model.params["layers"][0]["q_proj"].storage == qtype.lower()
    assert _rel(model(ids).logits, _logits(oracle, ids, backend)) <= 1e-4


# k-quants need rows of 256: a small random model (numpy only), its matrices mixed like a Q4_K_M file
KQ_CONFIG = dict(model_type="cohere", vocab_size=97, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, logit_scale=0.25,
                 layer_norm_eps=1e-5, bos_token_id=5, eos_token_id=6, pad_token_id=0, tie_word_embeddings=False,
                 use_qk_norm=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
KQ_TYPES = {"embed_tokens": "Q6_K", "lm_head": "Q6_K", "q_proj": "Q4_K", "k_proj": "Q4_K", "v_proj": "Q6_K",
            "o_proj": "Q4_K", "gate_proj": "Q4_K", "up_proj": "Q4_K", "down_proj": "Q6_K"}


def _kquant_model(G, tmp_path, model_type="cohere", seed=0, **write_kw):
    rng = np.random.default_rng(seed)
    cfg = dict(KQ_CONFIG, model_type=model_type)
    if model_type == "cohere2":
        cfg.pop("use_qk_norm")
        cfg.update(num_hidden_layers=3, sliding_window=4, head_dim=64, tie_word_embeddings=True,  # Q6_K head
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    tensors, raw = {}, {}
    for name, shape in expected_tensors(AutoConfig.from_dict(cfg)).items():
        tensors[name] = (1 + 0.2 * (rng.random(shape) - 0.5) if "norm" in name
                         else 0.05 * rng.standard_normal(shape)).astype(np.float32)
        kind = next((KQ_TYPES[k] for k in KQ_TYPES if f"{k}." in name), None)
        if kind is not None and not name.startswith("model.layers.1.mlp.down"):  # that one stays Q8_0
            raw[name] = (G.random_blocks(rng, *shape, kind, scale=2e-4 if kind == "Q4_K" else 3e-5), kind)
    files = G.write_gguf(tmp_path / f"kq-{model_type}.gguf", cfg, tensors, "Q8_0", raw=raw,
                         pattern="array" if model_type == "cohere2" else None, **write_kw)
    return cfg, files


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
@pytest.mark.parametrize("model_type", ["cohere", "cohere2"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_kquant_gguf_logits_equal_the_dequantized_oracle(G, tmp_path, model_type, backend):
    cfg, files = _kquant_model(G, tmp_path, model_type)
    oracle = _oracle_folder(G, tmp_path, files, cfg)
    ids = np.random.default_rng(3).integers(7, 97, size=(2, 9))
    model = pycohere.AutoModelForCausalLM.from_pretrained(files[0], backend=backend)
    storages = {p.storage for p in model.model.params["layers"][0].values() if hasattr(p, "storage")}
    assert storages == {"q4_k", "q6_k"}
    assert model.model.params["layers"][1]["down_proj"].storage == "q8_0"
    out, ref = model(ids).logits, _logits(oracle, ids, backend)
    assert np.abs(ref).max() > 0.1 and _rel(out, ref) <= 1e-4
    # decode steps (the GEMV kernels with numba) give the same greedy continuation as the oracle
    np.testing.assert_array_equal(model.generate(ids[:1], max_new_tokens=4, do_sample=False),
                                  pycohere.AutoModelForCausalLM.from_pretrained(oracle, backend=backend)
                                  .generate(ids[:1], max_new_tokens=4, do_sample=False))


# Q5_0 / Q5_1 / Q2_K / Q3_K / Q5_K (llama-quantize's Q5_0, Q5_1, Q2_K, Q3_K_M, Q4_K_S, Q5_K_M files): no Numba
# kernels, so they run through the scheme's NumPy dequantizer per tile. Random block bytes with finite f16
# fields of a magnitude that keeps the weights about 0.05 (offset: magnitude; ggml-common.h layouts).
NEW_GGML_F16 = {"Q5_0": {0: 3e-3}, "Q5_1": {0: 3e-3, 2: 5e-2}, "Q2_K": {80: 2e-3, 82: 2e-3},
                "Q3_K": {108: 5e-4}, "Q5_K": {0: 3e-5, 2: 5e-4}}


def _new_type_blocks(rng, rows: int, cols: int, qtype: str) -> np.ndarray:
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    blocks = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for off, mag in NEW_GGML_F16[qtype].items():
        d = rng.uniform(-mag, mag, blocks.shape[:2]).astype(np.float16)
        blocks[:, :, off:off + 2] = d.view(np.uint8)[..., None].reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


def _new_type_model(G, tmp_path, types: dict[str, str], seed=0):
    """KQ_CONFIG with matrices of the given ggml types (``types``: name fragment -> type; others Q8_0)."""
    rng = np.random.default_rng(seed)
    tensors, raw = {}, {}
    for name, shape in expected_tensors(AutoConfig.from_dict(KQ_CONFIG)).items():
        tensors[name] = (1 + 0.2 * (rng.random(shape) - 0.5) if "norm" in name
                         else 0.05 * rng.standard_normal(shape)).astype(np.float32)
        kind = next((t for k, t in types.items() if f"{k}." in name), None)
        if kind is not None and "norm" not in name:
            raw[name] = (_new_type_blocks(rng, *shape, kind), kind)
    return G.write_gguf(tmp_path / "new-types.gguf", KQ_CONFIG, tensors, "Q8_0", raw=raw)


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
@pytest.mark.parametrize("qtype", sorted(NEW_GGML_F16))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_q5_q3_q2_gguf_logits_equal_the_dequantized_oracle(G, tmp_path, qtype, backend):
    # every matrix (embedding and head included) of qtype but layer 1's down_proj (Q8_0)
    files = _new_type_model(G, tmp_path, {k: qtype for k in KQ_TYPES if k != "down_proj"} |
                            {"layers.0.mlp.down_proj": qtype})
    oracle = _oracle_folder(G, tmp_path, files, KQ_CONFIG)
    ids = np.random.default_rng(3).integers(7, 97, size=(2, 9))
    model = pycohere.AutoModelForCausalLM.from_pretrained(files[0], backend=backend)
    storages = {p.storage for p in model.model.params["layers"][0].values() if hasattr(p, "storage")}
    assert storages == {qtype.lower()}
    assert model.model.params["layers"][1]["down_proj"].storage == "q8_0"
    out, ref = model(ids).logits, _logits(oracle, ids, backend)
    assert np.abs(ref).max() > 0.1 and _rel(out, ref) <= 1e-4
    np.testing.assert_array_equal(model.generate(ids[:1], max_new_tokens=3, do_sample=False),
                                  pycohere.AutoModelForCausalLM.from_pretrained(oracle, backend=backend)
                                  .generate(ids[:1], max_new_tokens=3, do_sample=False))


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_q5_q3_q2_tensor_table_views_and_inspect(G, tmp_path):
    types = {"q_proj": "Q5_0", "k_proj": "Q5_1", "v_proj": "Q2_K", "o_proj": "Q3_K", "gate_proj": "Q5_K"}
    [path] = _new_type_model(G, tmp_path, types)
    source = GGUFSource(path, config_from_gguf(path))
    table = {r.name: r for r in source.tensor_table()}
    # bits per weight = 8 * bytes / values: 22/32, 24/32, 84/256, 110/256, 176/256 (ggml-common.h)
    expected = {"q_proj": ("Q5_0", 5.5, 32, 22), "k_proj": ("Q5_1", 6.0, 32, 24), "v_proj": ("Q2_K", 2.625, 256, 84),
                "o_proj": ("Q3_K", 3.4375, 256, 110), "gate_proj": ("Q5_K", 5.5, 256, 176)}
    for proj, (storage, bpw, block, size) in expected.items():
        name = next(n for n in table if n.startswith("model.layers.0.") and f"{proj}." in n)
        r = table[name]
        assert (r.storage, r.bits_per_weight, r.block_size) == (storage, bpw, block)
        assert r.nbytes == r.shape[0] * r.shape[1] // block * size
        w = source.matrix(name, np.float32, "numpy")
        assert w.storage == storage.lower()
        assert np.shares_memory(w.arrays["qweight"], source.readers[0].raw_bytes(source.gguf_name(name)))
    r = _cli("inspect", str(path))
    assert r.returncode == 0, r.stderr
    for storage, bpw in (("Q5_0", "5.50"), ("Q5_1", "6.00"), ("Q2_K", "2.62"), ("Q3_K", "3.44"), ("Q5_K", "5.50")):
        assert any(f" {storage} " in line and f" {bpw} " in line for line in r.stdout.splitlines()), (storage, r.stdout)


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_tensor_table_and_zero_copy_views(G, tmp_path):
    cfg, files = _kquant_model(G, tmp_path)
    config = config_from_gguf(files[0])
    source = GGUFSource(files[0], config)
    table = {r.name: r for r in source.tensor_table()}
    assert set(table) == set(expected_tensors(config))
    q = table["model.layers.0.self_attn.q_proj.weight"]
    assert (q.storage, q.bits_per_weight, q.block_size, q.shape, q.nbytes) == ("Q4_K", 4.5, 256, (256, 256), 256 * 144)
    v = table["model.layers.0.self_attn.v_proj.weight"]
    assert (v.storage, v.bits_per_weight, v.block_size) == ("Q6_K", 6.5625, 256)
    down = table["model.layers.1.mlp.down_proj.weight"]
    assert (down.storage, down.bits_per_weight, down.block_size) == ("Q8_0", 8.5, 32)
    norm = table["model.layers.0.self_attn.q_norm.weight"]
    assert (norm.storage, norm.bits_per_weight, norm.block_size, norm.shape) == ("F32", 32.0, None, (4, 64))
    reader = source.readers[0]
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight",
                 "model.layers.1.mlp.down_proj.weight"):
        w = source.matrix(name, np.float32, "numba")
        packed = w.arrays["qweight"]
        assert np.shares_memory(packed, reader.raw_bytes(source.gguf_name(name)))
        assert not packed.flags.owndata and not packed.flags.writeable
    # float tensors: DenseWeight over the memmap view (no widened copy)
    path, _ = _convert(G, tmp_path, "bf16")
    src = GGUFSource(path, config_from_gguf(path))
    w = src.matrix("model.layers.0.mlp.up_proj.weight", np.float32, "numpy")
    assert isinstance(w, DenseWeight) and w.storage == "BF16" and w._full is None
    assert np.shares_memory(w.raw, src.readers[0].raw_bytes("blk.0.ffn_up.weight")) and not w.raw.flags.writeable


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_split_files_load_identically_to_the_single_file(G, tmp_path):
    single, _ = _convert(G, tmp_path, "cohere2_pattern4x", "Q8_0")
    (tmp_path / "split").mkdir()
    first, files = _convert(G, tmp_path / "split", "cohere2_pattern4x", "Q8_0", split_max_tensors=7)
    assert len(files) >= 3 and first.name.endswith("-00001-of-%05d.gguf" % len(files))
    assert _config_dict(config_from_gguf(first)) == _config_dict(config_from_gguf(single))
    ids = np.load(PARITY / "cohere2_pattern4x" / "expected.npz")["input_ids"]
    for backend in ("numpy", "numba"):
        np.testing.assert_array_equal(_logits(first, ids, backend), _logits(single, ids, backend))
    a, b = GGUFSource(first, config_from_gguf(first)), GGUFSource(single, config_from_gguf(single))
    assert a.tensor_table() == b.tensor_table() and len(a.files) == len(files)


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_fused_qkv_is_served_as_row_views(G, tmp_path):
    plain, _ = _convert(G, tmp_path, "attn_bias", "Q8_0")
    (tmp_path / "fused").mkdir()
    fused, _ = _convert(G, tmp_path / "fused", "attn_bias", "Q8_0", fuse_qkv=True)
    source = GGUFSource(fused, config_from_gguf(fused))
    assert source.gguf_name("model.layers.0.self_attn.k_proj.weight") == "blk.0.attn_qkv.weight"
    assert source.gguf_name("model.layers.0.self_attn.v_proj.bias") == "blk.0.attn_qkv.bias"
    k = source.matrix("model.layers.0.self_attn.k_proj.weight", np.float32, "numpy").arrays["qweight"]
    assert np.shares_memory(k, source.readers[0].raw_bytes("blk.0.attn_qkv.weight"))
    ids = np.load(PARITY / "attn_bias" / "expected.npz")["input_ids"]
    np.testing.assert_array_equal(_logits(fused, ids), _logits(plain, ids))


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_float_rows_are_read_with_pread(G, tmp_path):
    """float_rows (quantize-on-load, pycohere convert) = the mapped values, also for the row ranges of a
    fused attn_qkv, and a file cut short after opening is a named error (not a bytes-less array)."""
    (tmp_path / "fused").mkdir()
    path, _ = _convert(G, tmp_path / "fused", "attn_bias", fuse_qkv=True)
    source = GGUFSource(path, config_from_gguf(path))
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                 "model.embed_tokens.weight"):
        rows = source.shapes[name][0]
        want = source.matrix(name, np.float32, "numpy").dequantize()
        np.testing.assert_array_equal(source.float_rows(name)(0, rows), want)
        np.testing.assert_array_equal(source.float_rows(name)(1, 3), want[1:3])
    q8, _ = _convert(G, tmp_path, "attn_bias", "Q8_0")
    assert GGUFSource(q8, config_from_gguf(q8)).float_rows("model.layers.0.mlp.up_proj.weight") is None
    assert source.gguf_name("model.layers.0.self_attn.k_proj.weight") == "blk.0.attn_qkv.weight"
    name = "model.layers.1.mlp.down_proj.weight"
    t = source._tensors[name]
    os.truncate(path, t.file_offset() + 8)  # cut inside that tensor
    with pytest.raises(CorruptCheckpointError, match="ended at byte .* while reading tensor 'blk.1.ffn_down.weight'"):
        source.float_rows(name)(0, source.shapes[name][0])


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_tensors_beyond_4_gib_of_a_sparse_command_r_plus_sized_file(tmp_path, backend):
    """Command R+'s embedding (256000 x 12288 = 3.1e9 values, > 2**31) in F16 is 6.3 GB (> 2**32 bytes),
    so the tensors after it start beyond 4 GiB: every offset, size and row index must be a Python int or
    int64. A sparse file (a few written KiB) with that layout; the expected values are written by hand."""
    from pycohere.io.gguf import GGUFWriter, ValueType as V
    vocab, hidden = 256000, 12288
    path = tmp_path / "r-plus-layout.gguf"
    w = GGUFWriter(path)
    w.add("general.architecture", "command-r")
    for key, value in (("block_count", 1), ("context_length", 8), ("embedding_length", hidden),
                       ("feed_forward_length", 64), ("attention.head_count", 96), ("attention.head_count_kv", 8)):
        w.add(f"command-r.{key}", value, V.UINT32)
    w.add("command-r.attention.layer_norm_epsilon", 1e-5, V.FLOAT32)
    w.add_tensor_info("token_embd.weight", (vocab, hidden), "F16")
    w.add_tensor_info("output_norm.weight", (hidden,), "F32")
    w.add_tensor_info("blk.0.ffn_up.weight", (2, hidden), "Q8_0")
    w.open()
    last_rows = (np.arange(2 * hidden).reshape(2, hidden) % 1000 - 500).astype(np.float16)
    w.write_tensor_data("token_embd.weight", last_rows, vocab - 2)
    norm = np.linspace(-1, 1, hidden, dtype=np.float32)
    w.write_tensor_data("output_norm.weight", norm)
    blocks = np.zeros((2, hidden // 32, 34), np.uint8)  # Q8_0: f16 d = 0.5, then q = -16..15
    blocks[..., :2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    blocks[..., 2:] = (np.arange(32) - 16).astype(np.int8).view(np.uint8)
    w.write_tensor_data("blk.0.ffn_up.weight", blocks.reshape(2, -1))
    w.abort()
    os.truncate(path, w.file_size)
    if path.stat().st_blocks * 512 > 64 << 20:
        pytest.skip("this file system does not make sparse files")
    config = config_from_gguf(path)
    assert (config.vocab_size, config.hidden_size) == (vocab, hidden)  # the vocabulary from token_embd's rows
    source = GGUFSource(path, config)
    info = source.readers[0].tensors["blk.0.ffn_up.weight"]
    assert source.readers[0].data_offset + info.offset > 2**32
    table = {r.name: r for r in source.tensor_table()}
    assert table["model.embed_tokens.weight"].nbytes == 2 * vocab * hidden == 6_291_456_000
    embed = source.matrix("model.embed_tokens.weight", np.float32, backend)
    np.testing.assert_array_equal(embed.rows(np.array([vocab - 1, vocab - 2, 0])),
                                  np.stack([last_rows[1], last_rows[0], np.zeros(hidden)]).astype(np.float32))
    np.testing.assert_array_equal(source.float_rows("model.embed_tokens.weight")(vocab - 2, vocab),
                                  last_rows.astype(np.float32))
    np.testing.assert_array_equal(source.vector("model.norm.weight", np.float32), norm)
    up = source.matrix("model.layers.0.mlp.up_proj.weight", np.float32, backend)
    np.testing.assert_array_equal(up.dequantize(), np.tile(0.5 * (np.arange(32) - 16), (2, hidden // 32)))
    x = np.ones((1, hidden), np.float32)
    np.testing.assert_array_equal(up.matmul(x), np.full((1, 2), 0.5 * -16 * (hidden // 32), np.float32))


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_quantize_on_load_of_a_float_gguf(G, tmp_path):
    path, _ = _convert(G, tmp_path, "qk_norm")
    ids = np.load(PARITY / "qk_norm" / "expected.npz")["input_ids"]
    qc = QuantizationConfig(scheme="int4", group_size=32)
    model = pycohere.AutoModelForCausalLM.from_pretrained(path, quantization_config=qc, backend="numpy")
    assert model.model.params["layers"][0]["up_proj"].storage == "int4"
    np.testing.assert_array_equal(model(ids).logits, _logits(PARITY / "qk_norm", ids, quantization_config=qc))
    with pytest.raises(QuantizationError,
                       match="cannot quantize model\\..* \\[\\d+, 32\\]: int4 group_size=128 does not divide"):
        pycohere.AutoModelForCausalLM.from_pretrained(path, quantization_config=QuantizationConfig("int4", 128))
    q8, _ = _convert(G, tmp_path, "qk_norm", "Q8_0")
    with pytest.raises(QuantizationError, match="already quantized.*Q8_0"):
        pycohere.AutoModelForCausalLM.from_pretrained(q8, load_in_8bit=True)


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_gguf_names_follow_gguf_py(G):
    import gguf
    for model_type, case in (("cohere", "attn_bias"), ("cohere2", "cohere2_layer_types"), ("cohere", "qk_norm")):
        config = AutoConfig.from_pretrained(PARITY / case)
        arch = gguf.MODEL_ARCH.COMMAND_R if model_type == "cohere" else gguf.MODEL_ARCH.COHERE2
        tmap = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
        for name in expected_tensors(config):
            theirs = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
            assert theirs is not None and transformers_name(theirs) == name
    assert transformers_name("output.weight") == "lm_head.weight"


@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_demo_model_generates_the_same_text_from_gguf(G, tmp_path):
    """End to end through the CLI: the bundled (trained) demo model converted to a BF16 GGUF with its
    vocabulary must continue a prompt exactly as the safetensors folder does."""
    demo = ROOT / "pycohere" / "demo"
    path = G.convert_folder(demo, tmp_path / "demo-bf16.gguf", "BF16", tokenizer_dir=demo)[0]
    args = ["generate", "The city was", "-n", "8", "--json", "--no-do-sample", "--backend", "numpy"]
    a, b = _cli(*args, "--model", str(demo)), _cli(*args, "--model", str(path))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert rb["token_ids"] == ra["token_ids"] and rb["completion"] == ra["completion"] and ra["completion"].strip()


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
class TestErrors:
    def _write(self, G, tmp_path, case="gqa", qtype="F32", **kw):
        cfg, tensors = G.read_checkpoint(PARITY / case)
        return G.write_gguf(tmp_path / "bad.gguf", cfg, tensors, qtype, **kw)

    def test_unknown_architecture(self, G, tmp_path):
        import gguf
        [path] = self._write(G, tmp_path, extra_kv={"general.architecture": ("llama", gguf.GGUFValueType.STRING)})
        for load in (load_config, pycohere.AutoModelForCausalLM.from_pretrained):
            with pytest.raises(UnsupportedFormatError, match="general.architecture is 'llama'.*'command-r', 'cohere2'"):
                load(path)

    def test_missing_and_inconsistent_keys(self, G, tmp_path):
        import gguf
        [path] = self._write(G, tmp_path, drop_kv=("command-r.attention.layer_norm_epsilon",))
        with pytest.raises(CorruptCheckpointError, match="lacks 'command-r.attention.layer_norm_epsilon'"):
            load_config(path)
        U32 = gguf.GGUFValueType.UINT32
        [path] = self._write(G, tmp_path, extra_kv={"command-r.attention.key_length": (8, U32),
                                                   "command-r.attention.value_length": (16, U32)})
        with pytest.raises(CorruptCheckpointError, match="key_length' = 8 but .*value_length' = 16"):
            load_config(path)
        [path] = self._write(G, tmp_path,
                             extra_kv={"command-r.attention.head_count": ([4, 2], gguf.GGUFValueType.ARRAY)})
        with pytest.raises(UnsupportedFormatError, match="head_count' differs between layers"):
            load_config(path)
        [path] = self._write(G, tmp_path, extra_kv={"command-r.attention.head_count": (5, U32)})
        with pytest.raises(CorruptCheckpointError, match="impossible model.*num_attention_heads \\(5\\)"):
            load_config(path)
        [path] = self._write(G, tmp_path, extra_kv={"command-r.rope.dimension_count": (4, U32)})
        with pytest.raises(UnsupportedFormatError, match="rope.dimension_count' = 4 rotates part"):
            load_config(path)
        [path] = self._write(G, tmp_path,
                             extra_kv={"command-r.rope.scaling.attn_factor": (2.0, gguf.GGUFValueType.FLOAT32)})
        with pytest.raises(UnsupportedFormatError, match="attn_factor' = 2.0 scales the rotated queries"):
            load_config(path)
        [path] = self._write(G, tmp_path, case="rope_yarn")
        with pytest.raises(UnsupportedFormatError, match="rope.scaling.type' is 'yarn'"):
            load_config(path)
        [path] = self._write(G, tmp_path, case="cohere2_layer_types", drop_kv=("cohere2.attention.sliding_window",))
        with pytest.raises(CorruptCheckpointError, match="lacks 'cohere2.attention.sliding_window'"):
            load_config(path)

    def test_damaged_block_count_and_architecture(self, G, tmp_path):
        import gguf
        U32 = gguf.GGUFValueType.UINT32
        # one flipped bit (bit 16 of the u32 2) promises 65538 layers: refused from the tensor table at
        # once, before the manifest check lists 11 names per promised layer (2**24 + 2 ran out of memory)
        [path] = self._write(G, tmp_path, extra_kv={"command-r.block_count": (2**16 + 2, U32)})
        for load in (load_config, pycohere.AutoModelForCausalLM.from_pretrained):
            with pytest.raises(CorruptCheckpointError, match="'command-r.block_count' = 65538 but the file holds the "
                                                             "tensors of 2 layer\\(s\\) \\(blk.0 .. blk.1\\)"):
                load(path)
        # fewer layers than the file holds is the manifest's "unexpected" (no blow-up possible)
        [path] = self._write(G, tmp_path, extra_kv={"command-r.block_count": (1, U32)})
        with pytest.raises(WeightMismatchError, match="unexpected: model.layers.1."):
            pycohere.AutoModelForCausalLM.from_pretrained(path)
        # a file without tensors (llama.cpp's vocab-only models/ggml-vocab-*.gguf) keeps its metadata config
        [path] = G.write_gguf(tmp_path / "vocab-only.gguf", *G.read_checkpoint(PARITY / "gqa")[:1], {},
                              extra_kv={"command-r.vocab_size": (97, U32)})
        assert config_from_gguf(path).num_hidden_layers == AutoConfig.from_pretrained(PARITY / "gqa").num_hidden_layers
        # general.architecture with a damaged type: an array is not a name (was a raw TypeError: unhashable)
        arch = {"general.architecture": (["command-r"], gguf.GGUFValueType.ARRAY)}
        [path] = self._write(G, tmp_path, extra_kv=arch)
        with pytest.raises(CorruptCheckpointError, match="'general.architecture' must be a string, got \\['command-r"):
            load_config(path)

    def test_metadata_and_tensor_shapes_disagree(self, G, tmp_path):
        import gguf
        [path] = self._write(G, tmp_path, extra_kv={"command-r.feed_forward_length": (48, gguf.GGUFValueType.UINT32)})
        with pytest.raises(WeightMismatchError, match="misshaped.*model.layers.0.mlp.down_proj.weight: "
                                                      "file \\[32, 64\\], config wants \\[32, 48\\]"):
            pycohere.AutoModelForCausalLM.from_pretrained(path)

    def test_unsupported_tensor_types_name_the_tensor(self, G, tmp_path):
        rng = np.random.default_rng(0)
        raw = {"model.layers.1.mlp.up_proj.weight": (G.random_blocks(rng, 64, 32, "MXFP4"), "MXFP4")}
        [path] = self._write(G, tmp_path, raw=raw)
        with pytest.raises(UnsupportedFormatError,
                           match="'blk.1.ffn_up.weight' \\(model.layers.1.mlp.up_proj.weight\\) is stored as MXFP4"
                                 ".*F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, "
                                 "IQ4_NL, IQ4_XS"):
            pycohere.AutoModelForCausalLM.from_pretrained(path)
        raw = {"model.norm.weight": (G.random_blocks(rng, 1, 32, "Q8_0").reshape(-1), "Q8_0")}
        [path] = self._write(G, tmp_path, raw=raw)
        with pytest.raises(UnsupportedFormatError, match="'output_norm.weight'.*Q8_0; pycohere reads GGUF norms "
                                                         "and biases "
                                                         "stored as F32, F16, BF16"):
            pycohere.AutoModelForCausalLM.from_pretrained(path)

    def test_truncated_file_names_a_tensor(self, G, tmp_path):
        [path] = self._write(G, tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[:-100])
        with pytest.raises(CorruptCheckpointError, match="tensor '.*' .*truncated"):
            pycohere.AutoModelForCausalLM.from_pretrained(path)

    def test_split_parts_missing_damaged_or_mixed(self, G, tmp_path):
        files = self._write(G, tmp_path, qtype="Q8_0", split_max_tensors=8)
        assert len(files) == 3
        config = load_config(files[0])
        saved = files[1].read_bytes()
        files[1].write_bytes(saved[:-64])  # tensor data of part 2 beyond its end
        with pytest.raises(CorruptCheckpointError, match="bad-00002-of-00003.gguf: tensor '.*' .*truncated"):
            open_weights(files[0], config)
        files[1].unlink()
        with pytest.raises(CheckpointNotFoundError, match="part\\(s\\) bad-00002-of-00003.gguf are missing"):
            pycohere.AutoModelForCausalLM.from_pretrained(files[0])
        shutil.copy(files[2], files[1])  # part 3 under part 2's name
        with pytest.raises(CorruptCheckpointError, match="bad-00002-of-00003.gguf: split.no = 2, split.count = 3, "
                                                         "expected part 1"):
            load_config(files[0])
        with pytest.raises(CheckpointNotFoundError, match="part 3 of 3 .*load the first part, bad-00001-of-00003.gguf"):
            load_config(files[2])


# --- real llama.cpp metadata ---------------------------------------------------------------------------------
@pytest.mark.skipif(NO_JIT, reason="model tests are not part of the plain-Python kernel run")
def test_config_of_llama_cpp_command_r_vocab_file():
    """llama.cpp's models/ggml-vocab-command-r.gguf was converted by llama.cpp from
    CohereForAI/c4ai-command-r-v01 (vocabulary + hparams, no tensors). Its config must be that model's
    published config.json (hidden 8192, 40 layers, 64 heads, ffn 22528, rope_theta 8e6, logit_scale
    0.0625, layer_norm_eps 1e-5, vocab 256000, bos 5, eos 255001, pad 0), with the context length the
    converter takes from model_max_length (131072) and no q/k norm."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fetch_llama_cpp_data", ROOT / "tools" / "fetch_llama_cpp_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        folder = tool.fetch()
    except tool.RegistryUnreachableError as exc:  # only a network failure may skip
        pytest.skip(f"PyPI unreachable, cannot fetch llama-cpp-python sdist: {str(exc).splitlines()[0]}")
    c = config_from_gguf(folder / "ggml-vocab-command-r.gguf")
    assert c.model_type == "cohere" and not c.use_qk_norm and c.tie_word_embeddings and not c.attention_bias
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == \
        (8192, 40, 64, 64, 22528)
    assert (c.vocab_size, c.max_position_embeddings, c.bos_token_id, c.eos_token_id, c.pad_token_id) == \
        (256000, 131072, 5, 255001, 0)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 8000000.0}
    assert (c.logit_scale, c.layer_norm_eps, c.hidden_act, c.head_dim) == (0.0625, 1e-5, "silu", None)


def test_pipeline_and_autoconfig_read_a_gguf_file():
    path = DATA / "gguf" / "command-r-q8_0.gguf"
    assert AutoConfig.from_pretrained(path).to_dict() == load_config(path).to_dict()
    by_path = pycohere.pipeline("text-generation", model=path)
    by_model = pycohere.pipeline("text-generation", model=pycohere.AutoModelForCausalLM.from_pretrained(path))
    want = by_path("Hello", max_new_tokens=4, return_full_text=False)[0]["generated_text"]
    assert by_model("Hello", max_new_tokens=4, return_full_text=False)[0]["generated_text"] == want
    tok = pycohere.CohereTokenizer.from_pretrained(path)  # the GGUF's own vocabulary
    ids = pycohere.AutoModelForCausalLM.from_pretrained(path).generate(tok("Hello", return_tensors="np")["input_ids"],
                                                                       max_new_tokens=4, do_sample=False)
    assert tok.decode(ids[0, -4:]) == want
