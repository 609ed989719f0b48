"""generate(), streamers and the text-generation pipeline on tiny NumPy-written checkpoints (no torch).

Oracles: a plain loop of full forward passes without a cache (the forward itself is checked
against transformers in test_parity_live.py), each row generated alone, hand derivations
(stop-string and eos bookkeeping), and the committed tiny Command-R tokenizer
(tests/data/tokenizer/tiny-command-r). Token-level parity with transformers' generate() is in
test_generation_live.py.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from tokenizers import decoders

import pycohere
from pycohere import GenerationConfig, TextIteratorStreamer, TextStreamer, pipeline
from pycohere.spec.cache import KVCache
from pycohere.errors import AttentionMaskError, CacheError, GenerationConfigError, InputError, TokenIdError
from pycohere.generation import StopStringCriteria
from pycohere.generation.sampling import repetition_penalty
from pycohere.text.tokenizer import CohereTokenizer

from helpers import write_checkpoint

TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "tokenizer" / "tiny-command-r"
PROMPTS = np.array([[5, 10, 11, 12, 13], [5, 20, 21, 22, 23]])
EOS = 6  # helpers.TINY's eos_token_id
PAD = 0


def load(folder):
    # The NumPy spec backend: exact and fast on tiny shapes (numba compiles per shape).
    return pycohere.AutoModelForCausalLM.from_pretrained(folder, backend="numpy")


@pytest.fixture(scope="module")
def cohere(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("cohere"), seed=3)
    return load(folder)


@pytest.fixture(scope="module")
def cohere2(tmp_path_factory):
    # window 4, prompts of 10: the sliding layers see less than the prompt; layer 2 is full (NoPE)
    folder = write_checkpoint(tmp_path_factory.mktemp("cohere2"), model_type="cohere2", seed=3,
                              num_hidden_layers=3, sliding_window=4,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    return load(folder)


@pytest.fixture(scope="module")
def tok():
    return CohereTokenizer.from_pretrained(TOKENIZER_DIR)


def _text_folder(root: Path, seed: int) -> Path:
    """A checkpoint sized for the tiny tokenizer (485 ids, eos <|END_OF_TURN_TOKEN|> = 481) with the
    tokenizer files next to it, like a hub checkpoint."""
    folder = write_checkpoint(root, seed=seed, vocab_size=485, eos_token_id=481)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    return _text_folder(tmp_path_factory.mktemp("text1"), seed=1)


@pytest.fixture(scope="module")
def text_model(text_folder):
    return load(text_folder)


def padded_prompts(rng_seed=0, lengths=(10, 7), V=61):
    """Left-padded (ids, mask) of the given prompt lengths."""
    rng = np.random.default_rng(rng_seed)
    T = max(lengths)
    ids = np.full((len(lengths), T), PAD)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = rng.integers(7, V, size=n)
        ids[b, T - n] = 5
        mask[b, T - n:] = 1
    return ids, mask


def full_forward_greedy(model, ids, mask, n):
    """The oracle loop: every step re-runs the whole sequence without a cache, with positions
    cumsum(mask) - 1 (the left-padding rule), and takes the argmax of the last logits."""
    ids, mask = ids.copy(), mask.copy()
    for _ in range(n):
        pos = np.where(mask == 0, 0, np.cumsum(mask, -1) - 1)
        logits = model(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        ids = np.concatenate([ids, logits.argmax(-1)[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=mask.dtype)], axis=1)
    return ids


class Recorder:
    """A streamer that records what generate() hands it."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(np.array(value))

    def end(self):
        self.ended += 1


# --- greedy decoding vs the no-cache oracle ------------------------------------------------------------
def test_greedy_equals_full_forward_loop_cohere(cohere):
    n = 12
    expected = PROMPTS.copy()
    for _ in range(n):  # plain forward, default positions arange(T): no padding here
        expected = np.concatenate([expected, cohere(expected).logits[:, -1].argmax(-1)[:, None]], axis=1)
    assert EOS not in expected[:, 5:]  # precondition: no early stop in this comparison
    out = cohere.generate(PROMPTS, max_new_tokens=n)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int64 and out.shape == (2, 5 + n)
    assert len(set(out[:, 5:].ravel().tolist())) > 4  # a varied continuation, not one repeated token


