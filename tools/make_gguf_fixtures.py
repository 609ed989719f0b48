#!/usr/bin/env python
"""GGUF fixtures for tests/test_gguf_model.py, written with gguf-py's GGUFWriter (the oracle).

This script never imports pycohere. It converts a transformers checkpoint folder (config.json +
safetensors) the way llama.cpp's ``convert_hf_to_gguf.py`` does for ``CohereForCausalLM`` /
``Cohere2ForCausalLM`` (``conversion/command_r.py`` + ``conversion/base.py`` of the llama.cpp tree
bundled with llama-cpp-python 0.3.36):

* metadata: ``TextModel.set_gguf_parameters`` (block_count, context_length, embedding_length,
  feed_forward_length, head_count(_kv), rope.freq_base, attention.layer_norm_epsilon, key/value_length
  when config.json has head_dim, file_type) plus ``logit_scale``, ``rope.scaling.type = none`` and for
  cohere2 ``attention.sliding_window``, ``vocab_size`` and ``rope.dimension_count``;
* vocabulary: ``get_vocab_base`` (tokens by id padded with ``[PAD{i}]``, CONTROL for special added
  tokens, USER_DEFINED for other added tokens) + ``SpecialVocab`` (merges, bos/eos/pad ids,
  add_bos/add_eos, the default chat template), tokenizer model ``gpt2`` with pre ``command-r``;
* tensors: names from gguf-py's ``get_tensor_name_map`` (``lm_head`` -> ``output``, which llama.cpp
  itself cannot map for these architectures); 1-D tensors and ``*_norm.weight`` stay F32, the other
  tensors get the requested type through ``gguf.quants.quantize`` (F16, BF16, Q8_0, Q4_0, Q4_1).

Checked against the real thing: llama.cpp's ``convert_hf_to_gguf.py`` (that tree, with its own gguf-py;
``get_vocab_base_pre`` patched to answer "command-r" for the tiny vocabulary, and ``rotary_pct: 1.0``
added to the cohere2 config.json, which its Cohere2Model requires) on tiny cohere (qk-norm, F32 and
Q8_0) and cohere2 (F32) models gave byte-identical tensors and the same metadata keys, types and
values, except that it also writes ``general.name/size_label/type/quantization_version`` and the two
non-default chat templates.

gguf-py cannot quantize k-quants, so Q4_K / Q6_K tensors are random valid blocks (finite f16 scales);
:func:`dequantized_weights` reads any file back through gguf-py's ``GGUFReader`` +
``gguf.quants.dequantize``: the weights a quantized GGUF *stands for*, i.e. the oracle model.

Options the real converter has or that llama.cpp reads: ``fuse_qkv`` (``--fuse-qkv``), an explicit
cohere2 ``sliding_window_pattern`` (bool array, as the cohere2moe converter writes; an int) and
split files (``split_max_tensors``, gguf-py's writer = llama.cpp's gguf-split layout).

    python tools/make_gguf_fixtures.py [--out tests/data/gguf]

writes the small committed fixtures (tiny models with the tiny Command-R vocabulary of
tests/data/tokenizer/tiny-command-r) and their transformers logits, with provenance.json.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "tests" / "data" / "tokenizer" / "tiny-command-r"
SEED = 0
ARCH = {"cohere": "command-r", "cohere2": "cohere2"}
# llama.cpp's LlamaFileType of an --outtype (ALL_F32, MOSTLY_F16, ...)
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}
KQUANT_SIZES = {"Q4_K": (144, (0, 2)), "Q6_K": (210, (208,))}  # bytes per block, offsets of f16 scales


# --- reading a transformers checkpoint (F32 / F16 / BF16 safetensors) ------------------------------
def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """{name: float32 array} of one safetensors file (bf16 widened exactly)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        data = raw[8 + n + begin:8 + n + end]
        dtype = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[info["dtype"]]
        a = np.frombuffer(data, dtype=dtype).reshape(info["shape"])
        out[name] = (a.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else a.astype(np.float32)
    return out


def read_checkpoint(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    config = json.loads((folder / "config.json").read_text())
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(read_safetensors(f))
    return config, tensors


def write_checkpoint(folder: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    """config.json + model.safetensors (float32): e.g. the dequantized oracle of a quantized GGUF."""
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# --- vocabulary -------------------------------------------------------------------------------------
def vocabulary(tokenizer_dir: Path, vocab_size: int) -> dict:
    """What convert_hf_to_gguf writes for a Command-R BPE tokenizer (get_vocab_base + SpecialVocab)."""
    import gguf
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    added = {t["id"]: t for t in data["added_tokens"]}
    by_id.update({i: t["content"] for i, t in added.items()})
    assert max(by_id) < vocab_size, "config vocab_size is smaller than the tokenizer"
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i]["special"] or _looks_special(by_id[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = cfg.get("chat_template")
    if isinstance(template, list):  # the named list: keep the default one (fixtures stay small)
        template = next(t["template"] for t in template if t["name"] == "default")
    return {"tokens": tokens, "types": types, "merges": merges, "template": template,
            "add_bos": cfg.get("add_bos_token"), "add_eos": cfg.get("add_eos_token")}


def _looks_special(token: str) -> bool:
    """conversion/base.py does_token_look_special (the forms a Command-R vocabulary can have)."""
    return token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>")) \
        or (token.startswith("<unused") and token.endswith(">"))


# --- writing ----------------------------------------------------------------------------------------
def gguf_name(hf_name: str, arch: str, n_layers: int) -> str:
    import gguf
    if hf_name == "lm_head.weight":
        return "output.weight"
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.COMMAND_R if arch == "command-r" else gguf.MODEL_ARCH.COHERE2,
                                    n_layers)
    name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ValueError(f"gguf-py cannot map {hf_name!r} for {arch}")
    return name


def random_blocks(rng: np.random.Generator, rows: int, cols: int, qtype: str, scale: float = 2e-4) -> np.ndarray:
    """Random valid ``qtype`` blocks for a [rows, cols] tensor: uint8 [rows, blocks * bytes]. For Q4_K
    and Q6_K the f16 scales are finite with magnitude <= ``scale`` (random bytes there could be NaN
    or inf); other types (for the unsupported-type tests) are plain random bytes."""
    import gguf
    from gguf import GGMLQuantizationType as T
    block, size = gguf.GGML_QUANT_SIZES[T[qtype]]
    nb = cols // block
    blocks = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    for off in KQUANT_SIZES.get(qtype, (size, ()))[1]:
        d = rng.uniform(-scale, scale, (rows, nb)).astype(np.float16)
        blocks[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, nb, 2)
    return blocks.reshape(rows, nb * size)


def write_gguf(out: Path, config: dict, tensors: dict[str, np.ndarray], qtype: str = "F32", *,
               types: dict[str, str] | None = None, raw: dict[str, tuple[np.ndarray, str]] | None = None,
               tokenizer_dir: Path | None = None, pattern: str | None = None, fuse_qkv: bool = False,
               split_max_tensors: int = 0, extra_kv: dict | None = None, drop_kv: tuple = ()) -> list[Path]:
    """Write ``tensors`` (transformers names, float32) as a GGUF model; return the files written.

    qtype: type of the 2-D weights (norms stay F32); ``types`` overrides it per tensor; ``raw`` gives
    pre-packed blocks (``(uint8 [rows, bytes], "Q4_K")``) for some tensors. ``pattern``: cohere2 only,
    None (the converter: no key), "array" (bool per layer from layer_types) or "int" (from
    sliding_window_pattern). ``extra_kv`` {key: (value, GGUFValueType)} and ``drop_kv`` (keys) make
    broken files for the error tests."""
    import gguf
    from gguf import GGMLQuantizationType as T
    model_type = config["model_type"]
    arch = ARCH.get(model_type, model_type)
    w = gguf.GGUFWriter(str(out), arch=arch, split_max_tensors=split_max_tensors)
    kv = _metadata(config, arch, pattern)
    kv["general.file_type"] = (FILE_TYPES.get(qtype, 1), gguf.GGUFValueType.UINT32)
    for key, (value, vtype) in {**kv, **(extra_kv or {})}.items():
        if vtype is gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    if tokenizer_dir is not None:
        _add_vocabulary(w, tokenizer_dir, config)
    # gguf-py SpecialVocab falls back to config.json's ids (_try_load_from_config_json)
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("pad_token_id", w.add_pad_token_id)):
        if isinstance(config.get(key), int):
            add(config[key])
    for key in drop_kv:
        w.kv_data[0].pop(key, None)
    n_layers = config["num_hidden_layers"]
    items = _fused(tensors, config) if fuse_qkv else dict(tensors)
    for hf_name, data in items.items():
        name = hf_name if hf_name.startswith("blk.") else gguf_name(hf_name, arch, n_layers)
        if raw and hf_name in raw:
            blocks, t = raw[hf_name]
            w.add_tensor(name, blocks, raw_dtype=T[t])
            continue
        t = "F32" if data.ndim <= 1 or name.endswith("_norm.weight") else (types or {}).get(hf_name, qtype)
        packed = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), T[t])
        w.add_tensor(name, packed, raw_dtype=T[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return w.format_shard_names(Path(out))


def _metadata(config: dict, arch: str, pattern: str | None) -> dict:
    import gguf
    V = gguf.GGUFValueType
    c = config
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    theta = rope.get("rope_theta", c.get("rope_theta"))
    kv = {
        f"{arch}.block_count": (c["num_hidden_layers"], V.UINT32),
        f"{arch}.context_length": (c.get("model_max_length", c["max_position_embeddings"]), V.UINT32),
        f"{arch}.embedding_length": (c["hidden_size"], V.UINT32),
        f"{arch}.feed_forward_length": (c["intermediate_size"], V.UINT32),
        f"{arch}.attention.head_count": (c["num_attention_heads"], V.UINT32),
        f"{arch}.attention.head_count_kv": (c.get("num_key_value_heads") or c["num_attention_heads"], V.UINT32),
        f"{arch}.attention.layer_norm_epsilon": (c["layer_norm_eps"], V.FLOAT32),
        f"{arch}.logit_scale": (c["logit_scale"], V.FLOAT32),
    }
    if theta is not None:
        kv[f"{arch}.rope.freq_base"] = (theta, V.FLOAT32)
    kind = rope.get("rope_type", rope.get("type"))
    if kind == "linear":  # TextModel.set_gguf_parameters; command_r.py then overwrites the type with none
        kv[f"{arch}.rope.scaling.factor"] = (rope["factor"], V.FLOAT32)
    elif kind not in (None, "default"):
        kv[f"{arch}.rope.scaling.type"] = (kind, V.STRING)
        kv[f"{arch}.rope.scaling.factor"] = (rope["factor"], V.FLOAT32)
    if kind in (None, "default", "linear"):
        kv[f"{arch}.rope.scaling.type"] = ("none", V.STRING)
    if c.get("head_dim") is not None:
        kv[f"{arch}.attention.key_length"] = (c["head_dim"], V.UINT32)
        kv[f"{arch}.attention.value_length"] = (c["head_dim"], V.UINT32)
    if arch == "cohere2":
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        kv[f"{arch}.attention.sliding_window"] = (c["sliding_window"], V.UINT32)
        kv[f"{arch}.vocab_size"] = (c["vocab_size"], V.UINT32)
        kv[f"{arch}.rope.dimension_count"] = (head_dim, V.UINT32)
        n = c.get("sliding_window_pattern", 4)  # transformers 4.x: layer i is full iff (i + 1) % n == 0
        layer_types = c.get("layer_types") or ["sliding_attention" if (i + 1) % n else "full_attention"
                                               for i in range(c["num_hidden_layers"])]
        if pattern == "array":
            kv[f"{arch}.attention.sliding_window_pattern"] = ([t == "sliding_attention" for t in layer_types], V.ARRAY)
        elif pattern == "int":
            kv[f"{arch}.attention.sliding_window_pattern"] = (n, V.UINT32)
    return kv


def _add_vocabulary(w, tokenizer_dir: Path, config: dict) -> None:
    voc = vocabulary(tokenizer_dir, config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("command-r")
    w.add_token_list(voc["tokens"])
    w.add_token_types(voc["types"])
    w.add_token_merges(voc["merges"])
    if voc["add_bos"] is not None:
        w.add_add_bos_token(voc["add_bos"])
    if voc["add_eos"] is not None:
        w.add_add_eos_token(voc["add_eos"])
    if voc["template"]:
        w.add_chat_template(voc["template"])


def _fused(tensors: dict, config: dict) -> dict:
    """``--fuse-qkv``: blk.N.attn_qkv = cat([q, k, v], dim 0) (conversion/base.py modify_tensors)."""
    out = {}
    for name, data in tensors.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            layer = name.split(".")[2]
            suffix = name.rsplit(".", 1)[1]
            parts = [tensors[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"blk.{layer}.attn_qkv.{suffix}"] = np.concatenate(parts, axis=0)
        else:
            out[name] = data
    return out


def convert_folder(folder: Path, out: Path, qtype: str = "F32", **kw) -> list[Path]:
    """A transformers checkpoint folder -> GGUF (see :func:`write_gguf` for the options)."""
    config, tensors = read_checkpoint(Path(folder))
    return write_gguf(Path(out), config, tensors, qtype, **kw)


# --- reading back with gguf-py: the oracle weights ------------------------------------------------------
def dequantized_weights(files: list[Path], config: dict) -> dict[str, np.ndarray]:
    """{transformers name: float32} of a GGUF model, dequantized by gguf-py (fused qkv split back)."""
    import gguf
    arch = ARCH[config["model_type"]]
    n_layers = config["num_hidden_layers"]
    reverse = {}
    for hf in _hf_names(config):
        try:
            reverse[gguf_name(hf, arch, n_layers)] = hf
        except ValueError:
            pass
    out = {}
    for f in files:
        for t in gguf.GGUFReader(str(f)).tensors:
            shape = tuple(int(n) for n in reversed(t.shape))
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(shape)
            if ".attn_qkv." in t.name:
                layer, suffix = t.name.split(".")[1], t.name.rsplit(".", 1)[1]
                dh = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
                q = config["num_attention_heads"] * dh
                k = (config.get("num_key_value_heads") or config["num_attention_heads"]) * dh
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), np.split(values, [q, q + k])):
                    out[f"model.layers.{layer}.self_attn.{proj}.{suffix}"] = part
            else:
                out[reverse[t.name]] = values
    return out


def _hf_names(config: dict) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names.append(p + "input_layernorm.weight")
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names += [p + f"self_attn.{proj}.weight", p + f"self_attn.{proj}.bias"]
        names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        names += [p + f"mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
    return names


# --- the committed fixtures --------------------------------------------------------------------------------
# name -> (model_type, config overrides, tensor type, write options)
FIXTURES = {
    "command-r-q8_0": ("cohere", dict(use_qk_norm=True, num_key_value_heads=2, tie_word_embeddings=False), "Q8_0",
                       {}),
    "cohere2-f16": ("cohere2", dict(num_hidden_layers=3, num_key_value_heads=2, sliding_window=4,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"]), "F16",
                    {"pattern": "array", "split_max_tensors": 20}),
}
PROMPT_LENGTH = 10


def make_fixture(name: str, out_dir: Path) -> dict:
    """Build a tiny transformers model with the tiny Command-R vocabulary, write it as GGUF, and record
    transformers' logits for the weights the GGUF stands for (gguf-py-dequantized)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tempfile

    import torch

    import oracle
    model_type, overrides, qtype, options = FIXTURES[name]
    voc = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {t["content"]: t["id"] for t in voc["added_tokens"]}
    overrides = dict(overrides, vocab_size=max(ids.values()) + 1, bos_token_id=ids["<BOS_TOKEN>"],
                     eos_token_id=ids["<|END_OF_TURN_TOKEN|>"], pad_token_id=ids["<PAD>"])
    model = oracle.build_model(model_type, overrides, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "config.json").read_text())
        files = convert_folder(Path(tmp), out_dir / f"{name}.gguf", qtype, tokenizer_dir=TOKENIZER_DIR, **options)
    (out_dir / f"{name}.config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = dequantized_weights(files, config)
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    rng = np.random.default_rng(SEED)
    input_ids = rng.integers(13, 480, size=(1, PROMPT_LENGTH))
    input_ids[0, 0] = ids["<BOS_TOKEN>"]
    logits = oracle.hf_forward(model, input_ids).logits.numpy().astype(np.float32)
    np.savez_compressed(out_dir / f"{name}.expected.npz", input_ids=input_ids, logits=logits)
    print(f"{name}: {[f.name for f in files]}, logits {logits.shape}, max |logit| {np.abs(logits).max():.3f}")
    return {"model_type": model_type, "overrides": overrides, "tensor_type": qtype, "options": options,
            "files": [f.name for f in files]}


def versions() -> dict:
    from importlib.metadata import version
    out = {"numpy": np.__version__, "python": sys.version.split()[0]}
    for pkg in ("gguf", "torch", "transformers", "safetensors"):
        out[pkg] = version(pkg)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "gguf"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.gguf"):
        old.unlink()
    cases = {name: make_fixture(name, out) for name in FIXTURES}
    prov = {"tool": "tools/make_gguf_fixtures.py", "seed": SEED, "versions": versions(),
            "tokenizer": str(TOKENIZER_DIR.relative_to(ROOT)), "cases": cases,
            "writer_checked_against": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python 0.3.36 tree): byte-identical "
                                      "tensors and metadata on tiny cohere/cohere2 models (see the module docstring)",
            "weights": "oracle.build_model (tools/oracle.py redraw_: matrices N(0, 0.15), norms 1 + U(-0.1, 0.1)); "
                       "expected logits: transformers on the gguf-py-dequantized GGUF weights"}
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")


if __name__ == "__main__":
    main()
