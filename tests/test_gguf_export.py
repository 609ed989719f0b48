"""`pycohere convert` -> GGUF, on tiny Cohere / Cohere2 models and the bundled demo model.

Oracles (nothing expected is computed by pycohere's own exporter):
* gguf-py (the PyPI ``gguf`` package, llama.cpp's Python library) reads every file
  (``GGUFReader``); its ``quants.quantize`` gives the expected bytes of every tensor, including
  the converter's F16 fallback on its ``QuantError``; its ``TensorNameMap`` gives the names.
* the expected metadata is a file written by gguf-py's ``GGUFWriter`` driven by the calls llama.cpp's
  converter makes (conversion/base.py ``TextModel.set_gguf_parameters`` and ``_set_vocab_gpt2``,
  conversion/command_r.py, ``SpecialVocab.add_to_gguf``) on the hparams of transformers'
  ``AutoConfig`` and the tokens of transformers' ``AutoTokenizer`` (``get_vocab_base``, transcribed).
* the vocabulary round trip: ``CohereTokenizer.from_pretrained(out.gguf)`` encodes as the source's.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import pycohere
from helpers import run_cli_with_file_size_limit, write_chat_model, write_checkpoint
from pycohere.cli import main
from pycohere.errors import CheckpointError, TokenizerError, UnsupportedFormatError
from pycohere.export.gguf import convert_to_gguf
from pycohere.io.files import umask
from pycohere.text.tokenizer import CohereTokenizer
from pycohere.io.safetensors import Checkpoint
from pycohere.io.dtypes import widen

gguf = pytest.importorskip("gguf", reason="the gguf package (oracle) is not installed: pip install gguf")
QT = gguf.GGMLQuantizationType

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
QTYPE = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}
FTYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
         "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
         "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
DIMS = dict(hidden_size=64, intermediate_size=96)
TEXTS = ["Hello world! 123 🦙 你好", "  two  spaces\tand\nnewlines 3.14159",
         "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Äpfel<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
         "<BOS_TOKEN>text with <PAD> inside", ""]


def chat_model(folder, model_type="cohere", vocab_size=None, **overrides) -> Path:
    """A tiny random model with the committed tiny Command-R tokenizer (optionally a larger
    vocab_size than the tokenizer: the GGUF then has [PADi] tokens)."""
    folder = write_chat_model(folder, model_type, **overrides)
    if vocab_size:
        cfg = json.loads((folder / "config.json").read_text())
        ids = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        write_checkpoint(folder, model_type, vocab_size=vocab_size, **ids, **overrides)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_sources")
    return {
        # rows of 80 values (down_proj) are not whole 32-blocks: the F16 fallback; 8 [PADi] tokens
        "cohere": chat_model(root / "cohere", "cohere", vocab_size=493, hidden_size=64, intermediate_size=80),
        "cohere_qk": chat_model(root / "cohere_qk", "cohere", use_qk_norm=True, storage="BF16", **DIMS),
        "cohere2": chat_model(root / "cohere2", "cohere2", num_hidden_layers=4, sliding_window=8, storage="F16",
                              **DIMS),
        # a 4.x int pattern (S, F, S): not llama.cpp's default, written as the per-layer bool array
        "cohere2_pattern": chat_model(root / "cohere2_pattern", "cohere2", num_hidden_layers=3, sliding_window=5,
                                      sliding_window_pattern=2, **DIMS),
        "demo": Path(pycohere.DEMO_MODEL),
    }


# --- oracles ---------------------------------------------------------------------------------------
def source_floats(folder: Path) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(folder)
    return {name: widen(ref.array, ref.dtype, np.float32) for name, ref in ckpt.tensors.items()}


def converter_vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """conversion/base.py TextModel.get_vocab_base and does_token_look_special, transcribed, on
    transformers' AutoTokenizer."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reverse_vocab = {id_: tok for tok, id_ in tokenizer.vocab.items()}
    added_vocab = tokenizer.get_added_vocab()
    added_tokens_decoder = tokenizer.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            if not added_tokens_decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            looks_special = (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
                             or (token.startswith("<|") and token.endswith("|>"))
                             or (token.startswith("<｜") and token.endswith("｜>"))
                             or (token.startswith("<unused") and token.endswith(">")))
            if added_tokens_decoder[i].special or looks_special:
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, toktypes


