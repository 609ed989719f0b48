"""Text generation: ``model.generate(...)`` as transformers' ``GenerationMixin`` (greedy and sampling).

The loop is transformers' ``GenerationMixin._sample`` (``generation/utils.py``, v5.24):

1. positions ``cumsum(attention_mask) - 1`` (padding set to 0, as 5.x ``_prepare_position_ids_for_generation``;
   4.x used 1 — padded positions are never attended, so the value does not matter);
2. one prefill forward over the prompt into a KV cache, keeping only the last logits (``logits_to_keep=1``);
3. each step: logits -> float32 -> processors (``pycohere.generation.sampling``) -> argmax or a draw -> finished rows
   get ``pad_token_id`` -> stopping criteria (max length, eos, stop strings) -> one-token forward.

Output is ``(B, T + n)`` int64: the prompt followed by the n generated tokens (n <= max_new_tokens; fewer
when every row stopped early). Streamers get the prompt first, then each step's tokens, then ``end()``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import AttentionMaskError, CacheError, GenerationConfigError, InputError
from ..spec.cache import GiB, KVCache, cache_bytes, layer_windows, physical_memory
from .config import GENERATION_CONFIG_NAME, GenerateDecoderOnlyOutput, GenerationConfig
from .sampling import build_logits_processors, greedy_from_scores, make_rng, normalize_token_ids, sample_from_scores
from .stopping import StopStringCriteria
from .streamers import BaseStreamer

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
    """Adds ``generate`` to a causal LM.

    The protocol the host class provides (``pycohere.model.CohereForCausalLM`` does):

    * ``config``: the model config (vocab_size, num_hidden_layers, layer windows, special tokens);
    * ``_check_token_ids(input_ids) -> ids (B, T) int64``: the public forward's own validation;
    * ``_next_token_logits(ids, kv_valid, positions, cache) -> logits (B, V)``: a trusted forward over
      already-checked inputs (``kv_valid`` (B, past + T) bool or None, ``positions`` (B, T)) that appends
      to ``cache`` and returns the last position's logits;
    * optionally ``probe`` (a ``pycohere.checkpoints.Probe``) whose folder may hold generation_config.json.

    Inputs are validated once, here; the loop then calls the trusted forward every step.
    """

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
        found = getattr(self, "probe", None)
        return None if found is None else found.folder

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
        (or ``max_cache_len``); the default dynamic cache starts empty and doubles as tokens come (a given
        ``max_cache_len`` is its first size). A run that could not fit in memory at max_new_tokens is a
        GenerationConfigError before anything is allocated. ``past_key_values`` continues from a cache
        holding a prefix of input_ids.
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
        ids = self._check_token_ids(input_ids)
        gc.validate(V, prompt_length=ids.shape[1])
        eos = normalize_token_ids(gc.eos_token_id, "eos_token_id")
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)
        mask = _prepare_attention_mask(attention_mask, ids, pad, eos)
        if gc.num_return_sequences > 1:  # transformers _expand_inputs_for_generation: repeat each row
            ids = np.repeat(ids, gc.num_return_sequences, axis=0)
            mask = np.repeat(mask, gc.num_return_sequences, axis=0)
        self._check_generation_memory(gc, *ids.shape, past_key_values is None)
        stop = StopStringCriteria(tokenizer, gc.stop_strings) if gc.stop_strings is not None else None
        sampler_rng = make_rng(seed, rng)  # checked even for greedy decoding, which draws nothing
        if streamer is not None and not all(callable(getattr(streamer, m, None)) for m in ("put", "end")):
            raise GenerationConfigError("streamer must have put(ids) and end() methods (see pycohere.TextStreamer)")
        return self._generate_loop(ids, mask, gc, eos, pad, stop, sampler_rng, streamer,
                                   past_key_values, max_cache_len, logits_processor)

    def _check_generation_memory(self, gc: GenerationConfig, batch: int, prompt: int, new_cache: bool) -> None:
        """Raise GenerationConfigError before anything is allocated when a run of max_new_tokens could not fit
        in this machine's memory at full length: the token and mask buffers (9 bytes a position), the KV
        cache (which grows as tokens come, so a short answer to a huge limit costs little, but the limit
        must be one the machine could reach), and output_scores / output_logits (a float32 row of V a step)."""
        ram = physical_memory()
        if ram is None:
            return
        c = self.config
        max_new = gc.resolved_max_new_tokens(prompt)
        itemsize = np.dtype(getattr(self, "dtype", np.float32)).itemsize
        windows = layer_windows(c)
        K, Dh = c.num_key_value_heads, c.get_head_dim()
        per_step = batch * 4 * c.vocab_size * (int(bool(gc.output_scores)) + int(bool(gc.output_logits)))

        def need(n_new: int) -> int:
            total = prompt + n_new
            kv = cache_bytes(windows, batch, prompt, total, K, Dh, itemsize) if new_cache else 0
            return 9 * batch * total + kv + per_step * n_new

        if need(max_new) <= ram:
            return
        lo, hi = 0, max_new  # the largest max_new_tokens that fits: need() grows with n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(mid) <= ram else (lo, mid - 1)
        per_token = need(max_new) - need(max_new - 1) if max_new > 1 else need(1)
        raise GenerationConfigError(
            f"max_new_tokens={max_new} (prompt {prompt}, batch {batch}) would need {need(max_new) / GiB:.1f} GiB "
            f"at full length ({per_token / 1024:.1f} KiB a token: KV cache, token buffers"
            f"{', scores' if per_step else ''}), more than this machine's {ram / GiB:.1f} GiB of memory; "
            f"lower max_new_tokens to at most {lo}" + (" or generate fewer sequences at once" if batch > 1 else ""))

    def _make_cache(self, gc: GenerationConfig, batch: int, total: int, past_key_values, max_cache_len) -> KVCache:
        if past_key_values is not None:
            cache = past_key_values
            if not isinstance(cache, KVCache) or len(cache) != self.config.num_hidden_layers:
                raise CacheError("past_key_values must be a pycohere KVCache made for this model "
                                 "(KVCache.for_model(model.config))")
            if cache.windows != layer_windows(self.config):
                raise CacheError(f"past_key_values was made for layers with windows {cache.windows}, this model's "
                                 f"are {layer_windows(self.config)}; use KVCache.for_model(model.config)")
        else:
            static = gc.cache_implementation == "static"
            if max_cache_len is not None and (not isinstance(max_cache_len, (int, np.integer)) or max_cache_len < 1):
                raise GenerationConfigError(f"max_cache_len must be a positive integer, got {max_cache_len!r}")
            # a static cache is sized once for the whole run; a dynamic one starts empty and doubles as tokens
            # come (amortised O(1) a token), so a large max_new_tokens with an early eos costs nothing
            cache = KVCache.for_model(self.config, max_cache_len=(max_cache_len or total) if static else max_cache_len,
                                      static=static)
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

        # Buffers for the whole run (the prompt, then one token a step), validated once above: the
        # steps pass views to the trusted forward. No padding: no mask to apply at all.
        total = T + max_new
        seq = np.empty((B, total), dtype=np.int64)
        seq[:, :T] = ids
        valid = np.ones((B, total), dtype=bool)
        valid[:, :T] = mask != 0
        padded = not valid[:, :T].all()
        n = T
        logits = self._next_token_logits(ids[:, past:], valid[:, :T] if padded else None, positions[:, past:], cache)
        for step in range(max_new):
            logits = logits.astype(np.float32)                        # (B, V), as transformers' float32 copy
            scores = processors(seq[:, :n], logits)
            if gc.output_scores:
                scores_out.append(scores)
            if gc.output_logits:
                logits_out.append(logits)
            next_tokens = sample_from_scores(scores, rng) if gc.do_sample else greedy_from_scores(scores)
            if pad_finished:
                next_tokens = np.where(unfinished, next_tokens, pad)
            seq[:, n] = next_tokens
            n += 1
            positions = positions[:, -1:] + 1
            unfinished &= ~self._stopped(seq[:, :n], eos, stop)
            if streamer is not None:
                streamer.put(next_tokens)
            if not unfinished.any() or step == max_new - 1:
                break
            logits = self._next_token_logits(seq[:, n - 1:n], valid[:, :n] if padded else None, positions, cache)
        ids = np.ascontiguousarray(seq[:, :n])
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