def test_greedy_cohere2_prompt_longer_than_window_left_padded(cohere2):
    ids, mask = padded_prompts(lengths=(10, 7))
    expected = full_forward_greedy(cohere2, ids, mask, 10)
    assert EOS not in expected[:, 10:]
    out = cohere2.generate(ids, attention_mask=mask, max_new_tokens=10)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("which", ["cohere", "cohere2"])
def test_static_and_dynamic_cache_give_identical_ids(which, cohere, cohere2):
    model = cohere if which == "cohere" else cohere2
    ids, mask = padded_prompts(lengths=(10, 6))
    dyn = model.generate(ids, attention_mask=mask, max_new_tokens=9)
    res = model.generate(ids, attention_mask=mask, max_new_tokens=9, cache_implementation="static",
                         return_dict_in_generate=True)
    np.testing.assert_array_equal(res.sequences, dyn)
    cache = res.past_key_values
    assert cache.static and cache.max_cache_len == 10 + 9
    for layer in cache.layers:
        # preallocated once, never grown: full layers hold prompt + max_new_tokens; sliding layers
        # two windows, or the prompt if longer (it is written whole, then compacted to the window)
        assert layer.k.shape[1] == (19 if layer.window is None else max(min(19, 2 * layer.window), 10))


@pytest.mark.parametrize("which", ["cohere", "cohere2"])
def test_left_padded_batch_equals_each_row_alone(which, cohere, cohere2):
    model = cohere if which == "cohere" else cohere2
    ids, mask = padded_prompts(rng_seed=4, lengths=(6, 10, 3))
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    for b in range(3):
        alone = model.generate(ids[b][mask[b] == 1][None], max_new_tokens=8)
        np.testing.assert_array_equal(batch[b, ids.shape[1]:], alone[0, mask[b].sum():])


