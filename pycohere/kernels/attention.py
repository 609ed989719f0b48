"""Numba attention kernels: the fast twins of ``pycohere.spec.layers.attention`` with its mask rules.

``decode_attention`` (a few queries, one pass over the cache), ``flash_attention`` (tiled, with an
online softmax: no (H, T, S) score tensor) and ``blocked_attention`` (prefill: query blocks against only
the keys they can see, the two products by BLAS); ``fused_attention`` picks between them.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import tiles
from .blas import single_threaded
from .jit import FAST, njit, prange, u32_as_f32


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


@njit(cache=True, inline="always")
def exp_nonpositive(x):
    """exp(x) for x <= 0 (a softmax's max-shifted score), float32, in code LLVM vectorises (NumPy's and
    libm's exp are calls, one value at a time; llama.cpp's ``ggml_v_expf`` in ``ggml/src/ggml-cpu/vec.h``
    is the same idea in intrinsics). Cephes ``expf``: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in
    two, Cody-Waite), a degree-6 polynomial for exp(r), 2^n built from its exponent bits; within 4e-7 of
    exp. Below -87.3 (float32's smallest normals, and -inf: a masked key) it is 0; NaN stays NaN.
    Twin: ``np.exp`` (tests/test_prefill.py)."""
    if x != x:
        return x
    if x < np.float32(-87.3):
        return np.float32(0.0)
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * u32_as_f32(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23))


@njit(cache=True, parallel=True, fastmath=FAST)
def silu_mul(gate, up):
    """In place: gate (R, F) <- silu(gate) * up, silu(g) = g / (1 + exp(-g)) written with exp of -|g| only
    (``exp_nonpositive``, vectorised: g sigmoid(g), sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) below, e =
    exp(-|g|)). The prefill's gated-MLP product in one pass over the two (T, F) arrays where NumPy takes
    three. Twin: ``pycohere.spec.layers.silu(gate) * up``; NaN and infinities as the spec (-inf: NaN)."""
    for r in prange(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[r, j]
            e = exp_nonpositive(-abs(g))
            s = (np.float32(1.0) if g >= np.float32(0.0) else e) / (np.float32(1.0) + e)
            gate[r, j] = g * s * up[r, j]


@njit(cache=True, nogil=True, fastmath=FAST)
def masked_softmax_rows(s, q_index, nq, kv_first, kv_valid, window, scale, seen):
    """In place: s (R, N) raw scores q.k of R = G * nq query rows (row r is query ``q_index[r % nq]``)
    against keys ``kv_first .. kv_first + N - 1`` -> their softmax probabilities, masked keys 0.
    ``kv_valid`` (N,) padding of those keys; ``seen[r]``: whether row r saw any key (a row that saw
    none is left 0: its output is the mean of V over all keys, ``blocked_attention``'s to fill).
    Twin: the softmax of ``pycohere.spec.layers.attention`` (scores * scale, masked, max-shifted)."""
    R, N = s.shape
    neg = np.float32(-np.inf)
    for r in range(R):  # (serial, without the GIL: blocked_attention runs one per thread)
        qi = q_index[r % nq]
        # the keys causal order and the window allow are one interval j0 .. j1 - 1; padding is per key
        j1 = max(0, min(N, qi - kv_first + 1))
        j0 = 0 if window == 0 else min(j1, max(0, qi - window + 1 - kv_first))
        row, valid = s[r, j0:j1], kv_valid[j0:j1]  # views: loops over range(n) vectorise (j0 + j did not)
        n = j1 - j0
        ok = False
        for j in range(n):
            ok |= valid[j]
        seen[r] = ok
        if not ok:
            s[r, :] = 0.0
            continue
        m = neg
        for j in range(n):  # branch-free (selects)
            x = row[j] * scale
            x = x if valid[j] else neg
            row[j] = x
            m = x if x > m else m
        # a NaN score is not the max here, as it is in the spec's; its exp is NaN, so is the sum, and every
        # probability of the row as the spec's (the keys outside j0 .. j1 - 1 too: the row's output is NaN)
        s[r, :j0] = 0.0
        s[r, j1:] = 0.0
        total = np.float32(0.0)
        for j in range(n):  # padded keys: exp(-inf) = 0
            e = exp_nonpositive(row[j] - m)
            row[j] = e
            total += e
        if total != total:
            s[r, :] = np.float32(np.nan)
            continue
        inv = np.float32(1.0) / total
        for j in range(n):
            row[j] *= inv


#: blocked_attention's score block: at most this many values per (query block x visible keys) product
#: (8 MiB of float32), whatever the prompt's length or the number of query heads per kv head.
SCORE_BLOCK_VALUES = 1 << 21
ATTENTION_QUERY_BLOCK = 256


def blocked_attention(q, k, v, q_index, kv_start, kv_valid, window, block=ATTENTION_QUERY_BLOCK, tile=None):
    """Prefill attention: for each (batch, kv head, block of queries) the G query heads that
    share the kv head are stacked into one (G * nq, Dh) matrix (GQA: each K/V block is read once for all
    of them), multiplied by only the keys that block can see (causal: none after its last query;
    Cohere2 windows: none before its first query's window, so masked key blocks cost nothing), softmax
    in ``masked_softmax_rows``, then @ V. Scores never exceed ``SCORE_BLOCK_VALUES`` (the query block
    shrinks as the visible keys grow). The (batch, kv head) jobs run on one thread per core, each
    multiplying on its own thread: ``tiles.panel_matmul`` (the keys packed into panels once per job, V read in
    place, both products in the tile's layout) or BLAS single-threaded (``pycohere.kernels.blas``: OpenBLAS's own
    pool would spin against Numba's afterwards). Same arguments and twin as ``decode_attention``."""
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    scale = np.float32(1.0 / np.sqrt(Dh))
    out = np.empty((B, T, H, Dh), dtype=np.float32)
    nq_max = max(1, min(block, SCORE_BLOCK_VALUES // max(1, G * S)))

    # the two products: panel_matmul in tiles of ``tile`` (one of tiles.PANEL_SHAPES; None: the host's choice,
    # tiles.PANEL_ATTENTION), or BLAS (``tile=()``)
    tile = (tiles.PANELS if tiles.PANEL_ATTENTION else ()) if tile is None else tile and tiles.check_shape(tile)
    R, L, _ = tile or tiles.PANELS
    panels = bool(tile)

    def job(b, kh):
        kb, vb = k[b, :, kh], v[b, :, kh]                             # (S, Dh) each
        if panels:  # keys packed once per job; V read in place where Dh is whole panels: vp[p, s, l] = V[s, L p + l]
            kp = tiles.scratch(-(-S // L) * Dh * L, "attention keys").reshape(-1, Dh, L)  # (ceil(S/L), Dh, L)
            tiles.pack_rows(kb, kp)
            if Dh % L == 0 and vb.dtype == np.float32 and vb.strides[1] == 4:  # float32 rows, contiguous
                vp = np.lib.stride_tricks.as_strided(vb, (Dh // L, S, L), (4 * L, vb.strides[0], 4))  # (Dh/L, S, L)
            else:
                vp = tiles.scratch(-(-Dh // L) * S * L, "attention values").reshape(-1, S, L)  # (ceil(Dh/L), S, L)
                tiles.pack_rows(vb.T, vp)
            wq, ws = tiles.padded(R, Dh, "attention queries")[0], tiles.padded(R, S, "attention scores")[0]
            tmp = tiles.scratch(R * L, "attention sums").reshape(R, L)
        mean_v = None
        for t0 in range(0, T, nq_max):
            t1 = min(t0 + nq_max, T)
            nq = t1 - t0
            hi = min(S, int(q_index[t1 - 1]) - kv_start + 1)           # causal: no key after the last query
            lo = 0 if window == 0 else max(0, int(q_index[t0]) - window + 1 - kv_start)
            hi = max(hi, lo)
            qb = q[b, t0:t1, kh * G:(kh + 1) * G].transpose(1, 0, 2).reshape(G * nq, Dh)  # (G*nq, Dh)
            if panels:
                lo = lo // L * L  # from a whole panel of keys (the keys before the window's are masked)
                scores = np.empty((G * nq, hi - lo), dtype=np.float32)  # (G*nq, hi-lo)
                tiles.panel_matmul(qb, kp[lo // L:], hi - lo, scores, wq, tmp)
            else:
                scores = qb @ kb[lo:hi].T                              # (G*nq, hi-lo)
            seen = np.empty(G * nq, dtype=np.bool_)
            masked_softmax_rows(scores, q_index[t0:t1], nq, kv_start + lo, kv_valid[b, lo:hi], window, scale,
                                seen)
            if panels:
                o = np.empty((G * nq, Dh), dtype=np.float32)           # (G*nq, Dh)
                tiles.panel_matmul(scores, vp[:, lo:hi], Dh, o, ws, tmp)
            else:
                o = scores @ vb[lo:hi]                                 # (G*nq, Dh)
            if not seen.all():  # fully masked rows: the spec's uniform softmax over all S keys
                if mean_v is None:
                    mean_v = vb.astype(np.float32).mean(axis=0) if S else np.zeros(Dh, np.float32)
                o[~seen] = mean_v
            out[b, t0:t1, kh * G:(kh + 1) * G] = o.reshape(G, nq, Dh).transpose(1, 0, 2)

    jobs = [(b, kh) for b in range(B) for kh in range(K)]
    with single_threaded():
        if len(jobs) == 1 or _cores() <= 1:
            for b, kh in jobs:
                job(b, kh)
        else:
            pool = _pool()
            for f in [pool.submit(job, b, kh) for b, kh in jobs]:
                f.result()
    return out


_pools: dict = {}
_pools_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """blocked_attention's threads, started once per thread count. Why not a pool per call: starting and
    joining its threads cost ~1 ms, as much as a 28-token suffix's whole attention on a 1k-token cache
    (the demo model: 1.3 ms per call, 0.35 ms of it work; docs/serve.md "Measurements"). The jobs never
    submit jobs, so callers on several threads (tensor-parallel ranks) can share it."""
    n = _cores()
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="pycohere-attention")
    return pool


def _forget_pools() -> None:
    """In a forked child: the pools' threads did not come along (their jobs would wait forever)."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _cores() -> int:
    """Threads for blocked_attention: Numba's thread count (the user's NUMBA_NUM_THREADS), else the CPUs."""
    try:
        import numba
        return max(1, int(numba.get_num_threads()))
    except Exception:  # pragma: no cover - numba always importable here
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


FLASH_TILE = 64
DECODE_MAX_QUERIES = 4


def fused_attention(q, k, v, q_index, kv_start, kv_valid, window):
    """Dispatch: decode (a few queries) -> one pass; prefill -> query blocks with BLAS
    (``blocked_attention``: measured 10x the tiled online softmax's FLOP/s, BENCHMARKS.md "Prefill
    (issue 15)")."""
    B, S = k.shape[0], k.shape[1]
    valid = np.ones((B, S), dtype=np.bool_) if kv_valid is None else np.ascontiguousarray(kv_valid)
    args = (np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(k, dtype=np.float32),
            np.ascontiguousarray(v, dtype=np.float32), np.ascontiguousarray(q_index, dtype=np.int64),
            np.int64(kv_start), valid, np.int64(window or 0))
    if q.shape[1] <= DECODE_MAX_QUERIES:
        return decode_attention(*args)
    return blocked_attention(args[0], args[1], args[2], args[3], int(kv_start), args[5], int(window or 0))
