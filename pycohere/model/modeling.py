"""Models: typed parameters from a checkpoint + the layer functions of ``pycohere.spec.layers``.

Public names follow transformers so the two can be compared side by side:
``CohereModel`` / ``CohereForCausalLM``, ``Cohere2Model`` / ``Cohere2ForCausalLM`` and
``AutoModelForCausalLM.from_pretrained(path)``.

The public ``__call__`` validates its inputs once (``pycohere.model.inputs``) and builds the per-call
state (RoPE tables, query indices, padding) once; the forward inside trusts them, and so does the
generation loop, which calls it directly every step. With the numba backend (float32) and no tap,
layers run the engine (``pycohere.model.engine``), the fast twin of the spec's decoder layer.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ..checkpoints.probe import Probe, probe
from ..config import Cohere2Config, CohereConfig
from ..errors import ConfigError, InputError
from ..generation.utils import GenerationMixin
from ..kernels.decode import DecodeEngine
from ..kernels.dispatch import resolve_backend
from ..quant.config import resolve_quantization
from ..spec import layers as L
from ..spec.cache import KVCache, layer_windows
from ..spec.params import Dims, ForwardState, ModelParams
from ..spec.rope import compute_inv_freq, rope_cos_sin
from ..spec.taps import Hooks, Recorder, make_tap
from . import engine
from .inputs import (ACTIVATION_MODES, check_cache, check_embeds, check_labels, check_mask,
                     check_positions, check_token_ids, keep_positions, resolve_dtype)
from .outputs import BaseModelOutputWithPast, CausalLMOutput
from .params import load_params

#: Prompt tokens per pass through the layers (``prefill_chunk_size``): a long prompt runs chunk by chunk
#: through the KV cache (vLLM's and llama.cpp's ``n_ubatch`` chunked prefill), so the MLP's (T, F)
#: activations and each matmul's input stay bounded whatever the prompt's length. Chosen by
#: measurement (BENCHMARKS.md "Prefill (issue 15)"): f16 / quantized weights are widened to tiles again
#: for each chunk (2-3 % of the matmuls at 512) and their products (BLAS then; ``kernels.tiles.gemm``
#: now, which runs alike at 128 and 512 rows, as on bf16) were 13 % faster per row at 512 rows than at 128.
PREFILL_CHUNK_SIZE = 512

HUB_ARGS = ("revision", "cache_dir", "local_files_only", "token", "gguf_file")


class _Pretrained:
    config_class: type = CohereConfig

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | Probe, dtype="float32", backend: str = "auto",
                        materialize: bool = False, config=None, revision: str | None = None,
                        cache_dir=None, local_files_only: bool | None = None, token=None,
                        quantization_config=None, load_in_8bit: bool = False, load_in_4bit: bool = False,
                        activations: str = "float32", gguf_file: str | None = None,
                        prefill_chunk_size: int | None = None, **kwargs):
        """Load a checkpoint folder (config.json + safetensors, single or sharded), a GGUF file, a hub repo
        id (fetched into the standard hub cache; ``HF_HUB_OFFLINE=1`` uses the cache only) or a
        ``pycohere.checkpoints.Probe`` of one.

        dtype: "float32" (as transformers) or "float64" (the golden reference path).
        backend: "numpy" (the spec), "numba" or "auto".
        materialize: widen every weight once into RAM (faster numpy path, 2-4x the file in RAM);
            by default weights stay memory-mapped and are widened per use.
        quantization_config: a ``pycohere.QuantizationConfig`` (or its dict) to quantize the float
            weights tensor by tensor while loading; ``load_in_8bit=True`` is int8 and
            ``load_in_4bit=True`` nf4 (as transformers' BitsAndBytesConfig shorthands). A checkpoint
            written by ``pycohere quantize`` loads quantized without any of these.
        activations: "float32" (exact: x @ W.T with the dequantized weights, as transformers) or
            "llama.cpp": round each matmul's input as llama.cpp's CPU backend does for the weight's
            type (8-bit blocks for quantized GGUF weights), to reproduce llama.cpp's numbers.
        gguf_file: a GGUF file inside the folder or hub repo ``path`` (as transformers); for a repo
            only that file (and its split parts) is downloaded.
        prefill_chunk_size: prompts longer than this run through the layers this many tokens at a time
            (through the KV cache, a temporary one without past_key_values: activations stay bounded);
            0 never chunks; default ``PREFILL_CHUNK_SIZE``. Results equal an unchunked forward (within
            1e-5 relative).
        """
        if kwargs:
            raise InputError(f"unexpected from_pretrained argument(s): {', '.join(sorted(kwargs))}")
        found = probe(path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token,
                      gguf_file=gguf_file)
        config = config or found.config
        if config.model_type != cls.config_class.model_type:
            raise ConfigError(f"{cls.__name__} reads model_type {cls.config_class.model_type!r}, but "
                              f"{found.path} is {config.model_type!r}; use AutoModelForCausalLM")
        quantization = resolve_quantization(quantization_config, load_in_8bit, load_in_4bit)
        if activations not in ACTIVATION_MODES:
            raise InputError(f"activations={activations!r} is not one of {ACTIVATION_MODES}")
        dt = resolve_dtype(dtype)
        backend = resolve_backend(backend)
        source = found.open_weights(quantization, config)
        model = cls(config, load_params(source, config, dt, backend, materialize, activations), dtype=dt,
                    backend=backend, checkpoint=source, probe=found)
        if prefill_chunk_size is not None:
            model.prefill_chunk_size = prefill_chunk_size
        return model


class CohereModel(_Pretrained):
    """The bare decoder: embeddings -> N parallel blocks -> final LayerNorm."""

    config_class = CohereConfig

    def __init__(self, config, params: ModelParams, dtype=np.float32, backend: str = "numpy", checkpoint=None,
                 probe: Probe | None = None):
        self.config = config
        self.params = params
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.checkpoint = checkpoint
        self.probe = probe
        self.dims = Dims.from_config(config)
        self._windows = layer_windows(config)
        for i, p in enumerate(params.layers):  # each layer's attention kind, decided here once
            p.sliding_window, p.use_rope = self._windows[i], self.layer_uses_rope(i)
        self._fast = backend == "numba" and self.dtype == np.float32
        # the compiled one-token step, when every matrix has a decode kernel (else decode runs the layers)
        self._decoder = DecodeEngine.build(params, self.dims) if self._fast else None
        self._inv_freq: tuple | None = None  # (inv_freq, attention_factor) when it does not depend on length
        self._warned_long = False
        self.prefill_chunk_size = PREFILL_CHUNK_SIZE

    @property
    def prefill_chunk_size(self) -> int:
        """Prompt tokens per pass through the layers; 0: the whole prompt in one pass."""
        return self._prefill_chunk_size

    @prefill_chunk_size.setter
    def prefill_chunk_size(self, n) -> None:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise InputError(f"prefill_chunk_size must be an int >= 0 (tokens per prefill pass, 0 = no "
                             f"chunking), got {n!r}")
        self._prefill_chunk_size = int(n)

    # -- per-layer attention kind -----------------------------------------------------------
    def layer_uses_rope(self, i: int) -> bool:
        """COHERE: Cohere2 full-attention layers have no positional encoding (NoPE)."""
        return self._windows[i] is not None if isinstance(self.config, Cohere2Config) else True

    # -- the boundary: checked inputs -> trusted state ------------------------------------------
    def _check_ids(self, input_ids) -> np.ndarray:
        return check_token_ids(input_ids, self.config.vocab_size)

    def _prepare(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, inputs_embeds):
        """Validate one call's inputs -> (x (B, T, D), state, cache)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            x = self._embed(self._check_ids(input_ids))
        else:
            x = check_embeds(inputs_embeds, self.config.hidden_size, self.dtype)
        B, T, _ = x.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache.for_model(self.config)
        if cache is not None:
            check_cache(cache, self.config, self._windows, B, T)
        past = cache.get_seq_length() if cache is not None else 0
        kv_valid = check_mask(attention_mask, B, past + T)
        pos = check_positions(position_ids, B, T, past)
        segments = None
        if cache is None and attention_mask is None and position_ids is not None:
            # transformers: position ids that restart mark sequences packed into one row; tokens attend
            # only within their own sequence (masking_utils.find_packed_sequence_indices)
            segments = np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(np.diff(pos, axis=1) != 1, axis=1)], 1)
            if not segments.any():
                segments = None
        return x, self._state(pos, past, kv_valid, segments), cache

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.params.embed_tokens.rows(ids, self.dtype)       # (B, T, D)

    def _state(self, pos: np.ndarray, past: int, kv_valid, segments=None) -> ForwardState:
        """RoPE tables for positions ``pos`` (B, T), query indices past..past+T-1, padding (B, past + T)."""
        max_pos = int(pos.max()) + 1
        if max_pos > self.config.max_position_embeddings and not self._warned_long:
            self._warned_long = True
            warnings.warn(f"position {max_pos - 1} is beyond max_position_embeddings "
                          f"({self.config.max_position_embeddings}); results depend on the RoPE scaling "
                          f"({self.config.rope_type!r}) as in transformers", stacklevel=4)
        inv_freq, att_factor = self._rope_frequencies(max_pos)
        cos, sin = rope_cos_sin(pos, inv_freq, att_factor)           # (B, T, Dh/2)
        T = pos.shape[1]
        return ForwardState(cos, sin, np.arange(past, past + T), kv_valid, segments)

    def _rope_frequencies(self, max_pos: int):
        # dynamic and longrope depend on the call's length (transformers' dynamic_rope_update); the
        # others are the same for every call and are computed once.
        if self.config.rope_type in ("dynamic", "longrope"):
            return compute_inv_freq(self.config, seq_len=max_pos, dtype=self.dtype)
        if self._inv_freq is None:
            self._inv_freq = compute_inv_freq(self.config, seq_len=max_pos, dtype=self.dtype)
        return self._inv_freq

    # -- forward ------------------------------------------------------------------------------
    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache: bool = False, output_hidden_states: bool = False,
                 output_attentions: bool = False, inputs_embeds=None, recorder=None, hooks=None) -> BaseModelOutputWithPast:
        """transformers' forward. ``recorder``: a tap ``rec(name, activation)`` shown every intermediate
        (``pycohere.Recorder``); ``hooks``: {tap name or pattern: fn(activation, name)} whose non-None
        results replace the activation for the rest of the forward (``pycohere.spec.taps``)."""
        tap = make_tap(recorder, hooks)
        out = self._run(input_ids, attention_mask, position_ids, past_key_values, use_cache, output_hidden_states,
                        output_attentions, inputs_embeds, tap)
        _check_hooks(tap)
        return out

    def _run(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, output_hidden_states,
             output_attentions, inputs_embeds, tap) -> BaseModelOutputWithPast:
        x, state, cache = self._prepare(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                                        inputs_embeds)
        all_hidden = [x] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        # a padded query sees no key: the spec gives it the mean of V over all S keys, which a chunk
        # (fewer keys) cannot reproduce, so a public forward over padded queries runs in one pass
        # (generation keeps only the last, never padded, position and always chunks)
        chunkable = state.kv_valid is None or bool(state.kv_valid[:, int(state.q_index[0]):].all())
        h = self._forward(x, state, cache, tap, all_hidden, all_attn, chunkable=chunkable)
        if output_hidden_states:
            all_hidden[-1] = h  # as transformers: the last hidden state is taken after the final norm
        return BaseModelOutputWithPast(h, cache if use_cache or past_key_values is not None else None,
                                       tuple(all_hidden) if all_hidden is not None else None,
                                       tuple(all_attn) if all_attn is not None else None)

    def _forward(self, x: np.ndarray, state: ForwardState, cache: KVCache | None, recorder=None,
                 all_hidden: list | None = None, all_attn: list | None = None,
                 chunkable: bool = True) -> np.ndarray:
        """The trusted forward: x (B, T, D) embedded inputs -> (B, T, D) after the final LayerNorm.

        A prompt longer than ``prefill_chunk_size`` (and no tap, no per-layer outputs, no packed
        sequences) runs in chunks: every layer for tokens [c0, c1), appending their keys to the cache,
        then the next chunk. A query's keys are the same either way (the cache holds everything before
        its chunk; a sliding layer the window - 1 newest), so only summation order changes. Without a
        cache the chunks go through a temporary one (2 L K Dh floats per token), which is still less
        than the live activations of one pass over every token: 8192 tokens on the bench shape peaked
        at 3.36 GB in chunks, 3.52 GB in one pass (BENCHMARKS.md "Prefill (issue 15)"), and the gap
        grows with F / (L K Dh) (Command R+: ~6F + 10D = 325k floats per token against 131k)."""
        chunk = self._prefill_chunk_size
        if (chunkable and chunk and x.shape[1] > chunk and recorder is None and all_hidden is None
                and all_attn is None and state.segments is None):
            return self._forward_chunked(x, state, cache, chunk)
        x = L.tap(recorder, "embed_tokens", x)
        if recorder is not None:
            state.cos = L.tap(recorder, "rope_cos", state.cos)
            state.sin = L.tap(recorder, "rope_sin", state.sin)
        fast = self._fast and recorder is None and all_attn is None and state.segments is None
        for i, p in enumerate(self.params.layers):
            cache_kv = cache.layers[i].update if cache is not None else _no_cache
            if fast:
                x = engine.decoder_layer(x, p, self.dims, state, cache_kv)
            else:
                x = L.decoder_layer(x, p, self.dims, state, cache_kv, _layer_tap(recorder, all_attn, i))
            if all_hidden is not None:
                all_hidden.append(x)
        return L.tap(recorder, "norm", L.layer_norm(x, self.params.norm, self.dims.eps))

    def _forward_chunked(self, x: np.ndarray, state: ForwardState, cache: KVCache | None, chunk: int) -> np.ndarray:
        B, T, _ = x.shape
        past = int(state.q_index[0])
        if cache is None:  # the chunks need the keys of the earlier ones: a temporary cache, sized once
            cache = KVCache.for_model(self.config, max_cache_len=T)
        out = np.empty(x.shape, dtype=x.dtype)                                      # (B, T, D)
        for c0 in range(0, T, chunk):
            c1 = min(c0 + chunk, T)
            sub = ForwardState(state.cos[:, c0:c1], state.sin[:, c0:c1], state.q_index[c0:c1],
                               None if state.kv_valid is None else state.kv_valid[:, :past + c1])
            out[:, c0:c1] = self._forward(x[:, c0:c1], sub, cache, chunkable=False)
        return out


