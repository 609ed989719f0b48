"""Numba attention kernels: the fast twins of ``pycohere.spec.layers.attention`` with its mask rules.

``decode_attention`` (a few queries, one pass over the cache) and ``flash_attention`` (tiled, with an
online softmax: no (H, T, S) score tensor); ``fused_attention`` picks between them.
"""
from __future__ import annotations

import numpy as np

from .jit import FAST, njit, prange


@njit(cache=True, parallel=True, fastmath=FAST)
def decode_attention(q, k, v, q_index, kv_start, kv_valid, window):
    """One pass of attention for few queries over the cache, without copying K/V per head.

    q (B, T, H, Dh), k/v (B, S, K, Dh) float32, q_index (T,) absolute indices, kv_start: absolute index
    of k[:, 0], kv_valid (B, S) bool (padding), window: sliding window or 0 for none.
    Twin: ``pycohere.spec.layers.attention`` with ``attention_mask(q_index, kv_index, kv_valid, window)``.
    Fully masked rows give the mean of V, as the spec (finfo.min scores) does.
    """
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    scale = np.float32(1.0 / np.sqrt(Dh))
    out = np.empty((B, T, H, Dh), dtype=np.float32)
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        kh = h // G
        scores = np.empty(S, dtype=np.float32)
        for t in range(T):
            qi = q_index[t]
            m = np.float32(-np.inf)
            n_ok = 0
            for s in range(S):
                ki = kv_start + s
                ok = ki <= qi and kv_valid[b, s] and (window == 0 or qi - ki < window)
                if ok:
                    acc = np.float32(0.0)
                    for d in range(Dh):
                        acc += q[b, t, h, d] * k[b, s, kh, d]
                    sc = acc * scale
                    scores[s] = sc
                    if sc > m or sc != sc:  # NaN wins, as in the spec's max
                        m = sc
                    n_ok += 1
                else:
                    scores[s] = -np.inf
            total = np.float32(0.0)
            for s in range(S):
                if n_ok == 0:
                    p = np.float32(1.0)
                elif scores[s] == -np.inf:
                    p = np.float32(0.0)
                else:
                    p = np.exp(scores[s] - m)
                scores[s] = p
                total += p
            for d in range(Dh):
                out[b, t, h, d] = 0.0
            for s in range(S):
                p = scores[s] / total
                if p != 0.0:
                    for d in range(Dh):
                        out[b, t, h, d] += p * v[b, s, kh, d]
    return out


@njit(cache=True, inline="always")
def _any_allowed(sc, n):
    for j in range(n):
        if sc[j] != -np.inf:
            return True
    return False


@njit(cache=True, parallel=True, fastmath=FAST)
def flash_attention(q, k, v, q_index, kv_start, kv_valid, window, tile):
    """Tiled attention with an online softmax (FlashAttention's recurrence): never holds a (H, T, S)
    score tensor, only a (tile, tile) block per worker. Same arguments and twin as
    ``decode_attention``; parallel over (batch, head, query tile)."""
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    scale = np.float32(1.0 / np.sqrt(Dh))
    out = np.empty((B, T, H, Dh), dtype=np.float32)
    n_qt = (T + tile - 1) // tile
    for job in prange(B * H * n_qt):
        b = job // (H * n_qt)
        h = (job // n_qt) % H
        t0 = (job % n_qt) * tile
        t1 = min(t0 + tile, T)
        kh = h // G
        nq = t1 - t0
        m = np.full(nq, -np.inf, dtype=np.float32)
        l = np.zeros(nq, dtype=np.float32)
        acc = np.zeros((nq, Dh), dtype=np.float32)
        any_ok = np.zeros(nq, dtype=np.bool_)
        sc = np.empty(tile, dtype=np.float32)
        qmax = q_index[t1 - 1]
        for s0 in range(0, S, tile):
            if kv_start + s0 > qmax:
                break  # causal: later key tiles are invisible to this query tile
            s1 = min(s0 + tile, S)
            for i in range(nq):
                qi = q_index[t0 + i]
                tile_max = np.float32(-np.inf)
                for s in range(s0, s1):
                    ki = kv_start + s
                    if ki <= qi and kv_valid[b, s] and (window == 0 or qi - ki < window):
                        a = np.float32(0.0)
                        for d in range(Dh):
                            a += q[b, t0 + i, h, d] * k[b, s, kh, d]
                        a *= scale
                        sc[s - s0] = a
                        if a > tile_max or a != a:  # NaN wins, as in the spec's max
                            tile_max = a
                    else:
                        sc[s - s0] = -np.inf
                if tile_max == -np.inf and not _any_allowed(sc, s1 - s0):
                    continue  # nothing visible in this tile (a NaN score still counts: it must propagate)
                any_ok[i] = True
                new_m = max(m[i], tile_max)
                corr = np.exp(m[i] - new_m) if m[i] != -np.inf else np.float32(0.0)
                l[i] *= corr
                for d in range(Dh):
                    acc[i, d] *= corr
                for s in range(s0, s1):
                    if sc[s - s0] != -np.inf:
                        p = np.exp(sc[s - s0] - new_m)
                        l[i] += p
                        for d in range(Dh):
                            acc[i, d] += p * v[b, s, kh, d]
                m[i] = new_m
        for i in range(nq):
            if any_ok[i]:
                for d in range(Dh):
                    out[b, t0 + i, h, d] = acc[i, d] / l[i]
            else:  # fully masked row: the spec's uniform softmax over all S keys -> mean of V
                for d in range(Dh):
                    total = np.float32(0.0)
                    for s in range(S):
                        total += v[b, s, kh, d]
                    out[b, t0 + i, h, d] = total / S
    return out


FLASH_TILE = 64
DECODE_MAX_QUERIES = 4


def fused_attention(q, k, v, q_index, kv_start, kv_valid, window):
    """Dispatch: decode (a few queries) -> one pass; prefill -> tiled online softmax."""
    B, S = k.shape[0], k.shape[1]
    valid = np.ones((B, S), dtype=np.bool_) if kv_valid is None else np.ascontiguousarray(kv_valid)
    args = (np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(k, dtype=np.float32),
            np.ascontiguousarray(v, dtype=np.float32), np.ascontiguousarray(q_index, dtype=np.int64),
            np.int64(kv_start), valid, np.int64(window or 0))
    if q.shape[1] <= DECODE_MAX_QUERIES:
        return decode_attention(*args)
    return flash_attention(*args, np.int64(FLASH_TILE))