def test_generate_feeds_cumsum_positions_and_one_token_steps(cohere, monkeypatch):
    # RoPE is relative, so a constant shift of a row's positions hardly changes its logits: check
    # the inputs generate() hands the forward pass instead.
    # (generate validates its inputs once, then drives the trusted forward, _next_token_logits, each step:
    # it always uses the cache and returns the last position's logits)
    calls = []
    forward = type(cohere)._next_token_logits

    def spy(self, input_ids, kv_valid, positions, cache):
        calls.append((np.array(input_ids), {"position_ids": positions, "attention_mask": kv_valid.astype(int),
                                            "past_key_values": cache}))
        return forward(self, input_ids, kv_valid, positions, cache)
    monkeypatch.setattr(type(cohere), "_next_token_logits", spy)
    ids, mask = padded_prompts(lengths=(5, 3))
    out = cohere.generate(ids, attention_mask=mask, max_new_tokens=3)
    assert len(calls) == 3  # prefill + 2 steps: the last token is never fed back
    prefill_ids, kw = calls[0]
    np.testing.assert_array_equal(prefill_ids, ids)
    # cumsum(mask) - 1 with padding at 0: row 1 = [pad, pad, 0, 1, 2]
    np.testing.assert_array_equal(kw["position_ids"], [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    for step, (step_ids, kw) in enumerate(calls[1:]):
        np.testing.assert_array_equal(step_ids, out[:, 5 + step:6 + step])  # the token just chosen
        np.testing.assert_array_equal(kw["position_ids"], [[5 + step], [3 + step]])
        np.testing.assert_array_equal(kw["attention_mask"], np.c_[mask, np.ones((2, step + 1), dtype=int)])
        assert kw["past_key_values"] is calls[0][1]["past_key_values"]


def test_mask_is_inferred_from_pad_tokens(cohere):
    # No attention_mask: pad ids (0, not eos) are masked, as transformers infers it.
    ids, mask = padded_prompts(lengths=(8, 5))
    np.testing.assert_array_equal(cohere.generate(ids, max_new_tokens=5),
                                  cohere.generate(ids, attention_mask=mask, max_new_tokens=5))


def test_tokenizer_batch_feeds_generate(text_model, tok):
    enc = tok(["Hello world! The penguin", "Hi"], padding=True, return_tensors="np")  # left padded
    out = text_model.generate(enc, max_new_tokens=6)
    T = enc["input_ids"].shape[1]
    for b, text in enumerate(["Hello world! The penguin", "Hi"]):
        alone = text_model.generate([tok.encode(text)], max_new_tokens=6)
        np.testing.assert_array_equal(out[b, T:], alone[0, -6:])


# --- stopping ------------------------------------------------------------------------------------------
def test_eos_stops_rows_and_pads(cohere):
    n = 12
    base = cohere.generate(PROMPTS, max_new_tokens=n, eos_token_id=[])[:, 5:]
    # pick an eos that row 0 first produces at step s0 and row 1 never produces
    s0, e = next((s, t) for s, t in enumerate(base[0]) if t not in base[1] and t not in base[0][:s] and s >= 1)
    out = cohere.generate(PROMPTS, max_new_tokens=n, eos_token_id=int(e))[:, 5:]
    # row 0: its tokens up to and including eos, then padding; row 1 is unaffected and runs to the end
    np.testing.assert_array_equal(out[0], np.r_[base[0][:s0 + 1], [PAD] * (n - s0 - 1)])
    np.testing.assert_array_equal(out[1], base[1])
    # a list of eos ids; once both rows are done generation stops early
    s1, f = next((s, t) for s, t in enumerate(base[1]) if t not in base[0][:s0 + 1] and t not in base[1][:s])
    out = cohere.generate(PROMPTS, max_new_tokens=n, eos_token_id=[int(e), int(f)])[:, 5:]
    last = max(s0, s1)
    assert out.shape == (2, last + 1)
    np.testing.assert_array_equal(out[0], np.r_[base[0][:s0 + 1], [PAD] * (last - s0)])
    np.testing.assert_array_equal(out[1], np.r_[base[1][:s1 + 1], [PAD] * (last - s1)])


def test_min_new_tokens_delays_eos(cohere):
    base = cohere.generate(PROMPTS[:1], max_new_tokens=4, eos_token_id=[])[0, 5:]
    e = int(base[0])  # make the very first greedy token the eos
    assert cohere.generate(PROMPTS[:1], max_new_tokens=4, eos_token_id=e).shape == (1, 6)  # stops at once
    out = cohere.generate(PROMPTS[:1], max_new_tokens=4, eos_token_id=e, min_new_tokens=3)[0, 5:]
    assert e not in out[:3].tolist()
    # the first token is then the best non-eos token of the prompt's logits
    logits = cohere(PROMPTS[:1]).logits[0, -1].copy()
    logits[e] = -np.inf
    assert out[0] == logits.argmax()


def test_stop_strings_stop_where_the_text_first_contains_them(text_model, tok):
    ids = tok.encode("Hello world! The penguin")
    T = len(ids)
    base = text_model.generate([ids], max_new_tokens=16)[0]
    new_text = tok.decode(base[T:])
    assert new_text.startswith(" thised")  # 'Ġthis' + 'ed': "sed" spans two tokens
    for stop in ["sed", " this", "+++", "fo fo"]:
        # oracle: the first step whose decoded text (prompt + new) contains the stop string
        j = next(j for j in range(T, len(base)) if stop in tok.decode(base[:j + 1]))
        out = text_model.generate([ids], max_new_tokens=16, stop_strings=stop, tokenizer=tok)[0]
        np.testing.assert_array_equal(out, base[:j + 1], err_msg=stop)
    # a string that only occurs in the prompt does not stop generation
    out = text_model.generate([ids], max_new_tokens=16, stop_strings=["penguin"], tokenizer=tok)[0]
    np.testing.assert_array_equal(out, base)


class _ByteLevelStub:
    """Just enough tokenizer for StopStringCriteria: byte-level token strings by id."""

    def __init__(self, tokens):
        self.tokens = tokens

        class Backend:
            decoder = decoders.ByteLevel()
        self.backend_tokenizer = Backend()

    def convert_ids_to_tokens(self, i):
        return self.tokens[i]

    def decode(self, ids):
        return "".join(self.tokens[i] for i in ids)


def test_stop_string_criteria_transformers_documented_cases():
    # transformers' StopStringCriteria docstring: for "stop", these must match ...
    vocab = ["st", "op", "stop", "opera", "sto", "pper", "las", "topper", "s", "to", "pped", "at", "tion", "Ġst"]
    idx = {t: i for i, t in enumerate(vocab)}
    crit = StopStringCriteria(_ByteLevelStub(vocab), ["stop"])
    for seq in (["st", "op"], ["stop"], ["st", "opera"], ["sto", "pper"], ["las", "topper"], ["s", "to", "pped"]):
        assert crit(np.array([[idx[t] for t in seq]])).tolist() == [True], seq
    # ... and these must not (the stop string does not overlap the final token)
    for seq in (["stop", "at"], ["st", "op", "at"], ["st", "opera", "tion"]):
        assert crit(np.array([[idx[t] for t in seq]])).tolist() == [False], seq
    # byte-level 'Ġ' is a space: " stop" matches "Ġst" + "op"
    crit = StopStringCriteria(_ByteLevelStub(vocab), [" stop", "zzz"])
    assert crit(np.array([[idx["Ġst"], idx["op"]], [idx["st"], idx["op"]]])).tolist() == [True, False]


def test_stop_strings_match_bytes_of_split_characters(tok):
    # "ñ" is two byte-level tokens here ('Ã', '±'); the stop string matches once both bytes are out.
    ids = tok.encode("ñ", add_special_tokens=False)
    assert len(ids) == 2
    crit = StopStringCriteria(tok, ["ñ"])
    assert crit(np.array([ids[:1]])).tolist() == [False]
    assert crit(np.array([ids])).tolist() == [True]


# --- streamers -----------------------------------------------------------------------------------------
def test_streamer_receives_prompt_then_each_generated_token(cohere):
    rec = Recorder()
    out = cohere.generate(PROMPTS, max_new_tokens=7, streamer=rec)
    np.testing.assert_array_equal(rec.puts[0], PROMPTS)            # the prompt first, as transformers
    steps = rec.puts[1:]
    assert len(steps) == 7 and all(s.shape == (2,) for s in steps)
    np.testing.assert_array_equal(np.stack(steps, axis=1), out[:, 5:])
    assert rec.ended == 1


def test_text_streamer_prints_the_decoded_continuation(tmp_path, tok, capsys):
    model = load(_text_folder(tmp_path, seed=2))
    ids = tok.encode("Hello world! The penguin")
    out = model.generate([ids], max_new_tokens=16, streamer=TextStreamer(tok, skip_prompt=True))[0]
    assert out[-1] == 481 and len(out) < len(ids) + 16  # this seed ends with eos: the stream covers it too
    assert any(len(tok.decode([t])) == 1 and tok.decode([t]) == "\ufffd" for t in out[len(ids):])  # split chars
    printed = capsys.readouterr().out
    assert printed == tok.decode(out[len(ids):]) + "\n"
    # without skip_prompt the prompt is streamed first; skip_special_tokens drops <BOS> and eos
    model.generate([ids], max_new_tokens=16, streamer=TextStreamer(tok, skip_special_tokens=True))
    assert capsys.readouterr().out == tok.decode(out, skip_special_tokens=True) + "\n"


def test_text_iterator_streamer_from_a_thread(text_model, tok):
    ids = tok.encode("What is the biggest")
    streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=30)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "ids", text_model.generate([ids], max_new_tokens=10, streamer=streamer)))
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) > 1
    assert "".join(pieces) == tok.decode(result["ids"][0, len(ids):])


