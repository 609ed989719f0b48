"""Validation at the boundary: the public ``model(...)`` and ``generate(...)`` check every user-supplied
array here, once, with a named error; the forward inside (and the decode loop) trusts what it is given.
"""
from __future__ import annotations

import numpy as np

from ..constants import COMPUTE_DTYPES
from ..errors import AttentionMaskError, CacheError, InputError, TokenIdError
from ..spec.cache import KVCache

#: ``from_pretrained(activations=...)``: how a matmul's input is rounded (not an activation function).
ACTIVATION_MODES = ("float32", "llama.cpp")


def as_array(value, what: str, error=InputError) -> np.ndarray:
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
    ids = as_array(input_ids, "input_ids")
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


def check_embeds(inputs_embeds, hidden_size: int, dtype) -> np.ndarray:
    x = as_array(inputs_embeds, "inputs_embeds").astype(dtype)
    if x.ndim != 3 or x.shape[-1] != hidden_size:
        raise InputError(f"inputs_embeds must be (batch, tokens, {hidden_size}), got {x.shape}")
    return x


def check_mask(attention_mask, B: int, total: int) -> np.ndarray | None:
    """attention_mask (B, past + T) of 0/1 -> bool, or None."""
    if attention_mask is None:
        return None
    m = as_array(attention_mask, "attention_mask", AttentionMaskError)
    if m.ndim == 1:
        m = m[None]
    if m.shape != (B, total):
        raise AttentionMaskError(f"attention_mask has shape {m.shape} but must be (batch, past + new tokens) = "
                                 f"({B}, {total}): one 0/1 entry per cached and new token")
    if not np.isin(m, (0, 1)).all():
        raise AttentionMaskError("attention_mask must contain only 0 (padding) and 1 (token)")
    return m.astype(bool)


def check_positions(position_ids, B: int, T: int, past: int) -> np.ndarray:
    """position_ids (B, T) or (1, T) or None -> int64 (B, T) (default: past, past + 1, ...)."""
    if position_ids is None:
        return np.broadcast_to(np.arange(past, past + T, dtype=np.int64), (B, T))
    pos = as_array(position_ids, "position_ids")
    if pos.ndim == 1:
        pos = pos[None]
    if not np.issubdtype(pos.dtype, np.integer) or pos.ndim != 2 or pos.shape[1] != T or pos.shape[0] not in (1, B):
        shapes = f"({B}, {T}) or (1, {T})" if B != 1 else f"(1, {T})"
        raise InputError(f"position_ids must be integers of shape {shapes}, got {pos.shape} {pos.dtype}")
    if (pos < 0).any():
        raise InputError("position_ids must be non-negative")
    return np.broadcast_to(pos.astype(np.int64), (B, T))


def check_cache(cache, config, windows, B: int, T: int) -> None:
    """A cache made for this model, holding batch B, with room for T more tokens (checked before any
    layer appends, so a failing call never leaves the cache half-updated)."""
    if not isinstance(cache, KVCache) or len(cache) != config.num_hidden_layers:
        raise CacheError("past_key_values must be a pycohere KVCache made for this model "
                         "(KVCache.for_model(model.config))")
    if cache.windows != windows:
        raise CacheError(f"past_key_values was made for layers with windows {cache.windows}, this model's "
                         f"are {windows}; use KVCache.for_model(model.config)")
    if cache.batch_size not in (None, B):
        raise CacheError(f"past_key_values holds batch {cache.batch_size}, input has batch {B}")
    cache.reserve(T)


def keep_positions(h: np.ndarray, logits_to_keep) -> np.ndarray:
    """transformers ``slice_logits_to_keep``: an int keeps the last n positions (0: all); a 1-D array
    keeps those positions for every row; a 2-D int array (B, n) positions per row; a 2-D bool (B, T)
    mask keeps the True positions, flattened to (N, D)."""
    B, T, _ = h.shape
    if isinstance(logits_to_keep, (int, np.integer)) and not isinstance(logits_to_keep, bool):
        if not 0 <= logits_to_keep:
            raise InputError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        return h[:, -int(logits_to_keep):] if logits_to_keep else h
    k = as_array(logits_to_keep, "logits_to_keep")
    if k.dtype == bool and k.shape == (B, T):
        return h[k]
    if not np.issubdtype(k.dtype, np.integer) or k.ndim not in (1, 2) or (k.ndim == 2 and k.shape[0] != B):
        raise InputError(f"logits_to_keep must be an int, positions (n,) or ({B}, n), or a bool mask ({B}, {T}); "
                         f"got {k.dtype} {k.shape}")
    if k.size and (k.min() < -T or k.max() >= T):
        raise InputError(f"logits_to_keep positions must lie in [-{T}, {T}), got {k.min()}..{k.max()}")
    return h[:, k] if k.ndim == 1 else np.take_along_axis(h, k[..., None] % T, axis=1)


def check_labels(labels, logits: np.ndarray, T: int) -> np.ndarray:
    """labels (B, T) token ids or -100 (ignored), for the loss over every position."""
    labels = as_array(labels, "labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integer token ids (or -100 to ignore), got {labels.dtype}")
    if labels.ndim == 1:
        labels = labels[None]
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or logits.shape[1] != T:
        raise InputError(f"labels must have shape {logits.shape[:2]} (batch, tokens) and logits must cover "
                         "every position (logits_to_keep=0) to compute the loss")
    target = labels[:, 1:]
    counted = target[target != -100]
    if (counted < 0).any() or (counted >= logits.shape[-1]).any():
        raise TokenIdError(f"labels must be token ids in [0, {logits.shape[-1]}) or -100")
    return labels


def resolve_dtype(dtype) -> np.dtype:
    if isinstance(dtype, str):
        if dtype not in COMPUTE_DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; use 'float32' or 'float64'")
        return COMPUTE_DTYPES[dtype]
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise InputError(f"dtype {dt} is not supported; use 'float32' or 'float64'")
    return dt
