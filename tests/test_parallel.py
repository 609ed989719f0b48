"""Tensor parallelism in one process (pycohere.parallel, LocalGroup): N = 1, 2, 4 shards of every kind of
checkpoint give the single-process spec's logits within 1e-5 relative (float32; 1e-12 in float64), the
same bits run to run, the same tokens; the split follows transformers' tp_plan; each shard holds its
slices only; what cannot be split is a named error. The MPI runs are in tests/test_parallel_mpi.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pycohere
from pycohere import errors
from pycohere.model import AutoModelForCausalLM
from pycohere.parallel import (SPLITS, LocalGroup, ShardedKVCache, ShardPlan, TensorParallelCohereForCausalLM,
                               from_pretrained)
from pycohere.parallel.comm import Communicator, sum_in_rank_order
from pycohere.parallel.shard import read_columns
from pycohere.spec.params import LAYER_PARAMETERS

from conftest import DATA
from helpers import write_chat_model, write_checkpoint

IDS = np.array([[5, 17, 30, 42, 7, 9, 11, 3, 25, 8]])   # 10 tokens: past Cohere2's sliding window of 3
QUANT_DIMS = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=256)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints of every shape the split must handle."""
    root = tmp_path_factory.mktemp("tp")
    out = {
        "gqa": write_checkpoint(root / "gqa"),                                        # H 4, K 2 (N 4: K replicated)
        "mqa": write_checkpoint(root / "mqa", num_key_value_heads=1),
        "qk_norm": write_checkpoint(root / "qk", use_qk_norm=True, storage="BF16"),
        "bias_untied": write_checkpoint(root / "bias", attention_bias=True, tie_word_embeddings=False, storage="F16"),
        "cohere2": write_checkpoint(root / "c2", "cohere2", layer_types=["sliding_attention", "full_attention"],
                                    sliding_window=3),
        "demo": pycohere.DEMO_MODEL,                                                  # bf16, qk-norm, 4 layers
        "gguf_f16_split": DATA / "gguf" / "cohere2-f16-00001-of-00002.gguf",
    }
    floats = write_checkpoint(root / "qfloat", **QUANT_DIMS)
    for scheme, group in (("q4_0", None), ("int8", None), ("int4", 32), ("nf4", 32)):
        out[scheme] = pycohere.quantize_checkpoint(floats, root / scheme, scheme, group)
    chat = write_chat_model(root / "chat", **QUANT_DIMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (llama.cpp's own loader notes)
        for t in ("q8_0", "q4_0"):
            out[f"gguf_{t}"] = pycohere.convert_to_gguf(chat, root / f"chat-{t}.gguf", type=t)
    out["awq"] = DATA / "hf_quant" / "awq-gemm"
    out["bnb_int8"] = DATA / "hf_quant" / "bnb-int8"
    return out


CASES = {  # checkpoint -> group sizes that split it
    "gqa": (1, 2, 4), "mqa": (1, 2, 4), "qk_norm": (1, 2, 4), "bias_untied": (1, 2, 4), "cohere2": (1, 2, 4),
    "demo": (1, 2, 4), "gguf_f16_split": (1, 2, 4), "q4_0": (1, 2, 4), "int8": (1, 2, 4), "int4": (1, 2, 4),
    "nf4": (1, 2, 4), "gguf_q8_0": (1, 2, 4), "gguf_q4_0": (1, 2, 4), "awq": (1, 2), "bnb_int8": (1, 2, 4),
}
_REFERENCES: dict = {}


def reference(path, backend="numpy", dtype="float32"):
    key = (str(path), backend, dtype)
    if key not in _REFERENCES:
        _REFERENCES[key] = AutoModelForCausalLM.from_pretrained(path, backend=backend, dtype=dtype)(IDS).logits
    return _REFERENCES[key]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_sharded_logits_equal_the_single_process_spec(ckpts, case, backend):
    ref = reference(ckpts[case])  # the NumPy spec, one process
    for n in CASES[case]:
        model = from_pretrained(ckpts[case], n, backend=backend)
        logits = model(IDS).logits
        assert rel(logits, ref) < 1e-5, (case, backend, n, rel(logits, ref))
        assert np.array_equal(model(IDS).logits, logits)  # run to run: the same bits


@pytest.mark.parametrize("case", ["gqa", "qk_norm", "cohere2", "bias_untied"])
def test_float64_shards_agree_to_rounding(ckpts, case):
    ref = reference(ckpts[case], dtype="float64")
    for n in (2, 4):
        assert rel(from_pretrained(ckpts[case], n, dtype="float64", backend="numpy")(IDS).logits, ref) < 1e-12


def test_separate_loads_give_identical_bits(ckpts):
    a = from_pretrained(ckpts["demo"], 4, backend="numba")(IDS).logits
    b = from_pretrained(ckpts["demo"], 4, backend="numba")(IDS).logits
    assert np.array_equal(a, b)


def test_the_reduction_is_a_sum_in_rank_order():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-4, 4) for _ in range(4)]
    left_to_right = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    assert np.array_equal(sum_in_rank_order(parts), left_to_right)
    assert not np.array_equal(left_to_right, ((parts[3] + parts[2]) + parts[1]) + parts[0])  # order matters


