"""Key/value cache.

One ``LayerCache`` per decoder layer holds keys and values as (B, S, K, Dh) in a preallocated buffer
that grows by doubling (``dynamic``) or is sized once (``static``), so decoding never re-copies the
whole cache per token. Entries carry their absolute cache index (``start`` + offset): masks are built
from absolute indices, so a layer may drop old entries without changing any result.

COHERE: Cohere2's sliding-window layers only ever look back ``window - 1`` tokens, so their cache keeps
just those (it compacts lazily when the buffer fills); full-attention layers keep everything. The two
kinds therefore have different lengths, which is why lengths are per layer here.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import CacheError

GiB = 2 ** 30


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not tell): the bound every allocation sized
    by user input is checked against before it is made."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def cache_bytes(windows: list[int | None], batch: int, prompt: int, tokens: int, kv_heads: int, head_dim: int,
                itemsize: int) -> int:
    """Upper bound of the keys and values a dynamic cache holds once ``tokens`` (prompt included) went
    through it: a full layer keeps them all; a sliding layer's buffer holds the prompt once, then compacts
    to its window, so it never exceeds prompt + 2 x window."""
    per_token = 2 * batch * kv_heads * head_dim * itemsize          # K and V of one token in one layer
    return sum(per_token * (tokens if w is None else min(tokens, prompt + 2 * w)) for w in windows)


class LayerCache:
    def __init__(self, window: int | None = None, capacity: int = 0, static: bool = False):
        self.window = window
        self.static = static
        self.capacity = capacity
        self.k = self.v = None
        self.start = 0    # absolute cache index of buffer slot 0
        self.length = 0   # filled slots

    @property
    def seen(self) -> int:
        """Tokens this layer has been given in total (= absolute index of the next token)."""
        return self.start + self.length

    def _compact(self):
        # Keep the window - 1 newest entries: the oldest any future query can still see.
        keep = self.window - 1
        drop = self.length - keep
        if drop > 0:
            self.k[:, :keep] = self.k[:, drop:self.length]
            self.v[:, :keep] = self.v[:, drop:self.length]
            self.start += drop
            self.length = keep

    def fits(self, T: int) -> bool:
        """Whether T more tokens fit (only a static full-attention layer can be full)."""
        if not self.static or self.window is not None:
            return True
        capacity = self.k.shape[1] if self.k is not None else self.capacity
        return self.length + T <= capacity

    def reserve(self, B: int, T: int, K: int, Dh: int, dtype) -> int:
        """Make room for T more tokens (allocating, compacting a sliding layer or growing the buffer);
        return the slot where they go. Nothing is written: ``update`` writes, as does the compiled
        decode step (``pycohere.kernels.decode``), which writes its keys straight into ``k``/``v``."""
        dtype = np.dtype(dtype)
        if self.k is None:
            cap = max(self.capacity, T) if self.static else max(self.capacity, T, 16)
            need_bytes, ram = 2 * B * cap * K * Dh * dtype.itemsize, physical_memory()
            if ram is not None and need_bytes > ram:  # a max_cache_len from the user, checked before np.empty
                raise CacheError(f"a cache of {cap} tokens needs {need_bytes / GiB:.1f} GiB for this layer's keys "
                                 f"and values (batch {B}, {K} kv heads of {Dh}), more than this machine's "
                                 f"{ram / GiB:.1f} GiB of memory; lower max_cache_len (or leave it out: a dynamic "
                                 "cache grows as tokens come)")
            self.k = np.empty((B, cap, K, Dh), dtype=dtype)
            self.v = np.empty((B, cap, K, Dh), dtype=dtype)
        elif self.k.shape[0] != B or self.k.shape[2:] != (K, Dh) or self.k.dtype != dtype:
            raise CacheError(f"cache holds batch {self.k.shape[0]}, {self.k.shape[2]} kv heads of "
                             f"{self.k.shape[3]} ({self.k.dtype}); got batch {B}, {K} heads of {Dh} "
                             f"({dtype}). Use a new cache for a new batch or model.")
        need = self.length + T
        if need > self.k.shape[1] and self.window is not None:
            self._compact()
            need = self.length + T
        if need > self.k.shape[1]:
            if self.static and self.window is None:
                raise CacheError(f"static cache is full: it holds {self.k.shape[1]} tokens and this call needs "
                                 f"{need}; create it with a larger max_cache_len")
            new_cap = max(need, 2 * self.k.shape[1])
            for name in ("k", "v"):
                old = getattr(self, name)
                buf = np.empty((B, new_cap) + old.shape[2:], dtype=old.dtype)
                buf[:, :self.length] = old[:, :self.length]
                setattr(self, name, buf)
        return self.length

    def update(self, k: np.ndarray, v: np.ndarray):
        """Append k, v (B, T, K, Dh); return (k_all, v_all) (B, S, K, Dh) and their first absolute index."""
        B, T, K, Dh = k.shape
        slot = self.reserve(B, T, K, Dh, k.dtype)
        self.k[:, slot:slot + T] = k
        self.v[:, slot:slot + T] = v
        self.length = slot + T
        return self.k[:, :self.length], self.v[:, :self.length], self.start

class KVCache:
    """The cache of a whole model: ``past_key_values`` in the forward API.

    ``KVCache.for_model(config)`` builds it with the right window per layer; ``static=True`` with
    ``max_cache_len`` preallocates (transformers' ``cache_implementation="static"``) and refuses to
    grow past it.
    """

    def __init__(self, windows: list[int | None], max_cache_len: int | None = None, static: bool = False):
        if static and not max_cache_len:
            raise CacheError("a static cache needs max_cache_len (prompt length + max_new_tokens)")
        self.static = static
        self.max_cache_len = max_cache_len
        self.windows = list(windows)
        cap = max_cache_len or 0
        self.layers = [LayerCache(w, cap if w is None else min(cap, 2 * w) if cap else 0, static)
                       for w in windows]

    @classmethod
    def for_model(cls, config, max_cache_len: int | None = None, static: bool = False) -> "KVCache":
        return cls(layer_windows(config), max_cache_len=max_cache_len, static=static)

    def __len__(self):
        return len(self.layers)

    def reserve(self, T: int) -> None:
        """Raise CacheError unless every layer can take T more tokens (checked before any layer appends)."""
        if not all(layer.fits(T) for layer in self.layers):
            raise CacheError(f"static cache is full: it holds {self.max_cache_len} tokens, has "
                             f"{self.get_seq_length()} and this call adds {T}; create it with a larger max_cache_len")

    def update(self, layer_idx: int, k: np.ndarray, v: np.ndarray):
        return self.layers[layer_idx].update(k, v)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens processed so far (the absolute index the next token will get)."""
        return self.layers[layer_idx].seen

    def crop(self, max_length: int) -> None:
        """Keep only the first ``max_length`` tokens (transformers ``DynamicCache.crop``), so a cache of
        a longer sequence can continue a prompt that shares that prefix. A sliding layer that already
        dropped entries the shorter sequence still needs cannot be cropped: CacheError, nothing changed."""
        if not isinstance(max_length, (int, np.integer)) or not 0 <= max_length <= self.get_seq_length():
            raise CacheError(f"crop needs a length in [0, {self.get_seq_length()}], got {max_length!r}")
        for layer in self.layers:
            oldest_needed = 0 if layer.window is None else max(0, max_length - (layer.window - 1))
            if layer.start > oldest_needed:
                raise CacheError(f"a sliding layer has dropped the entries before {layer.start}; it cannot be "
                                 f"cropped to {max_length} tokens (recompute the prompt instead)")
        for layer in self.layers:
            layer.length = max_length - layer.start

    @property
    def batch_size(self) -> int | None:
        k = self.layers[0].k
        return None if k is None else k.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(0 if l.k is None else l.k.nbytes + l.v.nbytes for l in self.layers)


def layer_windows(config) -> list[int | None]:
    """Sliding window per layer: None for full attention (all of Cohere; Cohere2's full layers)."""
    types = getattr(config, "layer_types", None)
    if not types:
        return [None] * config.num_hidden_layers
    return [config.sliding_window if t == "sliding_attention" else None for t in types]