def _no_cache(k, v):
    return k, v, 0


def _check_hooks(tap) -> None:
    unmatched = tap.unmatched() if isinstance(tap, Hooks) else []
    if unmatched:
        raise InputError(f"hook name(s) {unmatched} matched no intermediate of this forward; tap names look like "
                         "embed_tokens, layers.0.q_rope, layers.3.attn_out, norm, logits (pycohere.spec.taps)")


def _layer_tap(recorder, all_attn, layer: int):
    """The tap of layer ``layer``: names prefixed with ``layers.{layer}.``; attention probabilities also
    collected for output_attentions."""
    if recorder is None and all_attn is None:
        return None
    prefix = f"layers.{layer}."

    def rec(name, value):
        out = None if recorder is None else recorder(prefix + name, value)
        if all_attn is not None and name == "attn_probs":
            all_attn.append(value if out is None else out)  # what the forward used: after any hook
        return out
    return rec


class CohereForCausalLM(_Pretrained, GenerationMixin):
    """Decoder + output head: logits = (final hidden @ E.T) * logit_scale."""

    config_class = CohereConfig
    base_model_class = CohereModel

    def __init__(self, config, params: ModelParams, dtype=np.float32, backend: str = "numpy", checkpoint=None,
                 probe: Probe | None = None):
        self.model = self.base_model_class(config, params, dtype, backend, checkpoint, probe)
        self.config = config

    params = property(lambda self: self.model.params)
    dtype = property(lambda self: self.model.dtype)
    backend = property(lambda self: self.model.backend)
    probe = property(lambda self: self.model.probe)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache: bool = False, output_hidden_states: bool = False, output_attentions: bool = False,
                 logits_to_keep: int | Any = 0, labels=None, inputs_embeds=None, recorder=None,
                 hooks=None) -> CausalLMOutput:
        """transformers' forward; ``recorder`` and ``hooks`` as for ``CohereModel``."""
        tap = make_tap(recorder, hooks)
        out = self.model._run(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                              output_hidden_states, output_attentions, inputs_embeds, tap)
        h = out.last_hidden_state                                     # (B, T, D)
        h_kept = keep_positions(h, logits_to_keep)                   # (B, T', D) or (N, D)
        logits = L.tap(tap, "logits", L.lm_head(h_kept, self.params.lm_head, self.config.logit_scale))
        _check_hooks(tap)
        loss = None
        if labels is not None:
            loss = L.causal_lm_loss(logits, check_labels(labels, logits, h.shape[1]))
        return CausalLMOutput(logits, loss, out.past_key_values, out.hidden_states, out.attentions)

    def run_with_cache(self, input_ids=None, names=None, hooks=None, **kwargs):
        """``(output, cache)``: the forward of ``input_ids`` and every intermediate it computed, as
        TransformerLens's ``run_with_cache``: ``cache[name]`` is the activation (a copy, after any hook),
        ``names`` fnmatch patterns selecting which to keep (default: all), ``hooks`` as for ``__call__``."""
        rec = Recorder(("*",) if names is None else names)
        out = self(input_ids, recorder=rec, hooks=hooks, **kwargs)
        return out, dict(rec.records)

    def kernel_report(self) -> list[str]:
        """Which code runs this model's matmuls and decode steps (``pycohere inspect``, tools/bench.py)."""
        m = self.model
        lines = [f"backend {m.backend}, compute dtype {m.dtype}"]
        if m._fast:
            from ..kernels.dispatch import prefill_path
            paths: dict[str, set] = {}  # kernel -> the storages that run it
            for w in (w for layer in self.params.layers for w in layer.matrices()):
                paths.setdefault(prefill_path(w), set()).add(str(getattr(w, "storage", "?")))
            lines.append("prefill matmuls: " + "; ".join(f"{', '.join(sorted(k))}: {p}" for p, k in paths.items()))
        if m._decoder is not None:
            return lines + m._decoder.describe()
        why = ("the backend is numpy" if m.backend != "numba" else "float64 runs the spec" if not m._fast
               else "a matrix has no decode kernel")
        return lines + [f"decode step: the layers of pycohere.spec.layers ({why})"]

    # -- the generation protocol (pycohere.generation.utils.GenerationMixin) ----------------------
    def _check_token_ids(self, input_ids) -> np.ndarray:
        return self.model._check_ids(input_ids)

    def _next_token_logits(self, ids: np.ndarray, kv_valid: np.ndarray, positions: np.ndarray,
                           cache: KVCache) -> np.ndarray:
        """Trusted step: ids (B, T) already checked, kv_valid (B, past + T) bool, positions (B, T) ->
        logits (B, V) of the last position; appends to ``cache``."""
        m = self.model
        past = cache.get_seq_length()
        state = m._state(positions, past, kv_valid)
        if m._decoder is not None and ids.shape[1] == 1:  # one token per sequence: the compiled step
            x = np.ascontiguousarray(m._embed(ids)[:, 0])                           # (B, D)
            return m._decoder.logits(x, state.cos[:, 0], state.sin[:, 0], kv_valid, cache)
        h = m._forward(m._embed(ids), state, cache)                                  # (B, T, D)
        return L.lm_head(h[:, -1], self.params.lm_head, self.config.logit_scale)    # (B, V)

    @property
    def prefill_chunk_size(self) -> int:
        """Prompt tokens per pass through the layers (``CohereModel.prefill_chunk_size``)."""
        return self.model.prefill_chunk_size

    @prefill_chunk_size.setter
    def prefill_chunk_size(self, n) -> None:
        self.model.prefill_chunk_size = n