def test_generation_equals_single_process(ckpts):
    ref = AutoModelForCausalLM.from_pretrained(ckpts["demo"], backend="numba")
    prompts = np.array([[0, 0, 5, 17, 300, 42], [5, 6, 7, 8, 9, 10]])  # left padding in row 0
    mask = (prompts != 0).astype(np.int64)
    greedy = ref.generate(prompts, attention_mask=mask, max_new_tokens=8, do_sample=False)
    sampled = ref.generate(prompts[1:], max_new_tokens=8, do_sample=True, seed=7, cache_implementation="static")
    for n in (2, 4):
        model = from_pretrained(ckpts["demo"], n, backend="numba")
        assert np.array_equal(model.generate(prompts, attention_mask=mask, max_new_tokens=8, do_sample=False), greedy)
        assert np.array_equal(model.generate(prompts[1:], max_new_tokens=8, do_sample=True, seed=7,
                                             cache_implementation="static"), sampled)


def test_kv_cache_and_hidden_states_are_sharded_and_full(ckpts):
    ref = AutoModelForCausalLM.from_pretrained(ckpts["gqa"])
    want = ref(IDS, use_cache=True, output_hidden_states=True)
    model = from_pretrained(ckpts["gqa"], 2, backend="numpy")
    out = model(IDS, use_cache=True, output_hidden_states=True)
    cache = out.past_key_values
    assert isinstance(cache, ShardedKVCache) and len(cache.shards) == 2
    assert [s.layers[0].k.shape[2] for s in cache.shards] == [1, 1]          # 2 kv heads: one per rank
    assert cache.get_seq_length() == IDS.shape[1]
    for h, w in zip(out.hidden_states, want.hidden_states):
        assert rel(h, w) < 1e-5
    step = model(np.array([[4]]), past_key_values=cache, use_cache=True).logits
    assert rel(step, ref(np.array([[4]]), past_key_values=want.past_key_values, use_cache=True).logits) < 1e-5
    with pytest.raises(errors.CacheError, match="make it with model.new_cache"):
        model(IDS, past_key_values=pycohere.KVCache.for_model(model.config), use_cache=True)


# --- the split -----------------------------------------------------------------------------------------
def test_the_split_covers_every_layer_tensor_and_follows_transformers_tp_plan():
    assert set(SPLITS) == {p.field for p in LAYER_PARAMETERS}
    colwise = {f for f, (how, _, _) in SPLITS.items() if how == "rows" and f.endswith("_proj")}
    rowwise = {f for f, (how, _, _) in SPLITS.items() if how == "columns"}
    transformers = pytest.importorskip("transformers")
    for cls in (transformers.CohereConfig, transformers.Cohere2Config):
        plan = {k.split(".")[-1]: v for k, v in cls.base_model_tp_plan.items()}
        assert {k for k, v in plan.items() if v == "colwise"} == colwise
        assert {k for k, v in plan.items() if v == "rowwise"} == rowwise


def test_plan_ranges():
    config = pycohere.AutoConfig.for_model("cohere", hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                                           intermediate_size=96, vocab_size=101, num_hidden_layers=1)
    p = ShardPlan.for_model(config, 4, ffn_unit=8)
    assert p.heads == ((0, 2), (2, 4), (4, 6), (6, 8))
    assert p.kv == ((0, 1), (0, 1), (1, 2), (1, 2))       # K 2 < N 4: each kv head on the 2 ranks reading it
    assert p.ffn == ((0, 24), (24, 48), (48, 72), (72, 96))
    assert p.vocab == ((0, 26), (26, 51), (51, 76), (76, 101))
    assert ShardPlan.for_model(config, 2, ffn_unit=32).ffn == ((0, 64), (64, 96))   # 3 blocks: 2 + 1
    with pytest.raises(errors.ShardingError, match=r"cannot split the 8 attention heads.*possible sizes: 1, 2, 4, 8"):
        ShardPlan.for_model(config, 3)


