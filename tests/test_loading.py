"""Loader, manifest and input errors: every bad input gets a named pycohere.errors exception."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

import pycohere
from pycohere.errors import (AttentionMaskError, CacheError, CheckpointNotFoundError, CorruptCheckpointError,
                             InputError, TokenIdError, UnsafeCheckpointError, UnsupportedFormatError,
                             WeightMismatchError, BackendError)
from pycohere.io.safetensors import Checkpoint, open_safetensors

from helpers import random_tensors, write_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return write_checkpoint(tmp_path / "m")


def test_tensors_are_zero_copy_views_of_the_file(tmp_path):
    folder = write_checkpoint(tmp_path / "bf16", storage="BF16")
    c = Checkpoint(folder)
    t = c["model.layers.0.mlp.up_proj.weight"]
    assert t.dtype == "BF16" and t.array.dtype == np.uint16
    base = t.array
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # a view into the mapped file, not a copy
    model = pycohere.AutoModelForCausalLM.from_pretrained(folder)
    w = model.params["layers"][0]["up_proj"]
    assert np.shares_memory(w.raw, model.model.checkpoint.ckpt["model.layers.0.mlp.up_proj.weight"].array)


@pytest.mark.parametrize("storage", ["F16", "BF16"])
def test_half_precision_files_widen_exactly(tmp_path, storage):
    f32 = pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "a"))
    half = pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "b", storage=storage))
    w32 = f32.params["layers"][1]["down_proj"].dequantize()
    wh = half.params["layers"][1]["down_proj"].dequantize()
    # bf16 keeps 8 mantissa bits, f16 11: the widened values are the rounded ones
    rel = np.abs(wh - w32).max() / np.abs(w32).max()
    assert 0 < rel < (2 ** -8 if storage == "BF16" else 2 ** -11)


def test_materialize_and_float64_give_the_same_logits(ckpt):
    ids = [[5, 9, 13, 21, 8]]
    a = pycohere.AutoModelForCausalLM.from_pretrained(ckpt, backend="numpy")(ids).logits
    b = pycohere.AutoModelForCausalLM.from_pretrained(ckpt, backend="numpy", materialize=True)(ids).logits
    c = pycohere.AutoModelForCausalLM.from_pretrained(ckpt, dtype="float64")(ids).logits
    np.testing.assert_array_equal(a, b)
    assert c.dtype == np.float64 and np.abs(a - c).max() < 1e-5


def test_sharded_checkpoint_with_index(tmp_path):
    folder = write_checkpoint(tmp_path / "one")
    tensors = dict(Checkpoint(folder).tensors)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(folder / "config.json", sharded)
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: np.array(tensors[n].array) for n in part}, str(sharded / fname))
        weight_map.update({n: fname for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = [[5, 7, 11]]
    np.testing.assert_array_equal(pycohere.AutoModelForCausalLM.from_pretrained(sharded)(ids).logits,
                                  pycohere.AutoModelForCausalLM.from_pretrained(folder)(ids).logits)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="model-00002-of-00002.safetensors.*incomplete"):
        pycohere.AutoModelForCausalLM.from_pretrained(sharded)


def test_manifest_reports_every_problem_at_once(tmp_path):
    config = pycohere.AutoConfig.from_dict(dict(__import__("helpers").TINY, model_type="cohere"))
    t = random_tensors(config)
    del t["model.layers.1.mlp.up_proj.weight"]
    t["model.layers.0.self_attn.q_norm.weight"] = np.ones((4, 8), np.float32)
    t["model.layers.0.mlp.down_proj.weight"] = np.zeros((32, 47), np.float32)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)  # stale buffer: ignored
    with pytest.raises(WeightMismatchError) as e:
        pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "bad", tensors=t))
    msg = str(e.value)
    assert "1 missing: model.layers.1.mlp.up_proj.weight" in msg
    assert "1 unexpected: model.layers.0.self_attn.q_norm.weight" in msg
    assert "model.layers.0.mlp.down_proj.weight: file [32, 47], config wants [32, 48]" in msg
    assert "inv_freq" not in msg and "use_qk_norm" in msg


def test_untied_head_required_and_an_extra_saved_head_is_used(tmp_path):
    config = pycohere.AutoConfig.from_dict(dict(__import__("helpers").TINY, model_type="cohere"))
    t = random_tensors(config)
    with pytest.raises(WeightMismatchError, match="missing: lm_head.weight"):
        pycohere.AutoModelForCausalLM.from_pretrained(
            write_checkpoint(tmp_path / "u", tensors=t, tie_word_embeddings=False))
    tied = pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "t", tensors=t))
    assert tied.params["lm_head"] is tied.params["embed_tokens"]
    # transformers 5 does not tie two different saved tensors: a saved lm_head.weight is the head
    t["lm_head.weight"] = 0.5 * t["model.embed_tokens.weight"]
    extra = pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "x", tensors=t), backend="numpy")
    ids = [[5, 9, 11]]
    np.testing.assert_allclose(extra(ids).logits, 0.5 * tied(ids).logits, rtol=1e-5, atol=1e-6)


def test_cohere2_ignores_a_stray_use_qk_norm(tmp_path):
    folder = write_checkpoint(tmp_path / "c2", "cohere2", sliding_window=4)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["use_qk_norm"] = True  # transformers' Cohere2 has no q/k norm and ignores the key
    (folder / "config.json").write_text(json.dumps(cfg))
    assert pycohere.AutoModelForCausalLM.from_pretrained(folder)([[5, 6]]).logits.shape == (1, 2, 61)


def test_malformed_headers_and_shard_indexes(tmp_path):
    folder = write_checkpoint(tmp_path / "m")
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__"]

    def rewrite(h):
        b = json.dumps(h).encode()
        f.write_bytes(len(b).to_bytes(8, "little") + b + raw[8 + n:])

    for bad in ({"shape": 5}, {"shape": ["2", 2]}, {"data_offsets": ["0", "4"]}, {"dtype": ["F32"]}):
        h = json.loads(json.dumps(header))
        h[names[0]].update(bad)
        rewrite(h)
        with pytest.raises(CorruptCheckpointError, match="malformed"):
            Checkpoint(folder)
    h = json.loads(json.dumps(header))
    first, last = sorted(names, key=lambda k: h[k]["data_offsets"][0])[::len(names) - 1]
    size = h[last]["data_offsets"][1] - h[last]["data_offsets"][0]
    h[last]["data_offsets"] = [0, size]  # the last tensor now reuses the first tensor's bytes
    rewrite(h)
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        Checkpoint(folder)
    f.write_bytes(raw)
    f.rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {names[0]: "../escape.safetensors"}}))
    with pytest.raises(CorruptCheckpointError, match="file name in the same folder"):
        Checkpoint(folder)


def test_pickles_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "cohere"}))
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        pycohere.AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="safetensors"):
        Checkpoint(tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        open_safetensors(tmp_path / "model.pt")


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        pycohere.AutoModelForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "cohere"}))
    with pytest.raises(CheckpointNotFoundError, match="no model.safetensors"):
        pycohere.AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(CheckpointNotFoundError):
        pycohere.AutoModelForCausalLM.from_pretrained(tmp_path / "nope")


def test_truncated_and_corrupt_files(ckpt):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[:-100])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        pycohere.AutoModelForCausalLM.from_pretrained(ckpt)
    f.write_bytes(raw[:5])
    with pytest.raises(CorruptCheckpointError, match="too short"):
        Checkpoint(ckpt)
    f.write_bytes((10**9).to_bytes(8, "little") + raw[8:])
    with pytest.raises(CorruptCheckpointError, match="header length"):
        Checkpoint(ckpt)
    n = int.from_bytes(raw[:8], "little")
    f.write_bytes(raw[:8] + b"{" + b"x" * (n - 1) + raw[8 + n:])
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        Checkpoint(ckpt)
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "F8_E4M3"
    h = json.dumps(header).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])
    with pytest.raises(UnsupportedFormatError, match="F8_E4M3"):
        Checkpoint(ckpt)


def test_input_errors(ckpt):
    model = pycohere.AutoModelForCausalLM.from_pretrained(ckpt)
    V = model.config.vocab_size
    with pytest.raises(TokenIdError, match=f"token id {V} at batch 0, position 2 .* \\[0, {V}\\)"):
        model([[5, 6, V, 7]])
    with pytest.raises(TokenIdError, match="-1"):
        model([[5, -1]])
    with pytest.raises(InputError, match="integers"):
        model([[0.5, 1.0]])
    with pytest.raises(InputError, match="at least one token"):
        model(np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(AttentionMaskError, match=r"\(2, 3\)"):
        model([[5, 6, 7], [5, 6, 7]], attention_mask=[[1, 1, 1]])
    with pytest.raises(AttentionMaskError, match="only 0"):
        model([[5, 6, 7]], attention_mask=[[1, 2, 1]])
    with pytest.raises(InputError, match="position_ids"):
        model([[5, 6, 7]], position_ids=[[0, 1]])
    with pytest.raises(InputError, match="exactly one"):
        model()
    with pytest.raises(InputError, match="float32"):
        pycohere.AutoModelForCausalLM.from_pretrained(ckpt, dtype="float16")
    with pytest.raises(BackendError, match="unknown backend"):
        pycohere.AutoModelForCausalLM.from_pretrained(ckpt, backend="cuda")
    cache = pycohere.KVCache.for_model(model.config)
    model([[5, 6], [5, 7]], past_key_values=cache, use_cache=True)
    with pytest.raises(CacheError, match="batch 2"):
        model([[5]], past_key_values=cache, use_cache=True)
    with pytest.raises(CacheError, match="KVCache"):
        model([[5]], past_key_values=[None])
    with pytest.raises(InputError, match="labels"):
        model([[5, 6, 7]], labels=[[5, 6]])


def test_wrong_class_for_model_type(tmp_path):
    folder = write_checkpoint(tmp_path / "c2", "cohere2", sliding_window=4)
    with pytest.raises(pycohere.errors.ConfigError, match="AutoModelForCausalLM"):
        pycohere.CohereForCausalLM.from_pretrained(folder)
    assert isinstance(pycohere.AutoModelForCausalLM.from_pretrained(folder), pycohere.Cohere2ForCausalLM)
    base = pycohere.AutoModel.from_pretrained(folder)
    out = base([[5, 6, 7]], output_hidden_states=True)
    assert isinstance(base, pycohere.Cohere2Model) and out.last_hidden_state.shape == (1, 3, 32)
    assert len(out.hidden_states) == 3


def test_logits_to_keep_and_loss(ckpt):
    model = pycohere.AutoModelForCausalLM.from_pretrained(ckpt)
    ids = np.array([[5, 9, 13, 21, 8, 30]])
    full = model(ids).logits
    # (BLAS may sum a matrix-vector product in another order than a matrix-matrix one: 1e-6)
    np.testing.assert_allclose(model(ids, logits_to_keep=1).logits, full[:, -1:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model(ids, logits_to_keep=[0, 2]).logits, full[:, [0, 2]], rtol=1e-6, atol=1e-6)
    # loss by hand: mean over t of -log softmax(logits[t])[ids[t+1]], skipping label -100
    labels = ids.copy()
    labels[0, 2] = -100
    z = full[0, :-1].astype(np.float64)
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    terms = [-logp[t, ids[0, t + 1]] for t in range(5) if t + 1 != 2]
    assert abs(model(ids, labels=labels).loss - np.mean(terms)) < 1e-9


def test_cache_for_another_model_and_static_overflow_leave_nothing_half_done(tmp_path):
    c1 = pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "a", num_hidden_layers=4))
    c2 = pycohere.AutoModelForCausalLM.from_pretrained(
        write_checkpoint(tmp_path / "b", "cohere2", num_hidden_layers=4, sliding_window=3))
    with pytest.raises(CacheError, match="windows"):
        c1([[5, 6]], past_key_values=pycohere.KVCache.for_model(c2.config), use_cache=True)
    static = pycohere.KVCache.for_model(c2.config, max_cache_len=5, static=True)
    c2([[5, 6, 7]], past_key_values=static, use_cache=True)
    with pytest.raises(CacheError, match="static cache is full"):
        c2([[8, 9, 10]], past_key_values=static, use_cache=True)
    assert [l.seen for l in static.layers] == [3, 3, 3, 3]  # no layer appended before the refusal
    c2([[8, 9]], past_key_values=static, use_cache=True)   # and it still works up to its size


def test_logits_to_keep_forms_as_transformers(ckpt):
    model = pycohere.AutoModelForCausalLM.from_pretrained(ckpt, backend="numpy")
    ids = np.array([[5, 9, 13, 21], [5, 7, 8, 30]])
    full = model(ids).logits
    per_row = model(ids, logits_to_keep=np.array([[0, 3], [1, 2]])).logits
    np.testing.assert_allclose(per_row, np.stack([full[0, [0, 3]], full[1, [1, 2]]]), rtol=1e-6, atol=1e-6)
    mask = np.array([[True, False, False, True], [False, False, True, False]])
    np.testing.assert_allclose(model(ids, logits_to_keep=mask).logits, full[mask], rtol=1e-6, atol=1e-6)
    for bad in (np.array([0.5]), np.array([[0, 9], [1, 2]]), -1):
        with pytest.raises(InputError, match="logits_to_keep"):
            model(ids, logits_to_keep=bad)


def test_ragged_and_non_numeric_inputs_are_named_errors(ckpt):
    model = pycohere.AutoModelForCausalLM.from_pretrained(ckpt)
    with pytest.raises(InputError, match="rectangular"):
        model([[5, 6, 7], [5, 6]])
    with pytest.raises(AttentionMaskError, match="rectangular"):
        model([[5, 6, 7]], attention_mask=[[1, 1, 1], [1]])
    with pytest.raises(InputError, match="labels must be integer"):
        model([[5, 6, 7]], labels=[[0.5, 1.0, 2.0]])
    with pytest.raises(InputError, match="numbers"):
        model([["a", "b"]])
    with pytest.raises(InputError, match=r"shape \(1, 3\), got"):
        model([[5, 6, 7]], position_ids=[[0, 1]])
