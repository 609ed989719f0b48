"""CohereTokenizer tests.

Oracles: llama.cpp's 46 reference tokenizations of the real Command-R vocabulary (fetched from
the llama-cpp-python sdist by tools/fetch_llama_cpp_data.py), transformers' own documented ids,
and transformers' PreTrainedTokenizerFast / CohereTokenizer built from the same backend.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from pycohere.errors import CheckpointNotFoundError, TokenIdError, TokenizerError
from pycohere.io.gguf import GGUFReader, GGUFWriter, ValueType
from pycohere.text.tokenizer import CohereTokenizer, IncrementalDetokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tokenizer" / "tiny-command-r"


def _load_fetch_tool():
    spec = importlib.util.spec_from_file_location("fetch_llama_cpp_data", ROOT / "tools" / "fetch_llama_cpp_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_data() -> Path:
    tool = _load_fetch_tool()
    try:
        return tool.fetch()
    except tool.RegistryUnreachableError as exc:  # only a network failure may skip
        pytest.skip(f"PyPI unreachable, cannot fetch llama-cpp-python sdist: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="module")
def real(llama_data) -> CohereTokenizer:
    return CohereTokenizer.from_pretrained(llama_data / "ggml-vocab-command-r.gguf")


@pytest.fixture()
def tiny() -> CohereTokenizer:
    return CohereTokenizer.from_pretrained(TINY)


def _reference_cases(folder: Path) -> list[tuple[str, list[int]]]:
    # llama.cpp tests/test-tokenizer-0.py format: inputs separated by "\n__ggml_vocab_test__\n"
    # (the file ends with a separator), outputs one line of space-separated ids per input.
    inputs = (folder / "ggml-vocab-command-r.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    assert inputs[-1] == ""
    inputs = inputs[:-1]
    outputs = (folder / "ggml-vocab-command-r.gguf.out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(x) for x in line.split()]) for text, line in zip(inputs, outputs, strict=False)]


# --- the real Command-R vocabulary -------------------------------------------------------------
def test_llama_cpp_reference_tokenizations(real, llama_data):
    cases = _reference_cases(llama_data)
    assert len(cases) == 46
    mismatches = [(text, ids, real.encode(text, add_special_tokens=False))
                  for text, ids in cases if real.encode(text, add_special_tokens=False) != ids]
    assert not mismatches, mismatches[:3]


def test_reference_strings_round_trip(real, llama_data):
    for text, ids in _reference_cases(llama_data):
        assert real.decode(ids) == unicodedata.normalize("NFC", text)  # the normaliser is NFC


def test_transformers_documented_ids(real):
    # transformers' CohereTokenizerFast docstring: tokenizer.encode("Hello this is a test")
    assert real.encode("Hello this is a test") == [5, 28339, 2075, 1801, 1671, 3282]


def test_gguf_special_and_control_tokens(real, llama_data):
    meta = GGUFReader(llama_data / "ggml-vocab-command-r.gguf").metadata
    assert real.bos_token_id == meta["tokenizer.ggml.bos_token_id"] == 5
    assert real.eos_token_id == meta["tokenizer.ggml.eos_token_id"] == 255001
    assert real.pad_token_id == meta["tokenizer.ggml.padding_token_id"] == 0
    assert (real.bos_token, real.eos_token, real.pad_token) == ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<PAD>")
    assert real.add_bos_token is True and real.add_eos_token is False
    assert len(real) == real.vocab_size == 256000
    ids = real.encode("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>")
    assert ids == [5, 255000, 255006, real.encode("Hi", add_special_tokens=False)[0], 255001]
    # control tokens (type 3) are special and skipped; user-defined ones (type 4) are kept
    assert real.decode(ids, skip_special_tokens=True) == "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi"
    assert set(real.all_special_ids) == {5, 255001, 0, 1}
    assert real.convert_ids_to_tokens([5, 255007]) == ["<BOS_TOKEN>", "<|CHATBOT_TOKEN|>"]
    assert real.convert_tokens_to_ids("<|SYSTEM_TOKEN|>") == 255008
    assert real.get_vocab()["<|END_OF_TURN_TOKEN|>"] == 255001


def test_gguf_vocabulary_metadata(llama_data):
    # Counts from shared/reference/test-data.md (256000 tokens, 253333 merges); type counts and
    # first merges as gguf-py's GGUFReader reports them for this file (gguf-py takes ~30 s on it,
    # too slow to run here; tests/test_gguf.py compares the two readers on generated files).
    meta = GGUFReader(llama_data / "ggml-vocab-command-r.gguf").metadata
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "command-r"
    assert len(meta["tokenizer.ggml.tokens"]) == 256000
    assert len(meta["tokenizer.ggml.merges"]) == 253333
    assert meta["tokenizer.ggml.merges"][:3] == ["Ġ Ġ", "Ġ t", "e r"]
    types, counts = np.unique(meta["tokenizer.ggml.token_type"], return_counts=True)
    assert dict(zip(types.tolist(), counts.tolist())) == {1: 254992, 3: 9, 4: 999}
    assert meta["command-r.logit_scale"] == 0.0625


def test_streaming_multibyte_real_vocab(real):
    text = "Emoji 🦙🚀👍🏽 and CJK 你好世界, Ελληνικά, العربية"
    ids = real.encode(text, add_special_tokens=False)
    stream = real.decode_stream()
    deltas = [stream.step(i) for i in ids]
    deltas.append(stream.flush())
    assert "".join(deltas) == real.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    # the emoji are split over several byte-level tokens, so some steps must have held text back
    assert sum(d == "" for d in deltas[:-1]) > 0
    assert len(ids) > len(text.split())


# --- the tiny checked-in tokenizer (no download needed) ----------------------------------------
def test_from_pretrained_reads_config_and_special_map(tiny):
    assert tiny.padding_side == "left"
    assert tiny.add_bos_token and not tiny.add_eos_token
    assert tiny.bos_token == "<BOS_TOKEN>" and tiny.bos_token_id == 5
    assert tiny.eos_token == "<|END_OF_TURN_TOKEN|>" and tiny.eos_token_id == 481
    assert tiny.pad_token_id == 0 and tiny.unk_token is None
    assert tiny.use_default_system_prompt is False
    assert sorted(tiny.chat_template) == ["default", "rag", "tool_use"]
    assert tiny.vocab_size == 480 and len(tiny) == 485
    assert tiny.encode("Hello")[0] == 5
    assert tiny.encode("Hello", add_special_tokens=False)[0] != 5


def test_from_pretrained_accepts_tokenizer_json_path(tiny):
    direct = CohereTokenizer.from_pretrained(TINY / "tokenizer.json")
    assert direct.encode("Hello world 123") == tiny.encode("Hello world 123")


def test_add_bos_eos_setters_update_post_processor(tiny):
    base = tiny.encode("Hello world", add_special_tokens=False)
    tiny.add_eos_token = True
    assert tiny.encode("Hello world") == [5, *base, 481]
    tiny.add_bos_token = False
    assert tiny.encode("Hello world") == [*base, 481]
    assert tiny.build_inputs_with_special_tokens([7, 8], [9]) == [7, 8, 481, 9, 481]
    tiny.add_eos_token = False
    assert tiny.encode("Hello world") == base
    tiny.add_bos_token = True
    assert tiny("Hello world", "penguin")["input_ids"] == [5, *base, 5, *tiny.encode("penguin", add_special_tokens=False)]


def test_pair_helpers_hand_derived(tiny):
    # CohereTokenizerFast.build_inputs_with_special_tokens: <BOS> A <BOS> B (no EOS by default)
    assert tiny.build_inputs_with_special_tokens([10, 11], [12]) == [5, 10, 11, 5, 12]
    assert tiny.get_special_tokens_mask([10, 11], [12]) == [1, 0, 0, 1, 0]
    assert tiny.create_token_type_ids_from_sequences([10, 11], [12]) == [0, 0, 0, 1, 1]
    assert tiny.get_special_tokens_mask([5, 10, 481, 0], already_has_special_tokens=True) == [1, 0, 1, 1]
    with pytest.raises(TokenizerError):
        tiny.get_special_tokens_mask([5], [6], already_has_special_tokens=True)


def test_batch_left_padding_hand_derived(tiny):
    a = tiny.encode("Hello world! Hello this is a test")
    b = tiny.encode("Hi")
    enc = tiny(["Hello world! Hello this is a test", "Hi"], padding=True, return_tensors="np")
    n = len(a)
    assert enc["input_ids"].shape == (2, n) and enc["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(enc["input_ids"][1], [0] * (n - len(b)) + b)
    np.testing.assert_array_equal(enc.attention_mask[1], [0] * (n - len(b)) + [1] * len(b))
    right = tiny(["Hello world! Hello this is a test", "Hi"], padding=True, padding_side="right")
    assert right["input_ids"][1] == b + [0] * (n - len(b))
    with pytest.raises(TokenizerError, match="padding=True"):
        tiny(["a b c d", "a"], return_tensors="np")
    fixed = tiny(["Hi"], padding="max_length", max_length=6)
    assert fixed["input_ids"] == [[0] * (6 - len(b)) + b]
    cut = tiny("Hello world! Hello this is a test", truncation=True, max_length=4)
    assert cut["input_ids"] == a[:4]


def test_decode_and_errors_on_ids(tiny):
    ids = tiny.encode("<|START_OF_TURN_TOKEN|>Hello naïve café<|END_OF_TURN_TOKEN|>")
    assert tiny.decode(ids) == "<BOS_TOKEN><|START_OF_TURN_TOKEN|>Hello naïve café<|END_OF_TURN_TOKEN|>"
    assert tiny.decode(ids, skip_special_tokens=True) == "<|START_OF_TURN_TOKEN|>Hello naïve café"
    assert tiny.batch_decode([ids[:1], ids[1:2]]) == ["<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>"]
    assert tiny.decode(np.array(ids)) == tiny.decode(ids)
    with pytest.raises(TokenIdError, match="outside"):
        tiny.decode([1, len(tiny)])
    with pytest.raises(TokenIdError):
        tiny.decode([-1])
    with pytest.raises(TokenizerError):
        tiny.encode(123)


def test_streaming_detokenizer_tiny(tiny):
    text = "Emoji: 🦙 🚀 👍🏽 and CJK 你好世界 안녕하세요 <|END_OF_TURN_TOKEN|>"
    ids = tiny.encode(text)
    for skip in (False, True):
        stream = IncrementalDetokenizer(tiny, skip_special_tokens=skip)
        deltas = [stream.step(i) for i in ids] + [stream.flush()]
        assert "".join(deltas) == tiny.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in d for d in deltas)
    # an emoji cut after its first byte token: nothing is emitted until flush shows U+FFFD, as decode does
    emoji_ids = tiny.encode("🦙", add_special_tokens=False)
    assert len(emoji_ids) > 1
    stream = tiny.decode_stream()
    assert stream.step(emoji_ids[0]) == ""
    assert stream.flush() == tiny.decode(emoji_ids[:1]) and "\ufffd" in tiny.decode(emoji_ids[:1])
    # with a prompt: only the continuation is emitted
    prompt = tiny.encode("Hello world")
    stream = tiny.decode_stream(prompt_ids=prompt)
    cont = tiny.encode(" 你好", add_special_tokens=False)
    assert "".join(stream.step(i) for i in cont) + stream.flush() == " 你好"


def test_save_pretrained_round_trip(tiny, tmp_path):
    tiny.add_eos_token = True
    files = tiny.save_pretrained(tmp_path / "saved")
    assert sorted(Path(f).name for f in files) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    again = CohereTokenizer.from_pretrained(tmp_path / "saved")
    for text in ("Hello world 🦙", "<|START_OF_TURN_TOKEN|>x"):
        assert again.encode(text) == tiny.encode(text)
    assert again.add_eos_token is True and again.padding_side == "left"
    assert again.chat_template == tiny.chat_template
    vocab_files = tiny.save_vocabulary(tmp_path / "saved", filename_prefix="p")
    assert [Path(f).name for f in vocab_files] == ["p-vocab.json", "p-merges.txt"]
    vocab = json.loads(Path(vocab_files[0]).read_text(encoding="utf-8"))
    assert len(vocab) == tiny.vocab_size and vocab["<BOS_TOKEN>"] == 5


def test_gguf_vocab_built_from_tiny_tokenizer(tiny, tmp_path):
    """Write the tiny tokenizer's vocabulary as GGUF metadata (as llama.cpp's converter does) and
    rebuild it: the GGUF path must encode exactly like tokenizer.json."""
    data = json.loads((TINY / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {t["content"]: t["special"] for t in data["added_tokens"]}
    types = [(3 if specials[t] else 4) if t in specials else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    path = tmp_path / "tiny.gguf"
    w = GGUFWriter(path)
    w.add("tokenizer.ggml.model", "gpt2")
    w.add("tokenizer.ggml.pre", "command-r")
    w.add("tokenizer.ggml.tokens", tokens)
    w.add("tokenizer.ggml.token_type", np.array(types, np.int32))
    w.add("tokenizer.ggml.merges", merges)
    w.add("tokenizer.ggml.bos_token_id", 5, ValueType.UINT32)
    w.add("tokenizer.ggml.eos_token_id", vocab["<|END_OF_TURN_TOKEN|>"], ValueType.UINT32)
    w.add("tokenizer.ggml.padding_token_id", 0, ValueType.UINT32)
    w.write()
    from_gguf = CohereTokenizer.from_pretrained(path)
    for text in ("Hello world! 123 🦙 你好", "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Äpfel<|END_OF_TURN_TOKEN|>", ""):
        assert from_gguf.encode(text) == tiny.encode(text)
    assert from_gguf.eos_token == "<|END_OF_TURN_TOKEN|>" and from_gguf.pad_token == "<PAD>"


# --- errors ---------------------------------------------------------------------------------------
def test_missing_paths_raise_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        CohereTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointNotFoundError, match="no tokenizer.json"):
        CohereTokenizer.from_pretrained(tmp_path)


def test_malformed_files_raise_tokenizer_error(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(TINY, folder)
    (folder / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        CohereTokenizer.from_pretrained(folder)
    shutil.copy(TINY / "tokenizer_config.json", folder)
    (folder / "tokenizer.json").write_text('{"model": 3}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizers file"):
        CohereTokenizer.from_pretrained(folder)
    shutil.copy(TINY / "tokenizer.json", folder)
    config = json.loads((TINY / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = [{"name": "default"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match="chat_template entries"):
        CohereTokenizer.from_pretrained(folder)


def test_gguf_with_other_vocab_type_is_rejected(tmp_path):
    path = tmp_path / "llama.gguf"
    w = GGUFWriter(path)
    w.add("tokenizer.ggml.model", "gpt2")
    w.add("tokenizer.ggml.pre", "llama-bpe")
    w.add("tokenizer.ggml.tokens", ["a", "b"])
    w.add("tokenizer.ggml.merges", ["a b"])
    w.write()
    with pytest.raises(TokenizerError, match="pre='llama-bpe'"):
        CohereTokenizer.from_pretrained(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TokenizerError, match="truncated"):
        CohereTokenizer.from_pretrained(path)


# --- transformers as oracle -----------------------------------------------------------------------
TEXTS = ["Hello world! Hello this is a test", "Hi", "naïve café 🦙 123", "<|START_OF_TURN_TOKEN|>x<|END_OF_TURN_TOKEN|>"]


def _hf_twin(tok: CohereTokenizer, **kwargs):
    transformers = pytest.importorskip("transformers", reason="transformers (oracle) is not installed")
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())  # a copy: transformers mutates it
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token,
        unk_token=tok.unk_token, add_bos_token=tok.add_bos_token, add_eos_token=tok.add_eos_token,
        padding_side="left", **kwargs)


@pytest.mark.parametrize("add_eos", [False, True])
def test_matches_transformers_fast_tokenizer(tiny, add_eos):
    tiny.add_eos_token = add_eos
    hf = _hf_twin(tiny)
    for text in TEXTS:
        assert tiny.encode(text) == hf.encode(text)
        assert tiny.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
        assert tiny.tokenize(text) == hf.tokenize(text)
        ids = tiny.encode(text)
        for skip in (False, True):
            assert tiny.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        assert tiny.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(ids, skip_special_tokens=True)
    ours = tiny(TEXTS, padding=True, return_tensors="np")
    theirs = hf(TEXTS, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    ours = tiny(TEXTS, padding="max_length", max_length=40, pad_to_multiple_of=16)
    theirs = hf(TEXTS, padding="max_length", max_length=40, pad_to_multiple_of=16)
    assert ours["input_ids"] == theirs["input_ids"] and ours["attention_mask"] == theirs["attention_mask"]
    ours = tiny(TEXTS, truncation=True, max_length=5)
    theirs = hf(TEXTS, truncation=True, max_length=5)
    assert ours["input_ids"] == theirs["input_ids"]
    assert tiny.get_vocab() == hf.get_vocab() and len(tiny) == len(hf)
    assert sorted(tiny.all_special_ids) == sorted(hf.all_special_ids)


def test_pair_sequences_match_transformers(tiny):
    hf = _hf_twin(tiny)
    a, b = "Hello world", "penguin 🦙"
    theirs = hf(a, b, return_token_type_ids=True, return_special_tokens_mask=True)
    ours = tiny(a, b, return_token_type_ids=True, return_special_tokens_mask=True)
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["token_type_ids"] == theirs["token_type_ids"]
    ids_a = tiny.encode(a, add_special_tokens=False)
    ids_b = tiny.encode(b, add_special_tokens=False)
    assert tiny.build_inputs_with_special_tokens(ids_a, ids_b) == theirs["input_ids"]
    assert tiny.create_token_type_ids_from_sequences(ids_a, ids_b) == theirs["token_type_ids"]
    assert tiny.get_special_tokens_mask(ids_a, ids_b) == theirs["special_tokens_mask"]
    assert tiny.get_special_tokens_mask(theirs["input_ids"], already_has_special_tokens=True) == \
        hf.get_special_tokens_mask(theirs["input_ids"], already_has_special_tokens=True)


def test_transformers_loads_what_we_save(tiny, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers (oracle) is not installed")
    tiny.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf).__name__ == "CohereTokenizer"
    assert hf.padding_side == "left"
    for text in TEXTS:
        assert hf.encode(text) == tiny.encode(text)
    batch = hf(TEXTS, padding=True)
    assert batch["input_ids"] == tiny(TEXTS, padding=True)["input_ids"]


def test_real_vocab_matches_transformers(real):
    hf = _hf_twin(real)
    texts = ["Hello this is a test", "  leading spaces\n\n\tand tabs", "3333 ½ 🦙.cpp", "Äpfel нещо 你好"]
    for text in texts:
        assert real.encode(text) == hf.encode(text)
    ours = real(texts, padding=True, return_tensors="np")
    theirs = hf(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])


# --- the fetch tool ---------------------------------------------------------------------------------
def test_fetch_tool_is_idempotent_and_classifies_failures(tmp_path, monkeypatch):
    import subprocess

    tool = _load_fetch_tool()
    cache = tmp_path / "cache"
    for name in tool.VOCAB_FILES:
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text("x")
    (cache / "templates").mkdir()
    (cache / "templates" / "CohereForAI-c4ai-command-r-plus-tool_use.jinja").write_text("x")

    def no_download(*args, **kwargs):
        raise AssertionError("fetch() downloaded although the files were present")

    monkeypatch.setattr(tool, "_download_sdist", no_download)
    assert tool.fetch(cache) == cache

    def fake_pip(output):
        return lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="", stderr=output)

    monkeypatch.undo()
    offline = ("WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(... "
               "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')'\n"
               "ERROR: No matching distribution found for llama-cpp-python==0.3.36")
    monkeypatch.setattr(tool.subprocess, "run", fake_pip(offline))
    with pytest.raises(tool.RegistryUnreachableError):
        tool.fetch(tmp_path / "empty")
    monkeypatch.setattr(tool.subprocess, "run", fake_pip("ERROR: No matching distribution found for llama-cpp-python==0.3.36"))
    with pytest.raises(RuntimeError) as info:  # a real failure (e.g. a yanked version) must fail, not skip
        tool.fetch(tmp_path / "empty2")
    assert not isinstance(info.value, tool.RegistryUnreachableError)