def test_each_shard_holds_its_slices_only(ckpts):
    model = from_pretrained(ckpts["demo"], 2, backend="numpy")  # (with 4, the 2 kv heads are replicated)
    full = AutoModelForCausalLM.from_pretrained(ckpts["demo"], backend="numpy").params
    whole = sum(w.nbytes for w in [full.embed_tokens, *[v for p in full.layers for v in p.values() if hasattr(v, "nbytes")]])
    for r, s in enumerate(model.model.shards):
        mine = sum(w.nbytes for w in [s.embed_tokens, *[v for p in s.layers for v in p.values() if hasattr(v, "nbytes")]])
        # only the input LayerNorm weights are replicated (4 layers x 256 float32)
        assert abs(mine - whole / 2) <= 4 * 256 * 4, (r, mine, whole)
        q = s.layers[0].q_proj.dequantize(np.float32)
        h0, h1 = model.plan.heads[r]
        assert np.array_equal(q, full.layers[0].q_proj.dequantize(np.float32)[h0 * 32:h1 * 32])
        assert np.array_equal(s.layers[0].q_norm, full.layers[0].q_norm[h0:h1])


@pytest.mark.parametrize("case", ["demo", "q4_0", "int8", "gguf_q8_0", "bias_untied"])
def test_strided_views_of_the_map_give_the_same_logits(ckpts, case):
    """row_parallel="view": o_proj / down_proj column slices stay strided views of the memory map; the
    kernels read them correctly (the default reads the slices into contiguous arrays)."""
    for backend in ("numpy", "numba"):
        read = from_pretrained(ckpts[case], 2, backend=backend)
        view = from_pretrained(ckpts[case], 2, backend=backend, row_parallel="view")
        w = view.model.shards[1].layers[0].down_proj
        assert not next(iter(getattr(w, "arrays", {"raw": getattr(w, "raw", None)}).values())).flags.c_contiguous
        assert rel(view(IDS).logits, read(IDS).logits) < 1e-6


def test_read_columns_reads_the_slice_without_mapping_the_rest(tmp_path):
    """The reason for row_parallel="read": a strided view of half the columns puts every page of the
    matrix in the resident set (readahead and fault-around map whole pages of every row); reading the
    slice with preadv puts only the slice there (its correctness: the next test)."""
    code = """
import sys, numpy as np
from pycohere.parallel.shard import read_columns
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024
path, mode = sys.argv[1], sys.argv[2]
np.random.default_rng(0).integers(0, 65535, (2048, 8192), dtype=np.uint16).tofile(path)  # 32 MiB, 16 KiB rows
mm = np.memmap(path, dtype=np.uint16, mode="r", shape=(2048, 8192))
before = rss()
part = read_columns(mm, 0, 4096) if mode == "read" else np.asarray(mm[:, :4096]).sum()
print(rss() - before)
"""
    grown = {}
    for mode in ("view", "read"):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{mode}.bin"), mode],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        grown[mode] = int(r.stdout)
    assert grown["view"] > 30 * 2**20, grown              # all 32 MiB of the matrix
    assert 15 * 2**20 < grown["read"] < 18 * 2**20, grown  # the 16 MiB slice, nothing of the map


def test_read_columns_equals_the_view(tmp_path):
    a = np.arange(12 * 40, dtype=np.uint16).reshape(12, 40)
    a.tofile(tmp_path / "a.bin")
    mm = np.memmap(tmp_path / "a.bin", dtype=np.uint16, mode="r", offset=0, shape=(12, 40))
    for c0, c1 in ((0, 40), (8, 24), (39, 40)):
        got = read_columns(mm[2:10], c0, c1)
        assert got.flags.c_contiguous and np.array_equal(got, a[2:10, c0:c1])
    assert np.array_equal(read_columns(a, 3, 9), a[:, 3:9])  # an in-memory array: a plain copy


# --- what cannot be split ---------------------------------------------------------------------------------
def test_unsplittable_checkpoints_are_named_errors(ckpts):
    with pytest.raises(errors.ShardingError, match=r"o_proj.weight is stored in blocks of 32 inputs.*column 16"):
        from_pretrained(DATA / "gguf" / "command-r-q8_0.gguf", 2)  # o_proj has 32 inputs in one q8_0 block
    with pytest.raises(errors.ShardingError, match="act-order"):
        from_pretrained(DATA / "hf_quant" / "gptq-v1-act-order", 2)
    with pytest.raises(errors.ShardingError, match="cannot split the 4 attention heads evenly"):
        from_pretrained(ckpts["gqa"], 3)
    with pytest.raises(errors.ShardingError, match="cannot share the 2 key/value heads"):
        from_pretrained(write_checkpoint(ckpts["gqa"].parent / "h6", num_attention_heads=6, num_key_value_heads=2,
                                         hidden_size=48), 3)
    with pytest.raises(errors.ShardingError, match="size >= 1"):
        LocalGroup(0)


