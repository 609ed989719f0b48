"""Models: parameters from a checkpoint + the layer functions of ``pycohere.layers``.

Public names follow transformers so the two can be compared side by side:
``CohereModel`` / ``CohereForCausalLM``, ``Cohere2Model`` / ``Cohere2ForCausalLM`` and
``AutoModelForCausalLM.from_pretrained(path)``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import hub
from . import layers as L
from .backends import attention_kernel, resolve_backend
from .cache import KVCache, layer_windows
from .config import Cohere2Config, CohereConfig
from .errors import AttentionMaskError, CacheError, ConfigError, InputError, TokenIdError
from .formats import load_config, open_weights
from .generation import GenerationMixin
from .rope import compute_inv_freq, rope_cos_sin
from .weights import check_manifest, uses_qk_norm

DTYPES = {"float32": np.float32, "float64": np.float64, "fp32": np.float32, "fp64": np.float64}


@dataclass
class BaseModelOutputWithPast:
    last_hidden_state: np.ndarray
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None

    def __getitem__(self, key):  # transformers outputs are also indexable by name
        return getattr(self, key)


@dataclass
class CausalLMOutput:
    logits: np.ndarray
    loss: float | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None

    def __getitem__(self, key):
        return getattr(self, key)


def _as_array(value, what: str, error=InputError) -> np.ndarray:
    """np.asarray with a named error for ragged or non-numeric input (instead of NumPy's ValueError)."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):
        raise error(f"{what} must be a rectangular array of numbers, but its rows have different lengths; pad "
                    "them to one length (tokenizer(texts, padding=True, return_tensors='np') pads on the left and "
                    "returns the attention_mask)") from None
    if a.dtype == object or a.dtype.kind in "USV":
        raise error(f"{what} must hold numbers, got {a.dtype}; pad rows to the same length")
    return a


def check_token_ids(input_ids, vocab_size: int) -> np.ndarray:
    """input_ids (B, T) or (T,) -> int64 (B, T), refusing ragged rows, non-integers and ids outside the vocabulary."""
    ids = _as_array(input_ids, "input_ids")
    if not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise InputError(f"input_ids must be integers (got dtype {ids.dtype}); pass token ids, e.g. "
                         "from tokenizer.encode()")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise InputError(f"input_ids must have shape (batch, tokens) with at least one token, got {ids.shape}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        b, t = map(int, np.argwhere(bad)[0])
        raise TokenIdError(f"token id {int(ids[b, t])} at batch {b}, position {t} is outside the vocabulary "
                           f"[0, {vocab_size}); check that the tokenizer belongs to this model")
    return ids.astype(np.int64)


def _resolve_dtype(dtype) -> np.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; use 'float32' or 'float64'")
        return np.dtype(DTYPES[dtype])
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise InputError(f"dtype {dt} is not supported; use 'float32' or 'float64'")
    return dt


ACTIVATIONS = ("float32", "llama.cpp")


def load_params(source, config, dtype, backend: str, materialize: bool = False,
                activations: str = "float32") -> dict:
    """A weight source's tensors (``pycohere.formats``) -> the parameter tree the layer functions take.

    Matrices become ``Weight`` objects over the mmap'd views (widened per use unless ``materialize``;
    ``QuantizedWeight`` over packed views of quantized checkpoints, or quantized now when the source
    was opened with a QuantizationConfig); the small vectors (norms, biases) are widened to the
    compute dtype now. ``activations="llama.cpp"`` rounds the input of every matmul as llama.cpp's
    CPU dot products do for the weight's type (``pycohere.quant.activations``).
    """
    check_manifest(config, source.shapes, where=str(source.path), problems=source.problems)
    source.check_quantization_plan()  # every group size fits, before quantizing anything

    def matrix(name):
        w = source.matrix(name, dtype, backend, materialize)
        if activations == "llama.cpp":
            from .quant.activations import LlamaCppActivations
            w = LlamaCppActivations(w, name)
        return w

    def vector(name):
        return source.vector(name, dtype)

    layers = []
    for i in range(config.num_hidden_layers):
        pre = f"model.layers.{i}."
        p = {"input_layernorm": vector(pre + "input_layernorm.weight")}
        for short in ("q_proj", "k_proj", "v_proj", "o_proj"):
            p[short] = matrix(pre + f"self_attn.{short}.weight")
            if config.attention_bias:
                p[short[0] + "_bias"] = vector(pre + f"self_attn.{short}.bias")
        if uses_qk_norm(config):
            p["q_norm"] = vector(pre + "self_attn.q_norm.weight")
            p["k_norm"] = vector(pre + "self_attn.k_norm.weight")
        for short in ("gate_proj", "up_proj", "down_proj"):
            p[short] = matrix(pre + f"mlp.{short}.weight")
        layers.append(p)
    embed = matrix("model.embed_tokens.weight")
    # COHERE: the output head is the input embedding (tied) unless tie_word_embeddings is false.
    # A file that carries lm_head.weight anyway is used as it is, as transformers 5 does (it does
    # not tie two different saved tensors).
    head = matrix("lm_head.weight") if "lm_head.weight" in source.shapes else embed  # (logical names)
    return {"embed_tokens": embed, "layers": layers, "norm": vector("model.norm.weight"), "lm_head": head}


class _Pretrained:
    config_class: type = CohereConfig

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", backend: str = "auto",
                        materialize: bool = False, config=None, revision: str | None = None,
                        cache_dir=None, local_files_only: bool | None = None, token=None,
                        quantization_config=None, load_in_8bit: bool = False, load_in_4bit: bool = False,
                        activations: str = "float32", gguf_file: str | None = None, **kwargs):
        """Load a checkpoint folder (config.json + safetensors, single or sharded) or a hub repo id
        (fetched into the standard hub cache; ``HF_HUB_OFFLINE=1`` uses the cache only).

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
        """
        if kwargs:
            raise InputError(f"unexpected from_pretrained argument(s): {', '.join(sorted(kwargs))}")
        path = hub.resolve(path, revision, cache_dir, local_files_only, token, gguf_file)
        config = config or load_config(path)
        if config.model_type != cls.config_class.model_type:
            raise ConfigError(f"{cls.__name__} reads model_type {cls.config_class.model_type!r}, but "
                             f"{path} is {config.model_type!r}; use AutoModelForCausalLM")
        from .quant.config import resolve_quantization
        quantization = resolve_quantization(quantization_config, load_in_8bit, load_in_4bit)
        if activations not in ACTIVATIONS:
            raise InputError(f"activations={activations!r} is not one of {ACTIVATIONS}")
        dt = _resolve_dtype(dtype)
        backend = resolve_backend(backend)
        source = open_weights(path, config, quantization)
        return cls(config, load_params(source, config, dt, backend, materialize, activations), dtype=dt,
                   backend=backend, checkpoint=source)


class CohereModel(_Pretrained):
    """The bare decoder: embeddings -> N parallel blocks -> final LayerNorm."""

    config_class = CohereConfig

    def __init__(self, config, params: dict, dtype=np.float32, backend: str = "numpy", checkpoint=None):
        self.config = config
        self.params = params
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.checkpoint = checkpoint
        self._cfg = {"H": config.num_attention_heads, "K": config.num_key_value_heads,
                     "Dh": config.get_head_dim(), "eps": config.layer_norm_eps, "act": config.hidden_act,
                     "attention_kernel": attention_kernel(backend, dtype)}
        self._windows = layer_windows(config)
        self._warned_long = False

    # -- per-layer attention kind -----------------------------------------------------------
    def layer_uses_rope(self, i: int) -> bool:
        """COHERE: Cohere2 full-attention layers have no positional encoding (NoPE)."""
        return self._windows[i] is not None if isinstance(self.config, Cohere2Config) else True

    # -- input checking ---------------------------------------------------------------------
    def _check_ids(self, input_ids) -> np.ndarray:
        return check_token_ids(input_ids, self.config.vocab_size)

    def _check_mask(self, attention_mask, B, total) -> np.ndarray | None:
        if attention_mask is None:
            return None
        m = _as_array(attention_mask, "attention_mask", AttentionMaskError)
        if m.ndim == 1:
            m = m[None]
        if m.shape != (B, total):
            raise AttentionMaskError(f"attention_mask has shape {m.shape} but must be (batch, past + new tokens) = "
                                     f"({B}, {total}): one 0/1 entry per cached and new token")
        if not np.isin(m, (0, 1)).all():
            raise AttentionMaskError("attention_mask must contain only 0 (padding) and 1 (token)")
        return m.astype(bool)

    def _positions(self, position_ids, B, T, past) -> np.ndarray:
        if position_ids is None:
            return np.broadcast_to(np.arange(past, past + T, dtype=np.int64), (B, T))
        pos = _as_array(position_ids, "position_ids")
        if pos.ndim == 1:
            pos = pos[None]
        if not np.issubdtype(pos.dtype, np.integer) or pos.ndim != 2 or pos.shape[1] != T or pos.shape[0] not in (1, B):
            shapes = f"({B}, {T}) or (1, {T})" if B != 1 else f"(1, {T})"
            raise InputError(f"position_ids must be integers of shape {shapes}, got {pos.shape} {pos.dtype}")
        if (pos < 0).any():
            raise InputError("position_ids must be non-negative")
        return np.broadcast_to(pos.astype(np.int64), (B, T))

    # -- forward ------------------------------------------------------------------------------
    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache: bool = False, output_hidden_states: bool = False,
                 output_attentions: bool = False, inputs_embeds=None, recorder=None) -> BaseModelOutputWithPast:
        cfg, P, dt = self.config, self.params, self.dtype
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            ids = self._check_ids(input_ids)
            x = P["embed_tokens"].rows(ids, dt)                      # (B, T, D)
        else:
            x = _as_array(inputs_embeds, "inputs_embeds").astype(dt)
            if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
                raise InputError(f"inputs_embeds must be (batch, tokens, {cfg.hidden_size}), got {x.shape}")
        B, T, _ = x.shape
        if recorder is not None:
            recorder("embed_tokens", x)

        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache.for_model(cfg)
        if cache is not None:
            if not isinstance(cache, KVCache) or len(cache) != cfg.num_hidden_layers:
                raise CacheError("past_key_values must be a pycohere KVCache made for this model "
                                 "(KVCache.for_model(model.config))")
            if cache.windows != self._windows:
                raise CacheError(f"past_key_values was made for layers with windows {cache.windows}, this model's "
                                 f"are {self._windows}; use KVCache.for_model(model.config)")
            if cache.batch_size not in (None, B):
                raise CacheError(f"past_key_values holds batch {cache.batch_size}, input has batch {B}")
            cache.reserve(T)  # fail before any layer appends, never leave the cache half-updated
        past = cache.get_seq_length() if cache is not None else 0

        mask2d = self._check_mask(attention_mask, B, past + T)
        pos = self._positions(position_ids, B, T, past)
        segments = None
        if cache is None and attention_mask is None and position_ids is not None:
            # transformers: position ids that restart mark sequences packed into one row; tokens attend
            # only within their own sequence (masking_utils.find_packed_sequence_indices)
            segments = np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(np.diff(pos, axis=1) != 1, axis=1)], 1)
            if not segments.any():
                segments = None
        max_pos = int(pos.max()) + 1
        if max_pos > cfg.max_position_embeddings and not self._warned_long:
            self._warned_long = True
            warnings.warn(f"position {max_pos - 1} is beyond max_position_embeddings "
                          f"({cfg.max_position_embeddings}); results depend on the RoPE scaling "
                          f"({cfg.rope_type!r}) as in transformers", stacklevel=2)
        inv_freq, att_factor = compute_inv_freq(cfg, seq_len=max_pos, dtype=dt)
        cos, sin = rope_cos_sin(pos, inv_freq, att_factor)           # (B, T, Dh/2)
        if recorder is not None:
            recorder("rope_cos", cos)
            recorder("rope_sin", sin)

        q_index = np.arange(past, past + T)
        all_hidden = [x] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for i, p in enumerate(P["layers"]):
            prefix = f"layers.{i}."
            if cache is not None:
                cache_kv = lambda k, v, i=i: cache.update(i, k, v)
            else:
                cache_kv = lambda k, v: (k, v, 0)
            rec = self._layer_recorder(recorder, all_attn, prefix)
            x = L.decoder_layer(x, p, self._cfg, cos, sin, cache_kv, q_index, mask2d, self._windows[i],
                                self.layer_uses_rope(i), rec, prefix, segments)
            if output_hidden_states:
                all_hidden.append(x)
        h = L.layer_norm(x, P["norm"], cfg.layer_norm_eps)
        if recorder is not None:
            recorder("norm", h)
        if output_hidden_states:
            all_hidden[-1] = h  # as transformers: the last hidden state is taken after the final norm
        return BaseModelOutputWithPast(h, cache if use_cache or past_key_values is not None else None,
                                       tuple(all_hidden) if all_hidden is not None else None,
                                       tuple(all_attn) if all_attn is not None else None)

    @staticmethod
    def _layer_recorder(recorder, all_attn, prefix):
        if all_attn is None:
            return recorder

        def rec(name, value):
            if name.endswith("attn_probs"):
                all_attn.append(value)
            if recorder is not None:
                recorder(name, value)
        return rec