def test_text_streamer_rejects_batches(cohere, tok):
    with pytest.raises(GenerationConfigError, match="batch size 1"):
        cohere.generate(PROMPTS, max_new_tokens=2, streamer=TextStreamer(tok))


# --- sampling through generate -------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(cohere):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95)
    a = cohere.generate(PROMPTS, seed=11, **kw)
    np.testing.assert_array_equal(a, cohere.generate(PROMPTS, seed=11, **kw))
    np.testing.assert_array_equal(a, cohere.generate(PROMPTS, rng=np.random.default_rng(11), **kw))
    assert (a != cohere.generate(PROMPTS, seed=12, **kw)).any()
    # top_k = 1 leaves one token: sampling is then greedy
    np.testing.assert_array_equal(cohere.generate(PROMPTS, max_new_tokens=10, do_sample=True, top_k=1, seed=3),
                                  cohere.generate(PROMPTS, max_new_tokens=10))


def test_default_top_k_is_50_when_sampling(cohere):
    # transformers 5.x GenerationConfig._get_default_generation_params: top_k = 50
    assert GenerationConfig().top_k == 50
    res = cohere.generate(PROMPTS, max_new_tokens=3, do_sample=True, seed=0, output_scores=True,
                          return_dict_in_generate=True)
    assert all((np.isfinite(s).sum(-1) == 50).all() for s in res.scores)  # of 61
    res = cohere.generate(PROMPTS, max_new_tokens=3, do_sample=True, seed=0, top_k=0, output_scores=True,
                          return_dict_in_generate=True)
    assert all(np.isfinite(s).all() for s in res.scores)


