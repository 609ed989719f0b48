"""`pycohere quantize` and quantize-on-load, end to end on tiny Cohere and Cohere2 models.

Oracle for the quantized models: a float32 checkpoint holding the *dequantized* weights (the
NumPy spec of every scheme), loaded as an ordinary model. The quantized model must reproduce
its logits (numpy backend), the numba backend must agree within 1e-4 relative, and generation
must work from the command line and the API.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import pycohere
from helpers import run_cli_with_file_size_limit, write_chat_model, write_checkpoint
from pycohere.cli import main
from pycohere.errors import QuantizationError
from pycohere.io.files import umask
from pycohere.quant import QuantizedWeight
from pycohere.checkpoints import safetensors as storage_module
from pycohere.io.dtypes import widen

SCHEMES = ["int8", "int4", "int4-asym", "nf4", "q8_0", "q4_0"]
DIMS = dict(hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"cohere": write_chat_model(root / "cohere", "cohere", **DIMS),
            "cohere2": write_chat_model(root / "cohere2", "cohere2", sliding_window=3, sliding_window_pattern=2,
                                        **DIMS)}


def dequantized_float_checkpoint(quantized, folder):
    """The oracle: every weight of a quantized checkpoint as float32 (quantized ones dequantized
    by the NumPy spec), saved as an ordinary checkpoint with the same config."""
    model = pycohere.AutoModelForCausalLM.from_pretrained(quantized, backend="numpy")
    ckpt = model.model.checkpoint.ckpt
    tensors = {}
    for name, shape in storage_module.QuantizedSafetensorsSource(ckpt, model.config).shapes.items():
        if name in ckpt:
            tensors[name] = widen(ckpt[name].array, ckpt[name].dtype)
        else:
            meta = json.loads(ckpt.metadata[storage_module.METADATA_KEY])["tensors"][name]
            arrays = {k.rsplit(".", 1)[1]: ckpt[k].array for k in ckpt if k.startswith(name + ".")}
            tensors[name] = QuantizedWeight(arrays, meta).dequantize()
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = json.loads((quantized / "config.json").read_text())
    del cfg["quantization_config"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def leftovers(folder):
    """Hidden temporary folders a failed run could have left."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("arch", ["cohere", "cohere2"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_load_generate_from_cli_and_api(arch, scheme, models, tmp_path, capsys):
    src = models[arch]
    dst = tmp_path / "q"
    assert main(["quantize", str(src), str(dst), "--scheme", scheme]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {dst}" in out and "quantizing to " + scheme in err  # the progress bar is on stderr
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()

    ids = np.array([[5, 17, 42, 99, 3, 250, 7]])
    spec = pycohere.AutoModelForCausalLM.from_pretrained(dst, backend="numpy")
    fast = pycohere.AutoModelForCausalLM.from_pretrained(dst, backend="numba")
    assert isinstance(spec.params["layers"][0]["gate_proj"], QuantizedWeight)
    oracle = pycohere.AutoModelForCausalLM.from_pretrained(dequantized_float_checkpoint(dst, tmp_path / "f"),
                                                           backend="numpy")
    want = oracle(ids).logits
    got = spec(ids).logits
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # prefill (7 tokens) and decode (1 token at a time) through the numba kernels
    cache = pycohere.KVCache.for_model(fast.config)
    first = fast(ids[:, :5], past_key_values=cache, use_cache=True).logits
    rest = [fast(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(5, 7)]
    fast_logits = np.concatenate([first] + rest, axis=1)
    assert np.abs(fast_logits - got).max() <= 1e-4 * np.abs(got).max()

    api = spec.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:].tolist()
    assert fast.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:].tolist() == api
    for backend in ("numpy", "numba"):
        assert main(["generate", "Hello there", "--model", str(dst), "-n", "3", "--no-do-sample", "--json",
                     "--backend", backend]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["completion_tokens"] == 3 or result["token_ids"][-1] in spec.config.eos_token_ids
    assert leftovers(tmp_path) == []


def test_api_equals_cli_bytes_and_quantize_on_load_equals_stored(models, tmp_path, capsys):
    src = models["cohere"]
    assert main(["quantize", str(src), str(tmp_path / "cli"), "--scheme", "nf4", "--group-size", "32", "-q"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no bar
    api = pycohere.quantize_checkpoint(src, tmp_path / "api", scheme="nf4", group_size=32)
    assert (api / "model.safetensors").read_bytes() == (tmp_path / "cli" / "model.safetensors").read_bytes()
    stored = pycohere.AutoModelForCausalLM.from_pretrained(api, backend="numpy")
    on_load = pycohere.AutoModelForCausalLM.from_pretrained(
        src, backend="numpy", quantization_config=pycohere.QuantizationConfig(scheme="nf4", group_size=32))
    a, b = stored.params["layers"][1]["down_proj"], on_load.params["layers"][1]["down_proj"]
    assert isinstance(b, QuantizedWeight) and not isinstance(b.arrays["qweight"], np.memmap)
    for k in a.arrays:
        assert a.arrays[k].tobytes() == b.arrays[k].tobytes()
    assert on_load.params["lm_head"] is on_load.params["embed_tokens"]
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(stored(ids).logits, on_load(ids).logits)


def test_load_in_8bit_and_4bit_shorthands(models):
    src = models["cohere2"]
    m8 = pycohere.AutoModelForCausalLM.from_pretrained(src, load_in_8bit=True, backend="numpy")
    w8 = m8.params["layers"][0]["q_proj"]
    assert (w8.storage, w8.group_size) == ("int8", 128)  # per output channel (the row length)
    m4 = pycohere.AutoModelForCausalLM.from_pretrained(src, load_in_4bit=True, backend="numpy")
    w4 = m4.params["embed_tokens"]
    assert (w4.storage, w4.group_size) == ("nf4", 64)
    as_dict = pycohere.AutoModelForCausalLM.from_pretrained(src, quantization_config={"scheme": "int4-asym"},
                                                            backend="numpy")
    assert as_dict.params["layers"][0]["o_proj"].storage == "int4-asym"
    assert np.isfinite(m4(np.array([[3, 4, 5]])).logits).all()
    with pytest.raises(QuantizationError, match="only one of"):
        pycohere.AutoModelForCausalLM.from_pretrained(src, load_in_8bit=True, load_in_4bit=True)
    with pytest.raises(QuantizationError, match="QuantizationConfig or a dict"):
        pycohere.AutoModelForCausalLM.from_pretrained(src, quantization_config="nf4")
    with pytest.raises(QuantizationError, match="q4_k is dequantize-only"):
        pycohere.QuantizationConfig(scheme="q4_k")


# --- bad inputs: clear one-line errors, nothing left behind -----------------------------------------
def run_error(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("pycohere: error: ")
    return err


def test_unknown_scheme_and_group_size_not_dividing(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src", "cohere", hidden_size=128, intermediate_size=192)
    err = run_error(["quantize", str(src), str(tmp_path / "q"), "--scheme", "int3"], capsys)
    assert "unknown quantization scheme 'int3'" in err and "int4" in err
    err = run_error(["quantize", str(src), str(tmp_path / "q"), "--scheme", "int4", "--group-size", "128"], capsys)
    assert "model.layers.0.mlp.down_proj.weight [128, 192]" in err and "does not divide the row length 192" in err
    err = run_error(["quantize", str(src), str(tmp_path / "q"), "--scheme", "q4_k"], capsys)
    assert "dequantize-only" in err
    with pytest.raises(QuantizationError, match="does not divide"):  # quantize-on-load: checked before loading
        pycohere.AutoModelForCausalLM.from_pretrained(src, quantization_config=pycohere.QuantizationConfig("int4", 128))
    assert not (tmp_path / "q").exists() and leftovers(tmp_path) == []


def test_already_quantized_source_and_existing_destination(models, tmp_path, capsys):
    src = models["cohere"]
    q = tmp_path / "q"
    assert main(["quantize", str(src), str(q), "--scheme", "int8", "-q"]) == 0
    err = run_error(["quantize", str(q), str(tmp_path / "q2"), "--scheme", "int4"], capsys)
    assert "already quantized" in err and "original float checkpoint" in err
    before = (q / "model.safetensors").read_bytes()
    err = run_error(["quantize", str(src), str(q), "--scheme", "int4"], capsys)
    assert "already exists" in err and "--force" in err
    assert (q / "model.safetensors").read_bytes() == before
    assert main(["quantize", str(src), str(q), "--scheme", "int4", "--force", "-q"]) == 0
    assert json.loads((q / "config.json").read_text())["quantization_config"]["scheme"] == "int4"
    assert oct(q.stat().st_mode & 0o777) == oct(0o777 & ~umask())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    err = run_error(["quantize", str(src), str(precious), "--scheme", "int4", "--force"], capsys)
    assert "does not look like a checkpoint" in err and (precious / "notes.txt").exists()
    err = run_error(["quantize", str(src), str(src / "inside"), "--scheme", "int4"], capsys)
    assert "inside) the source" in err
    assert leftovers(tmp_path) == []


def test_disk_full_in_a_subprocess_leaves_nothing(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli_with_file_size_limit(200_000, "quantize", str(models["cohere"]), str(out / "q"), "--scheme", "int8", "-q")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "file size limit" in lines[0] and "nothing was written" in lines[0]
    assert list(out.iterdir()) == []


def test_write_errors_and_interrupts_through_the_api(models, tmp_path, monkeypatch):
    src = models["cohere"]
    calls = []
    real = os.pwrite

    def failing(fd, data, pos):
        calls.append(pos)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, pos)
    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(QuantizationError, match="the disk is full.*nothing was written"):
        pycohere.quantize_checkpoint(src, tmp_path / "deep" / "er" / "q", "int4")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == []  # not even the parent folders it created

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("pycohere.export.quantized._copy_side_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pycohere.quantize_checkpoint(src, tmp_path / "q", "int8")
    assert sorted(os.listdir(tmp_path)) == []
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QuantizationError, match="could not write the quantized checkpoint"):
        pycohere.quantize_checkpoint(src, blocker / "q", "int8")  # the parent is a file
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize("command", [["quantize", "{src}", "/proc/nope", "--scheme", "int8", "-q"],
                                     ["convert", "{src}", "/proc/sub/nope.gguf", "--type", "q8_0", "-q"]],
                         ids=["quantize", "convert"])
def test_an_unwritable_destination_is_named_as_such_not_as_a_full_disk(models, command, capsys):
    """/proc takes no files, and shutil.disk_usage says it has 0 bytes free: the message used to be
    "needs 0.00 GiB but /proc has 0.00 GiB free"."""
    err = run_error([a.replace("{src}", str(models["cohere"])) for a in command], capsys)
    assert "/proc does not accept new files (a virtual file system that holds no files)" in err, err
    assert "free" not in err and "full" not in err and "choose a destination in a writable folder" in err