class CohereForCausalLM(_Pretrained, GenerationMixin):
    """Decoder + output head: logits = (final hidden @ E.T) * logit_scale."""

    config_class = CohereConfig
    base_model_class = CohereModel

    def __init__(self, config, params: dict, dtype=np.float32, backend: str = "numpy", checkpoint=None):
        self.model = self.base_model_class(config, params, dtype, backend, checkpoint)
        self.config = config

    params = property(lambda self: self.model.params)
    dtype = property(lambda self: self.model.dtype)
    backend = property(lambda self: self.model.backend)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache: bool = False, output_hidden_states: bool = False, output_attentions: bool = False,
                 logits_to_keep: int | Any = 0, labels=None, inputs_embeds=None, recorder=None) -> CausalLMOutput:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                         output_hidden_states, output_attentions, inputs_embeds, recorder)
        h = out.last_hidden_state                                     # (B, T, D)
        h_kept = keep_positions(h, logits_to_keep)                   # (B, T', D) or (N, D)
        logits = L.lm_head(h_kept, self.params["lm_head"], self.config.logit_scale)  # (B, T', V)
        if recorder is not None:
            recorder("logits", logits)
        loss = None if labels is None else causal_lm_loss(logits, labels, h.shape[1])
        return CausalLMOutput(logits, loss, out.past_key_values, out.hidden_states, out.attentions)