def test_bad_arguments_are_named_errors(ckpts):
    with pytest.raises(errors.InputError, match="quantize the checkpoint first"):
        from_pretrained(ckpts["gqa"], 2, load_in_8bit=True)
    with pytest.raises(errors.InputError, match="row_parallel="):
        from_pretrained(ckpts["gqa"], 2, row_parallel="copy")
    with pytest.raises(errors.InputError, match="tensor_parallel must be"):
        from_pretrained(ckpts["gqa"], "two")
    model = from_pretrained(ckpts["gqa"], 2)
    with pytest.raises(errors.InputError, match="not available with tensor parallelism"):
        model(IDS, recorder=pycohere.Recorder())
    with pytest.raises(errors.InputError, match="not available with tensor parallelism"):
        model(IDS, output_attentions=True)
    with pytest.raises(errors.TokenIdError):
        model(np.array([[5, 61]]))
    with pytest.raises(errors.InputError, match="serve\\(\\) runs on the ranks other than 0"):
        model.serve()


class TwoProcesses(Communicator):
    """A LocalGroup of 2 that pretends a second process answered ``allgather_obj`` with ``peer``."""

    def __init__(self, peer):
        self.size, self.local_ranks, self.peer = 2, (0, 1), peer

    def allgather(self, local, shapes):
        return list(local)

    gather = allgather

    def bcast_obj(self, obj=None, wait=True):
        return obj

    def allgather_obj(self, obj):
        return [obj, self.peer(obj)]

    @property
    def processes(self):
        return 2


def test_every_rank_checks_that_the_others_opened_the_same_checkpoint(ckpts):
    other = json.loads(json.dumps({"path": "/elsewhere", "config": "x", "tensors": "y", "norm weights": "z",
                                   "settings": "s"}))
    with pytest.raises(errors.CheckpointMismatchError, match=r"rank 2 opened /elsewhere .* config and tensors and "
                                                              r"norm weights and settings differ"):
        from_pretrained(ckpts["gqa"], TwoProcesses(lambda mine: (True, other) if mine[0] else mine))
    # a second process that failed to open its copy: this one raises RankFailedError naming it
    with pytest.raises(errors.RankFailedError, match="rank 2 failed while opening the checkpoint: CheckpointNot"):
        from_pretrained(ckpts["gqa"], TwoProcesses(lambda mine: (False, "CheckpointNotFoundError: no such folder")))


def test_the_facade_and_the_core_work_without_mpi4py_and_dask(ckpts):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mpi4py", "dask", "distributed"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, pycohere
from pycohere import errors
m = pycohere.AutoModelForCausalLM.from_pretrained({str(ckpts['gqa'])!r}, tensor_parallel=2)
assert m(np.array([[5, 6]])).logits.shape == (1, 2, 61)
try:
    pycohere.AutoModelForCausalLM.from_pretrained({str(ckpts['gqa'])!r}, tensor_parallel="mpi")
except errors.MissingExtraError as e:
    assert "pip install 'pycohere[mpi]'" in str(e)
else:
    raise SystemExit("no error")
print("ok", [k for k in sys.modules if k.startswith(("mpi4py", "dask", "distributed"))])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok []"
    assert isinstance(pycohere.AutoModelForCausalLM.from_pretrained(ckpts["gqa"], tensor_parallel=1),
                      TensorParallelCohereForCausalLM)


def test_the_wire_format_round_trips_the_protocol_and_refuses_anything_else():
    """Ranks exchange JSON + raw arrays (pycohere.parallel.wire), never pickles."""
    import pytest
    from pycohere.generation.config import GenerateDecoderOnlyOutput
    from pycohere.parallel.wire import decode, encode
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    mask = np.array([[True, False]])
    out = GenerateDecoderOnlyOutput(ids, (np.float32([[np.nan, -np.inf, 1.5]]),), None, None)
    msg = ("step", ids, mask, {"n": 3, "x": 0.1, "nan": float("nan")}, [None, True, "s"], out)
    got = decode(encode(msg))
    assert got[0] == "step" and isinstance(got, tuple)
    np.testing.assert_array_equal(got[1], ids)
    assert got[1].dtype == np.int64 and got[2].dtype == np.bool_ and got[2].shape == (1, 2)
    assert got[3]["n"] == 3 and got[3]["x"] == 0.1 and np.isnan(got[3]["nan"]) and got[4] == [None, True, "s"]
    g = got[5]
    assert isinstance(g, GenerateDecoderOnlyOutput) and g.logits is None and g.past_key_values is None
    np.testing.assert_array_equal(g.scores[0], out.scores[0])
    with pytest.raises(TypeError, match="not sent between ranks"):
        encode(("x", object()))
    with pytest.raises(ValueError, match="unknown value kind"):
        decode(b'{"__pickle__": "gASV"}')
    assert b"pickle" not in encode(msg)
