"""Rotary position embedding frequencies, with every scaling type transformers has for Cohere.

Formulas: transformers ``modeling_rope_utils.py`` (``_compute_*_parameters``, ``dynamic_rope_update``);
papers: RoFormer (default), kaiokendev (linear), bloc97/emozilla (dynamic NTK), YaRN (arXiv 2309.00071),
LongRoPE (arXiv 2402.13753), Llama 3.1 (llama3).

Precision: in float32 mode every step is done in float32 exactly where transformers does it, so angles
match bit for bit as far as the platform's ``pow`` allows. In float64 mode everything is float64 —
transformers keeps inv_freq and the angles in float32 even for a float64 model, so pycohere's float64
path is the more exact reference there.
"""
from __future__ import annotations

import math

import numpy as np

# Shapes: Dh head dim; T tokens; B batch. inv_freq has Dh/2 entries.


def _exponents(dim: int, dt) -> np.ndarray:
    """e_i = 2i/Dh, i < Dh/2 (transformers: ``arange(0, dim, 2).float() / dim``)."""
    return np.arange(0, dim, 2, dtype=np.int64).astype(dt) / dt.type(dim)


def _base_inv_freq(base: float, dim: int, dt) -> np.ndarray:
    """1 / base^(2i/Dh)."""
    return dt.type(1.0) / (dt.type(base) ** _exponents(dim, dt))


def compute_inv_freq(config, seq_len: int | None = None, dtype=np.float32) -> tuple[np.ndarray, float]:
    """(inv_freq (Dh/2,), attention_factor) for ``config.rope_parameters``.

    ``seq_len`` = max(position_ids) + 1 of the current call; only ``dynamic`` and ``longrope``
    depend on it (transformers recomputes them in ``dynamic_rope_update``).
    """
    dt = np.dtype(dtype)
    p = config.rope_parameters
    rope_type = p["rope_type"]
    base = float(p["rope_theta"])
    M = config.max_position_embeddings
    if rope_type == "default":
        # Cohere's default RoPE rotates the whole head, partial_rotary_factor or not (transformers
        # CohereRotaryEmbedding.compute_default_rope_parameters); config.py refuses it for the others.
        return _base_inv_freq(base, config.get_head_dim(), dt), 1.0
    dim = config.get_head_dim()

    if rope_type == "linear":
        return _base_inv_freq(base, dim, dt) / dt.type(p["factor"]), 1.0

    if rope_type == "dynamic":
        # NTK-aware: grow the base once the sequence passes M; the original base below M.
        factor = p["factor"]
        L = max(seq_len or M, M)
        if L == M:
            return _base_inv_freq(base, dim, dt), 1.0
        # transformers evaluates this on a tensor seq_len, i.e. in the float dtype (float32 there).
        f, one = dt.type(factor), dt.type(1)
        new_base = dt.type(base) * ((f * dt.type(L) / dt.type(M)) - (f - one)) ** dt.type(dim / (dim - 2))
        return one / (new_base ** _exponents(dim, dt)), 1.0

    if rope_type == "yarn":
        factor = p["factor"]
        L0 = p["original_max_position_embeddings"]
        attention_factor = p.get("attention_factor")
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            else:
                attention_factor = get_mscale(factor)
        beta_fast = p.get("beta_fast") or 32
        beta_slow = p.get("beta_slow") or 1

        def correction_dim(rotations):  # the dim index that turns `rotations` times over L0
            return (dim * math.log(L0 / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # transformers: prevent a division by zero
        pos_freqs = dt.type(base) ** _exponents(dim, dt)
        extrapolation = dt.type(1.0) / pos_freqs
        interpolation = dt.type(1.0) / (dt.type(factor) * pos_freqs)
        ramp = np.clip((np.arange(dim // 2, dtype=dt) - dt.type(low)) / dt.type(high - low), 0, 1).astype(dt)
        extrapolation_factor = dt.type(1) - ramp
        inv = interpolation * (dt.type(1) - extrapolation_factor) + extrapolation * extrapolation_factor
        return inv, float(attention_factor)

    if rope_type == "longrope":
        L0 = p["original_max_position_embeddings"]
        factor = p.get("factor") or M / L0
        attention_factor = p.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(L0))
        # long factors once the sequence is longer than the pre-training length, short below.
        ext = p["long_factor"] if (seq_len and seq_len > L0) else p["short_factor"]
        ext = np.asarray(ext, dtype=dt)
        return dt.type(1.0) / (ext * dt.type(base) ** _exponents(dim, dt)), float(attention_factor)

    if rope_type == "llama3":
        factor, low_ff, high_ff = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        L0 = p["original_max_position_embeddings"]
        inv = _base_inv_freq(base, dim, dt)
        low_wavelen, high_wavelen = L0 / low_ff, L0 / high_ff
        wavelen = dt.type(2 * math.pi) / inv
        inv_l = np.where(wavelen > low_wavelen, inv / dt.type(factor), inv)
        smooth = (dt.type(L0) / wavelen - dt.type(low_ff)) / dt.type(high_ff - low_ff)
        smoothed = (dt.type(1) - smooth) * inv_l / dt.type(factor) + smooth * inv_l
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, inv_l).astype(dt), 1.0

    from ..errors import ConfigError
    raise ConfigError(f"unknown rope type {rope_type!r}")


def rope_cos_sin(position_ids: np.ndarray, inv_freq: np.ndarray, attention_factor: float = 1.0):
    """position_ids (B, T) -> cos, sin (B, T, Dh/2) in inv_freq's dtype.

    The angle is the product pos * inv_freq in that dtype (transformers: ``position_ids.float() *
    inv_freq``). attention_factor (yarn, longrope) scales cos *and* sin, i.e. q and k both.
    """
    dt = inv_freq.dtype
    angles = position_ids.astype(dt)[..., None] * inv_freq  # (B, T, Dh/2)
    cos, sin = np.cos(angles), np.sin(angles)
    if attention_factor != 1.0:
        cos, sin = cos * dt.type(attention_factor), sin * dt.type(attention_factor)
    return cos, sin