def keep_positions(h: np.ndarray, logits_to_keep) -> np.ndarray:
    """transformers ``slice_logits_to_keep``: an int keeps the last n positions (0: all); a 1-D array
    keeps those positions for every row; a 2-D int array (B, n) positions per row; a 2-D bool (B, T)
    mask keeps the True positions, flattened to (N, D)."""
    B, T, _ = h.shape
    if isinstance(logits_to_keep, (int, np.integer)) and not isinstance(logits_to_keep, bool):
        if not 0 <= logits_to_keep:
            raise InputError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        return h[:, -int(logits_to_keep):] if logits_to_keep else h
    k = _as_array(logits_to_keep, "logits_to_keep")
    if k.dtype == bool and k.shape == (B, T):
        return h[k]
    if not np.issubdtype(k.dtype, np.integer) or k.ndim not in (1, 2) or (k.ndim == 2 and k.shape[0] != B):
        raise InputError(f"logits_to_keep must be an int, positions (n,) or ({B}, n), or a bool mask ({B}, {T}); "
                         f"got {k.dtype} {k.shape}")
    if k.size and (k.min() < -T or k.max() >= T):
        raise InputError(f"logits_to_keep positions must lie in [-{T}, {T}), got {k.min()}..{k.max()}")
    return h[:, k] if k.ndim == 1 else np.take_along_axis(h, k[..., None] % T, axis=1)