def converter_metadata(path: Path, folder: Path, ftype: str, n_params: int) -> Path:
    """A metadata-only GGUF written by gguf-py with the calls of convert_hf_to_gguf.py for
    CohereForCausalLM / Cohere2ForCausalLM (ModelBase.prepare_metadata, set_gguf_parameters, set_vocab)."""
    from transformers import AutoConfig
    hp = AutoConfig.from_pretrained(folder).to_dict()
    arch = {"cohere": "command-r", "cohere2": "cohere2"}[hp["model_type"]]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    gen = json.loads((folder / "generation_config.json").read_text()) if (folder / "generation_config.json").exists() else {}
    if "top_k" in gen:
        w.add_sampling_top_k(gen["top_k"])
    if "top_p" in gen:
        w.add_sampling_top_p(gen["top_p"])
    if "temperature" in gen:
        w.add_sampling_temp(gen["temperature"])
    w.add_name(folder.name)
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    w.add_block_count(hp["num_hidden_layers"])
    ctx_keys = ["model_max_length", "max_position_embeddings"] if arch == "command-r" else ["max_position_embeddings"]
    w.add_context_length(next(hp[k] for k in ctx_keys if k in hp))
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(hp["rope_parameters"]["rope_theta"])
    w.add_layer_norm_eps(hp["layer_norm_eps"])
    if hp.get("head_dim") is not None:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    w.add_file_type(FTYPE[ftype])
    w.add_logit_scale(hp["logit_scale"])
    if arch == "cohere2":
        w.add_sliding_window(hp["sliding_window"])
        w.add_vocab_size(hp["vocab_size"])
        w.add_rope_dimension_count(hp["hidden_size"] // hp["num_attention_heads"])  # rotary_pct 1.0
        sliding = [t == "sliding_attention" for t in hp["layer_types"]]
        if sliding != [i % 4 < 3 for i in range(len(sliding))]:
            # pycohere's one addition: the dense-Cohere2 converter writes no pattern (llama.cpp then
            # assumes S,S,S,F); the per-layer array is what llama.cpp's load_swa_pattern reads first.
            w.add_sliding_window_pattern(sliding)
    w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, toktypes = converter_vocab(folder, hp["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("command-r")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(w, quiet=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def fields(path: Path) -> dict:
    out = {}
    for key, field in gguf.GGUFReader(str(path)).fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if key == "tokenizer.chat_templates":  # gguf-py builds this list from a set
            value = sorted(value)
        out[key] = ([t.name for t in field.types], value)
    return out


def expected_tensors(folder: Path, floats: dict, ftype: str, embedding=None) -> dict:
    """{gguf name: (ggml type, ne, bytes)}: gguf-py's names and quantization of the float weights,
    with the type rules of prepare_tensors (1-D and *_norm -> F32, QuantError -> F16) and q4_0's
    embedding choice (Q8_0, see pycohere.gguf_export)."""
    cfg = json.loads((folder / "config.json").read_text())
    arch = gguf.MODEL_ARCH.COMMAND_R if cfg["model_type"] == "cohere" else gguf.MODEL_ARCH.COHERE2
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    out = {}
    for hf_name, w in floats.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if w.ndim <= 1 or name.endswith("_norm.weight"):
            qtype = QT.F32
        elif name == "token_embd.weight":
            qtype = QTYPE[embedding or ("q8_0" if ftype == "q4_0" else ftype)]
        else:
            qtype = QTYPE[ftype]
        try:
            data = q4_0_bytes(w) if qtype == QT.Q4_0 else gguf.quants.quantize(w, qtype)
        except gguf.QuantError:
            qtype, data = QT.F16, gguf.quants.quantize(w, QT.F16)
        out[name] = (qtype, list(reversed(w.shape)), data.tobytes())
    return out


# llama.cpp 0.3.36's own quantizer (llama_model_quantize, Q4_0 --pure, on an F32 GGUF of bf16-valued
# weights) wrote exactly gguf-py's bytes on 29 of 29 tensors: ggml rounds x*id and then + 8.5f in
# float32 (two roundings), as gguf-py and pycohere.quant.schemes.Q4_0 do; exact ties are common in
# bf16 weights, so test_q4_0_ties_match_llama_cpp checks them on such a model.
def q4_0_bytes(w: np.ndarray) -> np.ndarray:
    return gguf.quants.quantize(w, QT.Q4_0)


def check_tensors(path: Path, expected: dict) -> None:
    reader = gguf.GGUFReader(str(path))
    got = {t.name: t for t in reader.tensors}
    assert sorted(got) == sorted(expected)
    for name, (qtype, ne, data) in expected.items():
        t = got[name]
        assert (t.tensor_type, [int(d) for d in t.shape]) == (qtype, ne), name
        assert np.asarray(t.data).tobytes() == data, name


def convert_quietly(src, dst, ftype, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the llama.cpp load note (tested below)
        return convert_to_gguf(src, dst, type=ftype, **kwargs)


# --- every model x every type ---------------------------------------------------------------------
@pytest.mark.parametrize("ftype", TYPES)
@pytest.mark.parametrize("model", ["cohere", "cohere_qk", "cohere2", "cohere2_pattern", "demo"])
def test_keys_tensors_and_bytes_match_the_converter(models, model, ftype, tmp_path):
    pytest.importorskip("transformers")
    src = models[model]
    out = convert_quietly(src, tmp_path / f"{model}.gguf", ftype, name=src.name)
    expected = expected_tensors(src, source_floats(src), ftype)
    check_tensors(out, expected)
    n_params = sum(math.prod(ne) for _, ne, _ in expected.values())
    oracle = converter_metadata(tmp_path / "oracle.gguf", src, ftype, n_params)
    assert fields(out) == fields(oracle)


def test_vocabulary_round_trips_through_the_gguf(models, tmp_path):
    for model in ("cohere", "cohere2", "demo"):
        src = models[model]
        out = convert_quietly(src, tmp_path / f"{model}.gguf", "q8_0")
        ours, theirs = CohereTokenizer.from_pretrained(out), CohereTokenizer.from_pretrained(src)
        for text in TEXTS:
            assert ours.encode(text) == theirs.encode(text), (model, text)
            assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text))
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "add_bos_token", "add_eos_token"):
            assert getattr(ours, attr) == getattr(theirs, attr), (model, attr)
        assert ours.chat_template == theirs.chat_template
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 42!"}]
        assert ours.apply_chat_template(chat, add_generation_prompt=True) == \
            theirs.apply_chat_template(chat, add_generation_prompt=True)
    padded = CohereTokenizer.from_pretrained(tmp_path / "cohere.gguf")
    assert len(padded) == 493 and padded.convert_ids_to_tokens(492) == "[PAD492]"


def test_token_types_follow_the_converter(models, tmp_path):
    # tiny tokenizer: <|START_OF_TURN_TOKEN|> is an added token with special=False; the converter
    # marks it CONTROL because it looks special (<|...|>); plain BPE tokens are NORMAL, padding UNUSED.
    out = convert_quietly(models["cohere"], tmp_path / "c.gguf", "f16")
    meta = gguf.GGUFReader(str(out)).fields
    tokens = meta["tokenizer.ggml.tokens"].contents()
    types = dict(zip(tokens, meta["tokenizer.ggml.token_type"].contents()))
    assert types["<|START_OF_TURN_TOKEN|>"] == types["<BOS_TOKEN>"] == gguf.TokenType.CONTROL
    assert types["[PAD490]"] == gguf.TokenType.UNUSED and types["Ġthe"] == gguf.TokenType.NORMAL
    named = {n: meta[f"tokenizer.chat_template.{n}"].contents() for n in meta["tokenizer.chat_templates"].contents()}
    source = json.loads((models["cohere"] / "tokenizer_config.json").read_text())["chat_template"]
    assert named == {t["name"]: t["template"] for t in source if t["name"] != "default"}


def test_q4_0_ties_match_llama_cpp(models, tmp_path):
    src = models["cohere_qk"]  # bf16 weights: many exact ties
    out = convert_quietly(src, tmp_path / "m.gguf", "q4_0")
    floats = source_floats(src)
    reader = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    w = floats["model.layers.0.mlp.up_proj.weight"]
    assert np.asarray(reader["blk.0.ffn_up.weight"].data).tobytes() == gguf.quants.quantize(w, QT.Q4_0).tobytes()


# --- what llama.cpp does and does not load --------------------------------------------------------
def test_q4_0_embedding_choices(models, tmp_path):
    src = models["cohere2"]
    floats = source_floats(src)
    pure = convert_to_gguf(src, tmp_path / "pure.gguf", type="q4_0", token_embedding_type="q4_0")
    check_tensors(pure, expected_tensors(src, floats, "q4_0", embedding="q4_0"))
    f16_embedding = convert_to_gguf(src, tmp_path / "e.gguf", type="q4_0", token_embedding_type="f16")
    check_tensors(f16_embedding, expected_tensors(src, floats, "q4_0", embedding="f16"))


def test_layer_pattern_key_only_when_not_the_default(models, tmp_path):
    default = fields(convert_quietly(models["cohere2"], tmp_path / "a.gguf", "f16"))
    assert "cohere2.attention.sliding_window_pattern" not in default
    assert default["cohere2.attention.sliding_window"] == (["UINT32"], 8)
    custom = fields(convert_quietly(models["cohere2_pattern"], tmp_path / "b.gguf", "f16"))
    # sliding_window_pattern=2 (transformers 4.x): layer i is full iff (i + 1) % 2 == 0
    assert custom["cohere2.attention.sliding_window_pattern"] == (["ARRAY", "BOOL"], [True, False, True])


def test_untied_head_is_refused_unless_equal_and_small_qk_norm_models_warn(models, tmp_path):
    src = chat_model(tmp_path / "untied", "cohere", tie_word_embeddings=False, **DIMS)
    with pytest.raises(UnsupportedFormatError, match="lm_head.weight differs from the token embedding"):
        convert_to_gguf(src, tmp_path / "untied.gguf", type="q8_0")
    assert not (tmp_path / "untied.gguf").exists()
    # the same model with lm_head == embedding is written tied: llama.cpp loads it
    tensors = {k: widen(v.array, v.dtype) for k, v in Checkpoint(src).tensors.items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    write_checkpoint(src, "cohere", tensors=tensors, vocab_size=485, tie_word_embeddings=False, bos_token_id=5,
                     eos_token_id=481, pad_token_id=0, **DIMS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert_to_gguf(src, tmp_path / "tied.gguf", type="q8_0")
    del tensors["lm_head.weight"]
    check_tensors(out, expected_tensors(src, tensors, "q8_0"))
    with pytest.warns(UserWarning, match="q/k-norm weights in a 2-layer command-r model"):
        convert_to_gguf(models["cohere_qk"], tmp_path / "qk.gguf", type="f16")


def test_attention_biases(tmp_path):
    src = write_chat_model(tmp_path / "bias", "cohere", attention_bias=True, **DIMS)
    with pytest.warns(UserWarning, match="attn_output biases"):
        out = convert_to_gguf(src, tmp_path / "bias.gguf", type="f32")
    check_tensors(out, expected_tensors(src, source_floats(src), "f32"))
    # zero o_proj biases are dropped (llama.cpp reads none), so the file loads
    tensors = {k: widen(v.array, v.dtype) for k, v in Checkpoint(src).tensors.items()}
    for k in tensors:
        if k.endswith("o_proj.bias"):
            tensors[k] = np.zeros_like(tensors[k])
    write_checkpoint(src, "cohere", tensors=tensors, vocab_size=485, attention_bias=True, bos_token_id=5,
                     eos_token_id=481, pad_token_id=0, **DIMS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert_to_gguf(src, tmp_path / "zero.gguf", type="f32")
    names = {t.name for t in gguf.GGUFReader(str(out)).tensors}
    assert "blk.0.attn_q.bias" in names and "blk.0.attn_output.bias" not in names
    # cohere2: zero biases dropped (as Cohere2Model.modify_tensors), non-zero ones refused
    c2 = write_chat_model(tmp_path / "c2", "cohere2", attention_bias=True, **DIMS)
    with pytest.raises(UnsupportedFormatError, match=r"model.layers.0.self_attn.q_proj.bias is not zero"):
        convert_to_gguf(c2, tmp_path / "c2.gguf", type="f32")
    assert not (tmp_path / "c2.gguf").exists()


@pytest.mark.parametrize("overrides,match", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope scaling"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), "rope scaling"),
    (dict(hidden_act="gelu"), "SiLU-gated"),
])
def test_unsupported_configs_are_refused(tmp_path, overrides, match):
    src = write_chat_model(tmp_path / "m", "cohere", **overrides)
    with pytest.raises(UnsupportedFormatError, match=match):
        convert_to_gguf(src, tmp_path / "out" / "m.gguf", type="f16")
    assert not (tmp_path / "out").exists()


def test_other_tokenizer_pipelines_and_missing_tokenizers_are_refused(tmp_path):
    src = write_chat_model(tmp_path / "m", "cohere")
    data = json.loads((src / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    (src / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UnsupportedFormatError, match="not Command-R's tokenizer pipeline"):
        convert_to_gguf(src, tmp_path / "m.gguf")
    bare = write_checkpoint(tmp_path / "bare", "cohere")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        convert_to_gguf(bare, tmp_path / "bare.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "m"]


# --- quantized sources -------------------------------------------------------------------------------
def test_quantized_sources_copy_or_requantize(models, tmp_path):
    src = models["cohere2"]
    floats = source_floats(src)
    q8 = pycohere.quantize_checkpoint(src, tmp_path / "q8", "q8_0")
    out = convert_to_gguf(q8, tmp_path / "q8.gguf", type="q8_0")
    check_tensors(out, expected_tensors(src, floats, "q8_0"))  # = gguf-py's Q8_0 of the float weights
    stored = Checkpoint(q8)
    reader = gguf.GGUFReader(str(out))
    for t in reader.tensors:
        if t.name == "blk.1.ffn_down.weight":
            assert np.asarray(t.data).tobytes() == stored["model.layers.1.mlp.down_proj.weight.qweight"].array.tobytes()
    # a q4_0 checkpoint keeps its q4_0 embedding (no re-rounding to Q8_0)
    q4 = pycohere.quantize_checkpoint(src, tmp_path / "q4", "q4_0")
    out = convert_to_gguf(q4, tmp_path / "q4.gguf", type="q4_0")
    check_tensors(out, expected_tensors(src, floats, "q4_0", embedding="q4_0"))
    # other schemes and types: dequantized by pycohere's spec, then converted like float weights
    int8 = pycohere.quantize_checkpoint(src, tmp_path / "int8", "int8")
    model = pycohere.AutoModelForCausalLM.from_pretrained(int8, backend="numpy")
    deq = dict(floats)
    for name in floats:
        if name.endswith("_proj.weight") or name == "model.embed_tokens.weight":
            deq[name] = model.model.checkpoint.matrix(name, np.float32, "numpy").dequantize()
    for ftype in ("q4_0", "f32"):
        out = convert_to_gguf(int8, tmp_path / f"int8-{ftype}.gguf", type=ftype)
        check_tensors(out, expected_tensors(src, deq, ftype))
    # q8_0 -> f16: the stored q8_0 values (as gguf-py dequantizes them) rounded to float16
    q8_as_f16 = convert_to_gguf(q8, tmp_path / "q8-f16.gguf", type="f16")
    q8_values = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
                 for t in gguf.GGUFReader(str(tmp_path / "q8.gguf")).tensors}
    for t in gguf.GGUFReader(str(q8_as_f16)).tensors:
        if t.tensor_type == QT.F16:
            assert np.asarray(t.data).tobytes() == q8_values[t.name].astype(np.float16).tobytes(), t.name


def small_tokenizer(folder: Path, n: int) -> None:
    """A Command-R-pipeline tokenizer of exactly ``n`` tokens (HF-quantized fixtures have 97)."""
    from tokenizers import AddedToken
    from pycohere.text.tokenizer import cohere_backend
    specials = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"]
    chars = [chr(c) for c in range(33, 33 + n - len(specials) - 2)] + ["Ġ", "Ġt"]
    backend = cohere_backend({t: i for i, t in enumerate(specials + chars)}, [("Ġ", "t")])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>",
         "add_bos_token": True, "add_eos_token": False}))


@pytest.mark.parametrize("fixture", ["awq-gemm", "gptq-v1-act-order", "bnb-nf4-dq-bf16", "bnb-int8"])
def test_hf_quantized_sources(fixture, tmp_path):
    from conftest import DATA
    from pycohere.checkpoints import load_config, open_weights
    src = tmp_path / fixture
    shutil.copytree(DATA / "hf_quant" / fixture, src)
    config = load_config(src)
    small_tokenizer(src, config.vocab_size)
    # the oracle for the weights: the source's own dequantization (tested against AutoAWQ / GPTQ /
    # bitsandbytes in their own test modules); norms as stored
    source = open_weights(src, config)
    floats = {n: (source.matrix(n, np.float32, "numpy").dequantize() if len(shape) == 2 and "norm" not in n
                  else source.vector(n, np.float32)) for n, shape in source.shapes.items()}
    for ftype in ("q4_0", "f16"):
        out = convert_to_gguf(src, tmp_path / f"{ftype}.gguf", type=ftype)
        check_tensors(out, expected_tensors(src, floats, ftype))
    text = "!#$% t tt"
    assert CohereTokenizer.from_pretrained(out).encode(text) == CohereTokenizer.from_pretrained(src).encode(text)


# --- files on disk --------------------------------------------------------------------------------
def test_cli_existing_destination_and_force(models, tmp_path, capsys):
    src = models["cohere2"]
    dst = tmp_path / "m.gguf"
    assert main(["convert", str(src), str(dst), "--type", "q8_0", "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    before = dst.read_bytes()
    assert main(["convert", str(src), str(dst), "--type", "f16", "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and dst.read_bytes() == before
    assert main(["convert", str(src), str(dst), "--type", "f16", "--force", "-q"]) == 0
    assert gguf.GGUFReader(str(dst)).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert oct(dst.stat().st_mode & 0o777) == oct(0o666 & ~umask())
    assert main(["convert", str(src), str(tmp_path / "x.gguf"), "--type", "q5_k", "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown GGUF type 'q5_k'" in err and "q4_0" in err
    assert main(["convert", str(src), str(tmp_path / "x.bin"), "-q"]) == 2
    assert "must be a file name ending in .gguf" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path), "-q"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert main(["convert", str(models["cohere_qk"]), str(tmp_path / "qk.gguf"), "-q"]) == 0
    assert "note: qk.gguf follows llama.cpp's converter" in capsys.readouterr().err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_failures_leave_nothing(models, tmp_path, monkeypatch):
    src = models["cohere2"]
    calls = []
    real = os.pwrite

    def failing(fd, data, pos):
        calls.append(pos)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, pos)
    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(CheckpointError, match="the disk is full.*nothing was written"):
        convert_to_gguf(src, tmp_path / "deep" / "er" / "m.gguf", type="q4_0")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []  # not even the parent folders it created

    import pycohere.export.gguf as export
    real_write = export._write_tensor

    def interrupted(writer, source, t, advance):
        if t.gguf_name.startswith("blk.1"):
            raise KeyboardInterrupt
        real_write(writer, source, t, advance)
    monkeypatch.setattr(export, "_write_tensor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(src, tmp_path / "m.gguf", type="q8_0")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="could not write the GGUF file"):
        convert_to_gguf(src, blocker / "m.gguf", type="f16")  # the parent is a file
    assert leftovers(tmp_path) == ["file"]


def test_file_size_limit_in_a_subprocess_leaves_nothing(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli_with_file_size_limit(100_000, "convert", str(models["cohere2"]), str(out / "m.gguf"), "--type", "f32", "-q")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "file size limit" in lines[0] and "nothing was written" in lines[0]
    assert list(out.iterdir()) == []


def test_streaming_writer_api(tmp_path):
    """GGUFWriter streaming: declared tensors written in chunks, out of order, read back by gguf-py."""
    from pycohere.io.gguf import GGUFWriter
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 64)).astype(np.float32)
    q = gguf.quants.quantize(a, QT.Q4_0)
    w = GGUFWriter(tmp_path / "s.gguf")
    w.add("general.architecture", "command-r")
    w.add_tensor_info("q", a.shape, "Q4_0")
    w.add_tensor_info("f", a.shape, "F32")
    w.open()
    w.write_tensor_data("f", a[3:], 3)
    w.write_tensor_data("q", q[:2], 0)
    w.write_tensor_data("f", a[:3], 0)
    with pytest.raises(ValueError, match="cannot write float64"):
        w.write_tensor_data("q", a[2:].astype(np.float64), 2)
    w.write_tensor_data("q", q[2:], 2)
    w.close()
    r = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "s.gguf")).tensors}
    assert np.array_equal(r["f"].data, a) and np.asarray(r["q"].data).tobytes() == q.tobytes()
    short = GGUFWriter(tmp_path / "short.gguf")
    short.add_tensor_info("f", (2, 32), "F32")
    short.open()
    short.write_tensor_data("f", np.zeros((1, 32), np.float32))
    with pytest.raises(RuntimeError, match="not completely written"):
        short.close()


# --- the round trip through pycohere's GGUF loader ------------------------------------------------
def _logits(model, ids):
    return model(ids).logits


@pytest.mark.parametrize("ftype", ["f32", "q8_0", "q4_0"])
def test_round_trip_pycohere_gguf_pycohere(models, ftype, tmp_path):
    from pycohere.quant import QuantizedWeight, quantize
    src = models["cohere2"]
    out = convert_to_gguf(src, tmp_path / "m.gguf", type=ftype)
    ids = np.array([[5, 17, 250, 3, 99, 481, 8, 42, 7]])
    loaded = pycohere.AutoModelForCausalLM.from_pretrained(out, backend="numpy")
    if ftype == "f32":
        ref = pycohere.AutoModelForCausalLM.from_pretrained(src, backend="numpy")
    else:
        # the file's choice: every *_proj in the type, the embedding (= tied head) in Q8_0
        ref = pycohere.AutoModelForCausalLM.from_pretrained(
            src, backend="numpy", quantization_config=pycohere.QuantizationConfig(ftype, keep_embeddings=True))
        embed = QuantizedWeight.from_tensor(quantize(source_floats(src)["model.embed_tokens.weight"], "q8_0"))
        ref.params["embed_tokens"] = ref.params["lm_head"] = embed
    np.testing.assert_allclose(_logits(loaded, ids), _logits(ref, ids), rtol=1e-5, atol=1e-6)
    if ftype == "q4_0":
        pure = convert_to_gguf(src, tmp_path / "pure.gguf", type="q4_0", token_embedding_type="q4_0")
        ref = pycohere.AutoModelForCausalLM.from_pretrained(
            src, backend="numpy", quantization_config=pycohere.QuantizationConfig("q4_0"))
        loaded = pycohere.AutoModelForCausalLM.from_pretrained(pure, backend="numpy")
        np.testing.assert_allclose(_logits(loaded, ids), _logits(ref, ids), rtol=1e-5, atol=1e-6)


def test_round_trip_of_the_demo_model_and_gguf_sources(models, tmp_path):
    demo = models["demo"]
    out = convert_quietly(demo, tmp_path / "demo.gguf", "bf16")  # bf16 weights copied exactly
    ids = np.array([[5, 300, 1200, 17, 4000, 9]])
    np.testing.assert_allclose(
        _logits(pycohere.AutoModelForCausalLM.from_pretrained(out, backend="numpy"), ids),
        _logits(pycohere.AutoModelForCausalLM.from_pretrained(demo, backend="numpy"), ids), rtol=1e-5, atol=1e-6)
    # a GGUF source: same-type tensors are copied, the vocabulary and sampling keys carried over
    q8 = convert_quietly(demo, tmp_path / "q8.gguf", "q8_0")
    again = convert_quietly(q8, tmp_path / "again.gguf", "q8_0")
    a, b = gguf.GGUFReader(str(q8)), gguf.GGUFReader(str(again))
    assert [(t.name, np.asarray(t.data).tobytes()) for t in a.tensors] == \
        [(t.name, np.asarray(t.data).tobytes()) for t in b.tensors]
    # a GGUF q4_0 source to f32: gguf-py's dequantization of its blocks
    q4 = convert_quietly(demo, tmp_path / "q4.gguf", "q4_0")
    f32 = convert_quietly(q4, tmp_path / "q4-f32.gguf", "f32")
    stored = {t.name: t for t in gguf.GGUFReader(str(q4)).tensors}
    for t in gguf.GGUFReader(str(f32)).tensors:
        assert t.tensor_type == QT.F32
        want = gguf.quants.dequantize(np.asarray(stored[t.name].data), stored[t.name].tensor_type)
        assert np.array_equal(np.asarray(t.data).reshape(want.shape), want), t.name
    fa, fb = fields(q8), fields(again)
    assert {k: v for k, v in fa.items() if k.startswith(("tokenizer.", "general.sampling."))} == \
        {k: v for k, v in fb.items() if k.startswith(("tokenizer.", "general.sampling."))}


def test_a_float_gguf_source_is_streamed_with_pread(models, tmp_path, monkeypatch):
    """BF16 GGUF -> Q8_0 gives the bytes of BF16 safetensors -> Q8_0 (the same stored values), and the
    float rows come from GGUFSource.float_rows (os.pread), not from the memory map through
    Weight.rows: streaming a 200 GB file must not leave every page in the process's resident set."""
    from pycohere.spec import weights as T
    demo = models["demo"]
    bf16 = convert_quietly(demo, tmp_path / "bf16.gguf", "bf16")
    direct = convert_quietly(demo, tmp_path / "direct.gguf", "q8_0")

    def no_memmap_rows(self, *args, **kwargs):
        raise AssertionError("pycohere convert read a float GGUF tensor through the memory map")
    monkeypatch.setattr(T.DenseWeight, "rows", no_memmap_rows)
    via = convert_quietly(bf16, tmp_path / "via.gguf", "q8_0")
    a, b = gguf.GGUFReader(str(direct)), gguf.GGUFReader(str(via))
    assert [(t.name, t.tensor_type, np.asarray(t.data).tobytes()) for t in a.tensors] == \
        [(t.name, t.tensor_type, np.asarray(t.data).tobytes()) for t in b.tensors]
