"""Text generation: ``model.generate(...)`` as transformers' ``GenerationMixin`` (greedy and sampling).

The loop is transformers' ``GenerationMixin._sample`` (``generation/utils.py``, v5.24):

1. positions ``cumsum(attention_mask) - 1`` (padding set to 0, as 5.x ``_prepare_position_ids_for_generation``;
   4.x used 1 — padded positions are never attended, so the value does not matter);
2. one prefill forward over the prompt into a KV cache, keeping only the last logits (``logits_to_keep=1``);
3. each step: logits -> float32 -> processors (``pycohere.sampling``) -> argmax or a draw -> finished rows
   get ``pad_token_id`` -> stopping criteria (max length, eos, stop strings) -> one-token forward.

Output is ``(B, T + n)`` int64: the prompt followed by the n generated tokens (n <= max_new_tokens; fewer
when every row stopped early). Streamers get the prompt first, then each step's tokens, then ``end()``.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .cache import KVCache
from .errors import AttentionMaskError, CacheError, GenerationConfigError, InputError, TokenIdError
from .sampling import (build_logits_processors, greedy_from_scores, make_rng, normalize_token_ids,
                       sample_from_scores)

GENERATION_CONFIG_NAME = "generation_config.json"


# --- configuration -------------------------------------------------------------------------------
@dataclass
class GenerationConfig:
    """Generation settings with transformers' names and defaults.

    Defaults are transformers 5.x ``GenerationConfig._get_default_generation_params`` (top_k 50, top_p 1,
    temperature 1, ...), except ``max_new_tokens = 20`` where transformers counts ``max_length = 20``
    *including* the prompt. ``top_k=0`` disables top-k (as transformers; ``None`` means "default").
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    cache_implementation: str = "dynamic"
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False

    DEFAULT_MAX_NEW_TOKENS = 20
    CACHE_IMPLEMENTATIONS = ("dynamic", "static")

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """Special tokens from the model's config.json (transformers does the same when a checkpoint
        has no generation_config.json)."""
        return cls(bos_token_id=getattr(config, "bos_token_id", None),
                   eos_token_id=getattr(config, "eos_token_id", None),
                   pad_token_id=getattr(config, "pad_token_id", None))

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationConfig":
        """Known keys are taken; bookkeeping keys (``transformers_version``, ``_from_model_config``) and
        settings pycohere does not implement are ignored."""
        if not isinstance(data, dict):
            raise GenerationConfigError(f"a generation config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        impl = known.get("cache_implementation")
        if impl is not None and impl not in cls.CACHE_IMPLEMENTATIONS:
            # transformers' other layouts ("hybrid" in Command R7B's file, "sliding_window", "offloaded", ...)
            # give the same tokens; pycohere's static cache already keeps sliding layers to their window.
            known["cache_implementation"] = "static" if any(w in str(impl) for w in ("static", "hybrid", "sliding")) \
                else "dynamic"
        return cls(**known)

    @classmethod
    def from_pretrained(cls, path) -> "GenerationConfig":
        """Read ``generation_config.json`` from a checkpoint folder (or the file itself)."""
        p = Path(path)
        p = p / GENERATION_CONFIG_NAME if p.is_dir() else p
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            from .errors import CheckpointNotFoundError
            raise CheckpointNotFoundError(f"no {GENERATION_CONFIG_NAME} at {p}") from None
        except json.JSONDecodeError as e:
            from .errors import CorruptCheckpointError
            raise CorruptCheckpointError(f"{p} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def update(self, **kwargs) -> "GenerationConfig":
        """A copy with the given (non-None) settings replaced; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise GenerationConfigError(f"unknown generation argument(s): {', '.join(unknown)}; "
                                        f"valid ones are {', '.join(sorted(names))}")
        return dataclasses.replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    # -- checks -----------------------------------------------------------------------------------
    def resolved_max_new_tokens(self, prompt_length: int) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is not None:  # transformers: max_length counts the prompt
            return self.max_length - prompt_length
        return self.DEFAULT_MAX_NEW_TOKENS

    def validate(self, vocab_size: int | None = None, prompt_length: int = 0) -> None:
        """Raise GenerationConfigError naming the first invalid setting."""
        def fail(msg):
            raise GenerationConfigError(msg)

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        for name in ("max_new_tokens", "max_length"):
            v = getattr(self, name)
            if v is not None and not is_int(v):
                fail(f"{name} must be an integer, got {v!r}")
        n = self.resolved_max_new_tokens(prompt_length)
        if n <= 0:
            what = (f"max_length ({self.max_length}) must exceed the prompt length ({prompt_length})"
                    if self.max_new_tokens is None and self.max_length is not None else
                    f"max_new_tokens must be greater than 0, got {n}")
            fail(what + " (as transformers: generate() always produces at least one token)")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            fail(f"min_new_tokens must be a non-negative integer, got {self.min_new_tokens!r}")
        if not isinstance(self.do_sample, (bool, np.bool_)):
            fail(f"do_sample must be True or False, got {self.do_sample!r}")
        if not is_num(self.temperature) or self.temperature < 0 or (self.do_sample and self.temperature == 0):
            hint = (" temperature 0 means greedy: use do_sample=False." if is_num(self.temperature)
                    and self.temperature == 0 else "")
            fail(f"temperature must be a positive number (strictly positive when sampling), "
                 f"got {self.temperature!r}.{hint}")
        if not is_int(self.top_k) or self.top_k < 0:
            fail(f"top_k must be a non-negative integer (0 disables top-k), got {self.top_k!r}")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1] (1.0 disables nucleus sampling), got {self.top_p!r}")
        if self.min_p is not None and (not is_num(self.min_p) or not 0 <= self.min_p <= 1):
            fail(f"min_p must be in [0, 1] or None, got {self.min_p!r}")
        if not is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            fail(f"repetition_penalty must be a strictly positive number (1.0 = none), got {self.repetition_penalty!r}")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            fail(f"num_return_sequences must be a positive integer, got {self.num_return_sequences!r}")
        if self.num_return_sequences > 1 and not self.do_sample:
            fail("greedy decoding gives the same sequence every time: num_return_sequences > 1 needs do_sample=True")
        if self.cache_implementation not in self.CACHE_IMPLEMENTATIONS:
            fail(f"cache_implementation must be one of {self.CACHE_IMPLEMENTATIONS}, got {self.cache_implementation!r}")
        eos = normalize_token_ids(self.eos_token_id, "eos_token_id")
        pad = normalize_token_ids(self.pad_token_id, "pad_token_id")
        if len(pad) > 1:
            fail(f"pad_token_id must be a single token id, got {self.pad_token_id!r}")
        if vocab_size is not None:
            for name, ids in (("eos_token_id", eos), ("pad_token_id", pad)):
                if any(i >= vocab_size for i in ids):
                    raise TokenIdError(f"{name} {ids} is outside the vocabulary [0, {vocab_size})")
        if self.stop_strings is not None:
            strings = [self.stop_strings] if isinstance(self.stop_strings, str) else self.stop_strings
            if (not isinstance(strings, (list, tuple)) or not strings
                    or not all(isinstance(s, str) and s for s in strings)):
                fail(f"stop_strings must be a non-empty string or a list of them, got {self.stop_strings!r}")


@dataclass
class GenerateDecoderOnlyOutput:
    """``return_dict_in_generate=True`` result (transformers' class of the same name)."""

    sequences: np.ndarray
    scores: tuple | None = None        # processed scores, one (B, V) array per step (output_scores)
    logits: tuple | None = None        # raw float32 logits, one (B, V) per step (output_logits)
    past_key_values: KVCache | None = None

    @property
    def cache(self) -> KVCache | None:  # transformers 5.x's name for the same field
        return self.past_key_values

    def __getitem__(self, key):
        return getattr(self, key)


# --- stopping --------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character map used by byte-level BPE (openai/gpt-2 encoder.py,
    transformers ``convert_slow_tokenizer.bytes_to_unicode``)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


class StopStringCriteria:
    """Stop a row when a stop string ends inside its newest token (transformers ``StopStringCriteria``).

    transformers matches on the raw bytes of byte-level tokens; a match must overlap the final token
    (an occurrence entirely in earlier tokens does not count: it was checked when it was generated),
    and may overhang both ends (``["las", "topper"]`` matches "stop"). Here that is done with plain
    byte strings: the tail of the row's tokens, concatenated, must contain the stop string at an offset
    whose end lies inside the last token.
    """

    def __init__(self, tokenizer, stop_strings: str | Sequence[str]):
        if tokenizer is None:
            raise GenerationConfigError("stop_strings needs the tokenizer to read tokens as text: "
                                        "generate(..., stop_strings=[...], tokenizer=tokenizer)")
        self.tokenizer = tokenizer
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        self.stop_strings = tuple(strings)
        self._targets = [s.encode("utf-8") for s in strings]
        self._max_len = max(len(t) for t in self._targets)
        self._byte_level = _uses_byte_level(tokenizer)
        self._bytes: dict[int, bytes] = {}

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (its byte-level characters mapped back to bytes)."""
        b = self._bytes.get(token_id)
        if b is None:
            token = self.tokenizer.convert_ids_to_tokens(int(token_id)) if self._byte_level else None
            if token is not None and all(c in _BYTE_DECODER for c in token):
                b = bytes(_BYTE_DECODER[c] for c in token)
            else:  # not byte-level, or an added token outside the byte alphabet: its decoded text
                b = self.tokenizer.decode([int(token_id)]).encode("utf-8")
            self._bytes[token_id] = b
        return b

    def _row_matches(self, row: np.ndarray) -> bool:
        last = self.token_bytes(int(row[-1]))
        parts, before = [last], 0
        for t in row[-2::-1]:               # enough earlier tokens to hold the rest of the longest string
            if before >= self._max_len - 1:
                break
            b = self.token_bytes(int(t))
            parts.append(b)
            before += len(b)
        text = b"".join(reversed(parts))
        start_of_last = len(text) - len(last)
        return any(text.find(s, max(0, start_of_last - len(s) + 1)) != -1 for s in self._targets)

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return np.array([self._row_matches(row) for row in np.asarray(input_ids)], dtype=bool)


def _uses_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    if type(decoder).__name__ == "ByteLevel":
        return True
    try:
        return '"ByteLevel"' in json.dumps(json.loads(decoder.__getstate__()))
    except Exception:  # decoders without a JSON state
        return False


# --- streamers ------------------------------------------------------------------------------------
class BaseStreamer:
    """transformers' streamer protocol: ``put(ids)`` is called with the prompt (B, T), then with each
    step's new tokens (B,); ``end()`` once generation is over."""

    def put(self, value) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Print text as it is generated (transformers ``TextStreamer``; batch size 1).

    Text comes from the tokenizer's incremental detokenizer (``tokenizer.decode_stream``), so a
    character split over several byte-level tokens is printed once complete, never as U+FFFD halves.
    Unlike transformers (which waits for a space), complete characters are printed at once.
    ``decode_kwargs``: ``skip_special_tokens``.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, **decode_kwargs: Any):
        unknown = set(decode_kwargs) - {"skip_special_tokens"}
        if unknown:
            raise GenerationConfigError(f"unknown TextStreamer argument(s): {', '.join(sorted(unknown))}")
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = bool(decode_kwargs.get("skip_special_tokens", False))
        self._detok = None
        self._next_is_prompt = True

    def put(self, value) -> None:
        ids = np.asarray(value)
        if ids.ndim > 1 and ids.shape[0] > 1:
            raise GenerationConfigError("TextStreamer only supports batch size 1; generate rows one at a time")
        ids = ids.reshape(-1).tolist()
        if self._next_is_prompt:
            self._next_is_prompt = False
            if self.skip_prompt:  # the prompt still gives the detokenizer its context
                self._detok = self.tokenizer.decode_stream(self.skip_special_tokens, prompt_ids=ids)
                return
        if self._detok is None:
            self._detok = self.tokenizer.decode_stream(self.skip_special_tokens)
        text = self._detok.put(ids)
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        text = self._detok.flush() if self._detok is not None else ""
        self._detok = None
        self._next_is_prompt = True
        self.on_finalized_text(text, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Print ``text``; a newline after the last piece (override to send it elsewhere)."""
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """Queue the text pieces for another thread: ``for piece in streamer: ...`` while ``generate`` runs
    in a thread (transformers ``TextIteratorStreamer``). ``timeout`` in seconds raises ``queue.Empty``."""

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: queue.Queue = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value


# --- the mixin ------------------------------------------------------------------------------------
def _prepare_input_ids(input_ids, vocab_size: int) -> np.ndarray:
    from .model import check_token_ids  # the forward pass's own check (model imports this module)
    return check_token_ids(input_ids, vocab_size)


def _prepare_attention_mask(attention_mask, ids: np.ndarray, pad: int | None, eos: list[int]) -> np.ndarray:
    """The (B, T) 0/1 mask; when none is given, inferred as transformers'
    ``_prepare_attention_mask_for_generation``: pad tokens are masked if the pad id occurs and is not eos."""
    if attention_mask is None:
        if pad is not None and pad not in eos and (ids == pad).any():
            return (ids != pad).astype(np.int64)
        return np.ones_like(ids)
    m = np.asarray(attention_mask)
    if m.ndim == 1:
        m = m[None]
    if m.shape != ids.shape:
        raise AttentionMaskError(f"attention_mask has shape {m.shape} but input_ids has {ids.shape}: pass the mask the "
                                 "tokenizer returned with the ids (one 0/1 entry per token)")
    if not np.isin(m, (0, 1)).all():
        raise AttentionMaskError("attention_mask must contain only 0 (padding) and 1 (token)")
    empty = np.flatnonzero(m.sum(-1) == 0)
    if empty.size:
        raise AttentionMaskError(f"attention_mask row {int(empty[0])} masks every token: "
                                 "there is no prompt to continue")
    if (m[:, -1] == 0).any():
        warnings.warn("right padding detected: decoder-only models generate after the last position, so pad prompts "
                      "on the left (tokenizer padding_side='left') for correct results", stacklevel=3)
    return m.astype(np.int64)


def _position_ids(mask: np.ndarray) -> np.ndarray:
    """transformers 5.x ``_prepare_position_ids_for_generation``: count real tokens; padding gets 0."""
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 0, pos).astype(np.int64)


class GenerationMixin:
    """Adds ``generate`` to a causal LM (``self(...)`` returning ``.logits``, ``self.config``)."""

    # -- generation config ------------------------------------------------------------------------
    @property
    def generation_config(self) -> GenerationConfig:
        """Defaults for ``generate``: the checkpoint's ``generation_config.json`` when it has one,
        else the special tokens of config.json (transformers ``GenerationConfig.from_model_config``)."""
        gc = self.__dict__.get("_generation_config")
        if gc is None:
            gc = GenerationConfig.from_model_config(self.config)
            folder = self._checkpoint_folder()
            if folder is not None and (folder / GENERATION_CONFIG_NAME).is_file():
                from_file = GenerationConfig.from_pretrained(folder)
                # Tokens the file leaves out come from config.json.
                gc = from_file.update(**{k: v for k, v in gc.to_dict().items()
                                         if k.endswith("_token_id") and getattr(from_file, k) is None})
            self.__dict__["_generation_config"] = gc
        return gc

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        if not isinstance(value, GenerationConfig):
            raise GenerationConfigError(f"generation_config must be a GenerationConfig, got {type(value).__name__}")
        self.__dict__["_generation_config"] = value

    def _checkpoint_folder(self) -> Path | None:
        inner = getattr(self, "model", None)
        ckpt = getattr(inner, "checkpoint", None)
        path = getattr(ckpt, "path", None)
        if path is None:
            return None
        path = Path(path)
        return path if path.is_dir() else path.parent

    # -- generate ---------------------------------------------------------------------------------
    def generate(self, input_ids=None, attention_mask=None, generation_config: GenerationConfig | None = None, *,
                 max_new_tokens: int | None = None, max_length: int | None = None,
                 min_new_tokens: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 stop_strings: str | list[str] | None = None, num_return_sequences: int | None = None,
                 cache_implementation: str | None = None, return_dict_in_generate: bool | None = None,
                 output_scores: bool | None = None, output_logits: bool | None = None,
                 tokenizer=None, streamer: BaseStreamer | None = None, seed: int | None = None,
                 rng: np.random.Generator | None = None, past_key_values: KVCache | None = None,
                 max_cache_len: int | None = None, logits_processor: Iterable | None = None, **kwargs):
        """Continue ``input_ids`` (B, T); returns (B, T + n) ids, or a GenerateDecoderOnlyOutput.

        Settings not given come from ``generation_config`` (default: ``self.generation_config``).
        Sampling (``do_sample=True``) draws from ``rng`` or ``np.random.default_rng(seed)``.
        ``cache_implementation="static"`` preallocates the cache once for prompt + max_new_tokens
        (or ``max_cache_len``); ``past_key_values`` continues from a cache holding a prefix of input_ids.
        ``stop_strings`` needs ``tokenizer``. ``logits_processor``: extra callables
        ``(ids, scores) -> scores`` applied after the built-in processors, before the sampling warpers.
        """
        if isinstance(input_ids, dict):  # model.generate(tokenizer(..., return_tensors="np")) works too
            attention_mask = input_ids.get("attention_mask", attention_mask)
            input_ids = input_ids.get("input_ids")
        if input_ids is None:
            raise InputError("generate() needs input_ids: the prompt token ids, shape (batch, tokens)")
        if kwargs:
            raise GenerationConfigError(f"unexpected generate() argument(s): {', '.join(sorted(kwargs))}")
        base = generation_config if generation_config is not None else self.generation_config
        if not isinstance(base, GenerationConfig):
            raise GenerationConfigError(f"generation_config must be a GenerationConfig, got {type(base).__name__}")
        gc = base.update(max_new_tokens=max_new_tokens, max_length=max_length, min_new_tokens=min_new_tokens,
                         do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         stop_strings=stop_strings, num_return_sequences=num_return_sequences,
                         cache_implementation=cache_implementation, return_dict_in_generate=return_dict_in_generate,
                         output_scores=output_scores, output_logits=output_logits)

        V = self.config.vocab_size
        ids = _prepare_input_ids(input_ids, V)
        gc.validate(V, prompt_length=ids.shape[1])
        eos = normalize_token_ids(gc.eos_token_id, "eos_token_id")
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)
        mask = _prepare_attention_mask(attention_mask, ids, pad, eos)
        if gc.num_return_sequences > 1:  # transformers _expand_inputs_for_generation: repeat each row
            ids = np.repeat(ids, gc.num_return_sequences, axis=0)
            mask = np.repeat(mask, gc.num_return_sequences, axis=0)
        stop = StopStringCriteria(tokenizer, gc.stop_strings) if gc.stop_strings is not None else None
        sampler_rng = make_rng(seed, rng)  # checked even for greedy decoding, which draws nothing
        if streamer is not None and not all(callable(getattr(streamer, m, None)) for m in ("put", "end")):
            raise GenerationConfigError("streamer must have put(ids) and end() methods (see pycohere.TextStreamer)")
        return self._generate_loop(ids, mask, gc, eos, pad, stop, sampler_rng, streamer,
                                   past_key_values, max_cache_len, logits_processor)

    def _make_cache(self, gc: GenerationConfig, batch: int, total: int, past_key_values, max_cache_len) -> KVCache:
        if past_key_values is not None:
            cache = past_key_values
            if not isinstance(cache, KVCache) or len(cache) != self.config.num_hidden_layers:
                raise CacheError("past_key_values must be a pycohere KVCache made for this model "
                                 "(KVCache.for_model(model.config))")
        else:
            static = gc.cache_implementation == "static"
            if max_cache_len is not None and (not isinstance(max_cache_len, (int, np.integer)) or max_cache_len < 1):
                raise GenerationConfigError(f"max_cache_len must be a positive integer, got {max_cache_len!r}")
            cache = KVCache.for_model(self.config, max_cache_len=max_cache_len or total, static=static)
        if cache.static and cache.max_cache_len < total:
            raise CacheError(f"the static cache holds {cache.max_cache_len} tokens but the prompt plus max_new_tokens "
                             f"needs {total}; raise max_cache_len or lower max_new_tokens")
        if cache.batch_size not in (None, batch):
            raise CacheError(f"past_key_values holds batch {cache.batch_size}, input_ids has batch {batch}")
        return cache

    def _generate_loop(self, ids, mask, gc, eos, pad, stop, rng, streamer, past_key_values, max_cache_len,
                       extra_processors):
        B, T = ids.shape
        max_new = gc.resolved_max_new_tokens(T)
        cache = self._make_cache(gc, B, T + max_new, past_key_values, max_cache_len)
        past = cache.get_seq_length()
        if past >= T:
            raise CacheError(f"past_key_values already holds {past} tokens but input_ids has only {T}: pass the "
                             "full sequence (cached prefix + new tokens) as input_ids")
        positions = _position_ids(mask)
        # transformers 5.x: the repetition penalty ignores each row's left padding.
        padding_lengths = np.argmax(mask != 0, axis=1)
        processors = build_logits_processors(
            do_sample=False, repetition_penalty=gc.repetition_penalty, min_new_tokens=gc.min_new_tokens,
            eos_token_id=eos, prompt_length=T, prompt_ignore_length=padding_lengths)
        processors.extend(extra_processors or [])
        if gc.do_sample:  # warpers come after user processors (transformers _get_logits_processor)
            processors.extend(build_logits_processors(do_sample=True, temperature=gc.temperature, top_k=gc.top_k,
                                                      top_p=gc.top_p, min_p=gc.min_p, repetition_penalty=None))
        pad_finished = bool(eos) and pad is not None   # transformers pads only with an eos criterion
        unfinished = np.ones(B, dtype=bool)
        scores_out, logits_out = [], []
        if streamer is not None:
            streamer.put(ids)

        out = self(ids[:, past:], attention_mask=mask, position_ids=positions[:, past:], past_key_values=cache,
                   use_cache=True, logits_to_keep=1)
        for step in range(max_new):
            logits = out.logits[:, -1].astype(np.float32)             # (B, V), as transformers' float32 copy
            scores = processors(ids, logits)
            if gc.output_scores:
                scores_out.append(scores)
            if gc.output_logits:
                logits_out.append(logits)
            next_tokens = sample_from_scores(scores, rng) if gc.do_sample else greedy_from_scores(scores)
            if pad_finished:
                next_tokens = np.where(unfinished, next_tokens, pad)
            ids = np.concatenate([ids, next_tokens[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones((B, 1), dtype=mask.dtype)], axis=1)
            positions = positions[:, -1:] + 1
            unfinished &= ~self._stopped(ids, eos, stop)
            if streamer is not None:
                streamer.put(next_tokens)
            if not unfinished.any() or step == max_new - 1:
                break
            out = self(next_tokens[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
        if streamer is not None:
            streamer.end()
        if gc.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(ids, tuple(scores_out) if gc.output_scores else None,
                                             tuple(logits_out) if gc.output_logits else None, cache)
        return ids

    @staticmethod
    def _stopped(ids: np.ndarray, eos: list[int], stop: StopStringCriteria | None) -> np.ndarray:
        """Rows whose newest token ends them: an eos id (``EosTokenCriteria``) or a stop string."""
        done = np.isin(ids[:, -1], eos) if eos else np.zeros(ids.shape[0], dtype=bool)
        if stop is not None:
            done |= stop(ids)
        return done