def causal_lm_loss(logits: np.ndarray, labels, T: int) -> float:
    """Mean next-token cross-entropy: logits[:, t] predicts labels[:, t+1]; label -100 is ignored
    (transformers ``ForCausalLMLoss``)."""
    labels = _as_array(labels, "labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integer token ids (or -100 to ignore), got {labels.dtype}")
    if labels.ndim == 1:
        labels = labels[None]
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or logits.shape[1] != T:
        raise InputError(f"labels must have shape {logits.shape[:2]} (batch, tokens) and logits must cover "
                         "every position (logits_to_keep=0) to compute the loss")
    shift_logits = logits[:, :-1].astype(np.float64)
    target = labels[:, 1:]
    keep = target != -100
    if not keep.any():
        return float("nan")  # transformers: mean over zero items is nan
    z = shift_logits[keep]                                            # (N, V)
    t = target[keep]
    if (t < 0).any() or (t >= z.shape[-1]).any():
        raise TokenIdError(f"labels must be token ids in [0, {z.shape[-1]}) or -100")
    m = z.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(logz - z[np.arange(len(t)), t]))


class Cohere2Model(CohereModel):
    config_class = Cohere2Config


class Cohere2ForCausalLM(CohereForCausalLM):
    config_class = Cohere2Config
    base_model_class = Cohere2Model


MODEL_CLASSES = {"cohere": CohereForCausalLM, "cohere2": Cohere2ForCausalLM}
BASE_MODEL_CLASSES = {"cohere": CohereModel, "cohere2": Cohere2Model}


class AutoModelForCausalLM:
    """Dispatch on config.json's ``model_type`` (transformers' AutoModelForCausalLM)."""

    @staticmethod
    def from_pretrained(path, **kwargs) -> CohereForCausalLM:
        path = hub.resolve(path, *(kwargs.pop(k, None)
                                   for k in ("revision", "cache_dir", "local_files_only", "token", "gguf_file")))
        config = load_config(path)
        return MODEL_CLASSES[config.model_type].from_pretrained(path, config=config, **kwargs)


class AutoModel:
    @staticmethod
    def from_pretrained(path, **kwargs) -> CohereModel:
        path = hub.resolve(path, *(kwargs.pop(k, None)
                                   for k in ("revision", "cache_dir", "local_files_only", "token", "gguf_file")))
        config = load_config(path)
        return BASE_MODEL_CLASSES[config.model_type].from_pretrained(path, config=config, **kwargs)