def test_num_return_sequences(cohere):
    out = cohere.generate(PROMPTS, max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=5)
    assert out.shape == (6, 11)
    np.testing.assert_array_equal(out[:, :5], np.repeat(PROMPTS, 3, axis=0))
    assert len({tuple(r) for r in out[:3, 5:].tolist()}) > 1
    with pytest.raises(GenerationConfigError, match="do_sample"):
        cohere.generate(PROMPTS, num_return_sequences=2)


# --- outputs, caches and configuration -----------------------------------------------------------------
def test_output_scores_are_the_processed_logits(cohere):
    res = cohere.generate(PROMPTS, max_new_tokens=5, repetition_penalty=1.5, return_dict_in_generate=True,
                          output_scores=True, output_logits=True)
    assert len(res.scores) == len(res.logits) == 5
    for i, (s, raw) in enumerate(zip(res.scores, res.logits)):
        seen = res.sequences[:, :5 + i]
        np.testing.assert_array_equal(s, repetition_penalty(seen, raw, 1.5))
        np.testing.assert_array_equal(res.sequences[:, 5 + i], s.argmax(-1))
    assert (res.scores[0] != res.logits[0]).any()


def test_continuing_from_a_returned_cache(cohere2):
    ids, mask = padded_prompts(lengths=(9, 6))
    first = cohere2.generate(ids, attention_mask=mask, max_new_tokens=4, return_dict_in_generate=True)
    mask2 = np.concatenate([mask, np.ones((2, 4), dtype=mask.dtype)], axis=1)
    cont = cohere2.generate(first.sequences, attention_mask=mask2, past_key_values=first.past_key_values,
                            max_new_tokens=5)
    np.testing.assert_array_equal(cont, cohere2.generate(ids, attention_mask=mask, max_new_tokens=9))


def test_generation_config_json_is_read(tmp_path):
    folder = write_checkpoint(tmp_path, seed=3)
    base = load(folder).generate(PROMPTS[:1], max_new_tokens=8,
                                                                          eos_token_id=[])[0, 5:]
    e = int(base[2])
    # "hybrid" is what Command R7B's file says (a transformers cache layout): read as pycohere's static cache
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [e], "max_new_tokens": 8,
                                                               "cache_implementation": "hybrid",
                                                               "transformers_version": "5.24.0"}))
    model = load(folder)
    assert model.generation_config.eos_token_id == [e]
    assert model.generation_config.cache_implementation == "static"
    assert model.generation_config.pad_token_id == 0  # not in the file: from config.json
    stop = list(base).index(e)
    np.testing.assert_array_equal(model.generate(PROMPTS[:1])[0, 5:], base[:stop + 1])


def test_positions_beyond_max_position_embeddings_warn_once(cohere):
    # transformers allows it (RoPE extrapolates); pycohere warns once per model.
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        out = cohere.generate(PROMPTS[:1], max_new_tokens=64)
    assert out.shape == (1, 69)


# --- invalid parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(do_sample=True, temperature=-0.5), GenerationConfigError, "temperature"),
    (dict(do_sample=True, temperature=0.0), GenerationConfigError, "do_sample=False"),
    (dict(temperature=-1.0), GenerationConfigError, "temperature"),
    (dict(do_sample=True, top_p=0.0), GenerationConfigError, r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_p=1.5), GenerationConfigError, r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_k=-1), GenerationConfigError, "top_k"),
    (dict(do_sample=True, min_p=2.0), GenerationConfigError, "min_p"),
    (dict(repetition_penalty=0.0), GenerationConfigError, "repetition_penalty"),
    (dict(max_new_tokens=0), GenerationConfigError, "greater than 0"),
    (dict(max_new_tokens=-3), GenerationConfigError, "greater than 0"),
    (dict(max_new_tokens=None, max_length=5), GenerationConfigError, "max_length"),
    (dict(min_new_tokens=-1), GenerationConfigError, "min_new_tokens"),
    (dict(cache_implementation="paged"), GenerationConfigError, "cache_implementation"),
    (dict(eos_token_id="6"), GenerationConfigError, "eos_token_id"),
    (dict(eos_token_id=1000), TokenIdError, "eos_token_id"),
    (dict(stop_strings=["x"]), GenerationConfigError, "tokenizer"),
    (dict(stop_strings=[""], tokenizer=object()), GenerationConfigError, "stop_strings"),
    (dict(do_sample=True, seed=1, rng=np.random.default_rng(1)), GenerationConfigError, "not both"),
    (dict(streamer=object()), GenerationConfigError, "put"),
    (dict(top_q=0.5), GenerationConfigError, "top_q"),
    (dict(attention_mask=np.ones((2, 4))), AttentionMaskError, "shape"),
    (dict(attention_mask=np.full((2, 5), 2)), AttentionMaskError, "only 0"),
    (dict(attention_mask=np.array([[1] * 5, [0] * 5])), AttentionMaskError, "row 1"),
    (dict(input_ids=np.array([[5, 99]])), TokenIdError, "outside the vocabulary"),
    (dict(input_ids=np.array([[0.5, 1.0]])), InputError, "integer"),
    (dict(input_ids=[[5, 10, 11], [5]]), InputError, "different lengths"),
])
def test_invalid_parameters_raise(cohere, kwargs, error, match):
    kwargs = dict(kwargs)
    ids = kwargs.pop("input_ids", PROMPTS)
    kwargs.setdefault("max_new_tokens", 3)
    with pytest.raises(error, match=match):
        cohere.generate(ids, **kwargs)


