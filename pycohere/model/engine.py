"""The numba backend's forward for prompts (T > 1): the fast twin of ``pycohere.spec.layers.decoder_layer``
(one token per sequence runs the compiled step instead, ``pycohere.kernels.decode.DecodeEngine``).

The model chooses it (float32, backend "numba", no tap and no packed sequences); its matmuls are the
weights' bound kernels (``pycohere.kernels.dispatch.fast_weight``, set up at load) and its attention the
fused kernel (``pycohere.kernels.attention``: the same mask rules, no (B, H, T, S) tensors). Its twin
test is ``tests/test_engine.py``, listed in ``pycohere.kernels.registry``.
"""
from __future__ import annotations

import numpy as np

from ..kernels.attention import fused_attention, silu_mul
from ..spec import layers as L
from ..spec.params import Dims, ForwardState, LayerParams


def decoder_layer(x: np.ndarray, p: LayerParams, dims: Dims, state: ForwardState, cache_kv) -> np.ndarray:
    """x (B, T, D) -> the next layer's input, as the spec's parallel block computes it."""
    B, T, _ = x.shape
    h = L.layer_norm(x, p.input_layernorm, dims.eps)                  # (B, T, D)
    q, k, v = L.qkv_projection(h, p, dims, state)                     # (B, T, H|K, Dh)
    k_all, v_all, start = cache_kv(k, v)                              # (B, S, K, Dh)
    S = k_all.shape[1]
    kv_valid = None if state.kv_valid is None else state.kv_valid[:, start:start + S]  # (B, S)
    o = fused_attention(q, k_all, v_all, state.q_index, start, kv_valid, p.sliding_window)  # (B, T, H, Dh)
    a = L.linear(o.reshape(B, T, dims.H * dims.Dh), p.o_proj, p.o_bias)
    return x + a + mlp(h, p, dims.act)


def mlp(h: np.ndarray, p: LayerParams, act: str) -> np.ndarray:
    """``pycohere.spec.layers.mlp``, with SiLU's product in one compiled pass (``kernels.attention.silu_mul``)."""
    if act not in ("silu", "swish"):
        return L.mlp(h, p.gate_proj, p.up_proj, p.down_proj, act)
    gate = np.ascontiguousarray(L.linear(h, p.gate_proj), dtype=np.float32)   # (B, T, F)
    up = np.ascontiguousarray(L.linear(h, p.up_proj), dtype=np.float32)       # (B, T, F)
    silu_mul(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1]))  # (B T, F) views, gate in place
    return L.linear(gate, p.down_proj)
