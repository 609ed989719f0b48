"""``GenerationConfig``: generation settings with transformers' names and defaults, and their checks;
``GenerateDecoderOnlyOutput``: what ``generate(return_dict_in_generate=True)`` returns."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, GenerationConfigError, TokenIdError
from ..spec.cache import KVCache
from .sampling import normalize_token_ids

GENERATION_CONFIG_NAME = "generation_config.json"


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
            raise CheckpointNotFoundError(f"no {GENERATION_CONFIG_NAME} at {p}") from None
        except json.JSONDecodeError as e:
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