def test_static_cache_too_small_raises(cohere):
    with pytest.raises(CacheError, match="static cache holds 10"):
        cohere.generate(PROMPTS, max_new_tokens=6, cache_implementation="static", max_cache_len=10)
    small = KVCache.for_model(cohere.config, max_cache_len=8, static=True)
    with pytest.raises(CacheError, match="needs 11"):
        cohere.generate(PROMPTS, max_new_tokens=6, past_key_values=small)
    # exactly enough is fine
    fits = KVCache.for_model(cohere.config, max_cache_len=11, static=True)
    np.testing.assert_array_equal(cohere.generate(PROMPTS, max_new_tokens=6, past_key_values=fits),
                                  cohere.generate(PROMPTS, max_new_tokens=6))


def test_right_padding_warns(cohere):
    with pytest.warns(UserWarning, match="right padding"):
        cohere.generate(PROMPTS, attention_mask=np.array([[1, 1, 1, 1, 0], [1] * 5]), max_new_tokens=1)


# --- pipeline -------------------------------------------------------------------------------------------
def test_pipeline_string_prompt(text_folder, text_model, tok):
    # model and tokenizer both loaded from the folder
    pipe = pipeline("text-generation", model=text_folder, model_kwargs={"backend": "numpy"})
    prompt = "Hello world! The penguin"
    ids = tok.encode(prompt)
    new = text_model.generate([ids], max_new_tokens=8)[0, len(ids):]
    continuation = tok.decode(new, skip_special_tokens=True)
    assert pipe(prompt, max_new_tokens=8) == [{"generated_text": prompt + continuation}]
    assert pipe(prompt, max_new_tokens=8, return_full_text=False) == [{"generated_text": continuation}]
    assert pipe([prompt, prompt], max_new_tokens=8) == [[{"generated_text": prompt + continuation}]] * 2
    assert pipe(prompt, max_new_tokens=8, return_tensors=True) == [{"generated_token_ids": ids + new.tolist()}]


def test_pipeline_chat_appends_an_assistant_message(text_model, tok):
    pipe = pipeline("text-generation", model=text_model, tokenizer=tok)
    chat = [{"role": "user", "content": "What is the biggest penguin?"}]
    # expected: the chat template with a generation prompt, encoded without a second BOS
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids.count(tok.bos_token_id) == 1
    reply = tok.decode(text_model.generate([ids], max_new_tokens=6)[0, len(ids):], skip_special_tokens=True)
    out = pipe(chat, max_new_tokens=6)
    assert out == [{"generated_text": chat + [{"role": "assistant", "content": reply}]}]
    assert chat == [{"role": "user", "content": "What is the biggest penguin?"}]  # input untouched


def test_pipeline_continues_a_final_assistant_message(text_model, tok):
    pipe = pipeline("text-generation", model=text_model, tokenizer=tok)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The emperor"}]
    # the prompt ends inside the assistant turn: no end-of-turn token after "The emperor"
    expected_prompt = ("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>"
                       "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>The emperor")
    ids = tok.encode(expected_prompt, add_special_tokens=False)
    more = tok.decode(text_model.generate([ids], max_new_tokens=5)[0, len(ids):], skip_special_tokens=True)
    out = pipe(chat, max_new_tokens=5)
    assert out == [{"generated_text": [chat[0], {"role": "assistant", "content": "The emperor" + more}]}]