class Cohere2Model(CohereModel):
    config_class = Cohere2Config


class Cohere2ForCausalLM(CohereForCausalLM):
    config_class = Cohere2Config
    base_model_class = Cohere2Model


MODEL_CLASSES = {"cohere": CohereForCausalLM, "cohere2": Cohere2ForCausalLM}
BASE_MODEL_CLASSES = {"cohere": CohereModel, "cohere2": Cohere2Model}


def _auto(classes, path, kwargs):
    found = probe(path, **{k: kwargs.pop(k, None) for k in HUB_ARGS})
    return classes[found.config.model_type].from_pretrained(found, **kwargs)


class AutoModelForCausalLM:
    """Dispatch on config.json's ``model_type`` (transformers' AutoModelForCausalLM)."""

    @staticmethod
    def from_pretrained(path, **kwargs) -> CohereForCausalLM:
        return _auto(MODEL_CLASSES, path, kwargs)


class AutoModel:
    @staticmethod
    def from_pretrained(path, **kwargs) -> CohereModel:
        return _auto(BASE_MODEL_CLASSES, path, kwargs)


__all__ = ["AutoModel", "AutoModelForCausalLM", "BaseModelOutputWithPast", "CausalLMOutput", "Cohere2ForCausalLM",
           "Cohere2Model", "CohereForCausalLM", "CohereModel"]