def test_pipeline_errors(text_model, tok, cohere):
    with pytest.raises(InputError, match="unknown pipeline task 'summarization'"):
        pipeline("summarization", model=text_model, tokenizer=tok)
    with pytest.raises(InputError, match="string, a chat"):
        pipeline("text-generation", model=text_model, tokenizer=tok)(42)
    with pytest.raises(GenerationConfigError, match="top_q"):
        pipeline("text-generation", model=text_model, tokenizer=tok)("Hi", top_q=0.3)
    # a model folder without tokenizer files and no tokenizer=
    from pycohere.errors import CheckpointNotFoundError
    with pytest.raises(CheckpointNotFoundError, match="tokenizer.json"):
        pipeline("text-generation", model=cohere)


# --- allocations sized by max_new_tokens are checked first; the dynamic cache grows (issue 13) ----------
def _kv_bytes_per_token(model, batch):
    c = model.config
    full = sum(w is None for w in pycohere.spec.cache.layer_windows(c))
    return 2 * batch * c.num_key_value_heads * c.get_head_dim() * model.dtype.itemsize * full


def test_a_max_new_tokens_beyond_memory_is_refused_before_allocating(cohere, monkeypatch):
    import pycohere.generation.utils as U
    B, T = PROMPTS.shape
    per_token = _kv_bytes_per_token(cohere, B) + 9 * B  # the cache's full layers and the token/mask buffers
    ram = (T + 40) * per_token + per_token // 2          # room for 40 new tokens, not 41
    monkeypatch.setattr(U, "physical_memory", lambda: ram)
    with pytest.raises(GenerationConfigError, match=r"max_new_tokens=41 .* more than this machine's .* lower "
                                                    r"max_new_tokens to at most 40 or generate fewer sequences"):
        cohere.generate(PROMPTS, max_new_tokens=41, eos_token_id=[])
    assert cohere.generate(PROMPTS, max_new_tokens=40, eos_token_id=[]).shape == (B, T + 40)
    # output_scores keeps a float32 row of V per step and sequence: counted too
    with pytest.raises(GenerationConfigError, match="scores"):
        cohere.generate(PROMPTS, max_new_tokens=40, eos_token_id=[], output_scores=True,
                        return_dict_in_generate=True)


def test_the_real_machine_refuses_a_hundred_million_tokens(cohere):
    with pytest.raises(GenerationConfigError, match=r"max_new_tokens=100000000 \(prompt 5, batch 2\) would need "
                                                    r"[\d.]+ GiB .* lower max_new_tokens to at most \d+"):
        cohere.generate(PROMPTS, max_new_tokens=100_000_000)


def test_the_dynamic_cache_grows_instead_of_preallocating_max_new_tokens(cohere):
    """A 10000-token limit and an eos at the third token: the cache holds a few slots, not 10005."""
    greedy = cohere.generate(PROMPTS[:1], max_new_tokens=3, eos_token_id=[])[0, PROMPTS.shape[1]:]
    stop = int(greedy[-1])
    out = cohere.generate(PROMPTS[:1], max_new_tokens=10_000, eos_token_id=[stop], return_dict_in_generate=True)
    until = greedy[:list(greedy).index(stop) + 1]  # the run ends at the first appearance of the eos
    np.testing.assert_array_equal(out.sequences[0, PROMPTS.shape[1]:], until)
    cap = max(layer.k.shape[1] for layer in out.past_key_values.layers)
    assert cap <= 32, cap  # grown by doubling from 16, never sized by max_new_tokens
    # and it grows past its first buffer when the run is long: same tokens as a run with a static cache
    dyn = cohere.generate(PROMPTS, max_new_tokens=40, eos_token_id=[])
    static = cohere.generate(PROMPTS, max_new_tokens=40, eos_token_id=[], cache_implementation="static")
    np.testing.assert_array_equal(dyn, static)


def test_a_static_cache_beyond_memory_is_refused_before_allocating(cohere):
    cache = KVCache.for_model(cohere.config, max_cache_len=10 ** 12, static=True)
    with pytest.raises(CacheError, match=r"a cache of 1000000000000 tokens needs [\d.]+ GiB .* lower max_cache_len"):
        cohere(PROMPTS, past_key_values=cache, use_cache=True)
