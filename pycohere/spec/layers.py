"""The specification: one Cohere / Cohere2 forward pass as short pure functions on arrays.

Shape legend (used in every shape comment of this package):
    B batch, T tokens in this call, S keys visible (cache + this call), D hidden size,
    H query heads, K key/value heads, G = H // K query heads per kv head, Dh head dim,
    F feed-forward (intermediate) size, V vocabulary.

Each function is the maths of transformers' ``models/cohere/modeling_cohere.py`` /
``models/cohere2/modeling_cohere2.py`` and nothing else. Differences from Llama are marked
``# COHERE:`` (grep for them). Everything here is NumPy: no kernel is called and nothing dispatches
(the Numba twins live in ``pycohere.kernels``; ``pycohere.model`` chooses between them).

``rec`` is an optional tap ``rec(name, array)`` that sees every named intermediate (the names of
``pycohere.spec.taps``: golden bundles, recorders, hooks). When it returns an array, that array
replaces the intermediate for the rest of the forward (an intervention); returning None leaves it
as it is. Without a tap the maths does not change.
Weights are ``pycohere.spec.weights.Weight`` objects (any storage format) or plain arrays [out, in];
a layer's parameters are a ``pycohere.spec.params.LayerParams``.
"""
from __future__ import annotations

import math

import numpy as np

from .params import Dims, ForwardState, LayerParams
from .weights import Weight


def tap(rec, name: str, value: np.ndarray) -> np.ndarray:
    """Show ``value`` to the tap ``rec``; its replacement when it returns one."""
    if rec is None:
        return value
    out = rec(name, value)
    return value if out is None else out


def linear(x: np.ndarray, w, b: np.ndarray | None = None) -> np.ndarray:
    """x (..., in) @ W.T (+ b) -> (..., out): torch.nn.Linear."""
    y = w.matmul(x) if isinstance(w, Weight) else x @ np.asarray(w, dtype=x.dtype).T
    return y if b is None else y + b


def layer_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """COHERE: mean-centred LayerNorm *without bias* (Llama uses RMSNorm).

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight, biased variance (divide by N), over the last
    axis. transformers (CohereLayerNorm) does this in float32; pycohere does it in x's dtype, which
    is float32 in float32 mode and float64 in the golden mode.
    """
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return weight * (centred * (1.0 / np.sqrt(var + x.dtype.type(eps))))


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """COHERE: *interleaved* RoPE: pairs (2i, 2i+1) rotate by angle i (Llama rotates the halves
    (i, i + Dh/2)). x (B, T, n, Dh); cos, sin (B, T, Dh/2).

        out[2i]   = x[2i] cos_i - x[2i+1] sin_i
        out[2i+1] = x[2i+1] cos_i + x[2i] sin_i
    """
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # (B, T, 1, Dh/2): broadcast over heads
    even, odd = x[..., 0::2], x[..., 1::2]           # (B, T, n, Dh/2) each
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = odd * c + even * s
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def attention_mask(q_index: np.ndarray, kv_index: np.ndarray, kv_valid: np.ndarray | None,
                   window: int | None, segments: np.ndarray | None = None) -> np.ndarray:
    """Boolean "may attend" mask (B, 1, T, S) from absolute cache indices.

    Causal: kv <= q. Padding: kv_valid[b, kv]. Sliding window (Cohere2 sliding layers):
    q - kv < window (transformers masking_utils ``sliding_window_overlay``). Indices are positions
    in the cache, not position_ids (which start at 0 after left padding). Packed sequences:
    segments (B, S) sequence number per position (no cache), kv only within the query's sequence.
    q_index (T,), kv_index (S,), kv_valid (B, S) bool or None.
    """
    allowed = kv_index[None, :] <= q_index[:, None]                    # (T, S)
    if window is not None:
        allowed &= (q_index[:, None] - kv_index[None, :]) < window
    allowed = allowed[None, None]                                      # (1, 1, T, S)
    if kv_valid is not None:
        allowed = allowed & kv_valid[:, None, None, :]                 # (B, 1, T, S)
    if segments is not None:
        same = segments[:, q_index][:, :, None] == segments[:, kv_index][:, None, :]   # (B, T, S)
        allowed = allowed & same[:, None]                              # (B, 1, T, S)
    return allowed


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray, rec=None) -> np.ndarray:
    """Scaled dot-product attention with grouped kv heads (GQA/MQA).

    q (B, T, H, Dh), k and v (B, S, K, Dh), allowed (B or 1, 1, T, S) -> (B, T, H, Dh).
    Query head h reads kv head h // G (transformers ``repeat_kv`` repeats each kv head G times
    contiguously); here the G query heads of a kv head are a separate axis, so K/V are not copied.
    Masked scores are finfo.min, not -inf (as transformers), so a fully masked row is uniform.
    """
    B, T, H, Dh = q.shape
    K = k.shape[2]
    G = H // K
    qg = q.reshape(B, T, K, G, Dh).transpose(0, 2, 3, 1, 4)         # (B, K, G, T, Dh)
    kt = k.transpose(0, 2, 3, 1)[:, :, None]                        # (B, K, 1, Dh, S)
    vt = v.transpose(0, 2, 1, 3)[:, :, None]                        # (B, K, 1, S, Dh)
    scores = (qg @ kt) * q.dtype.type(Dh ** -0.5)                   # (B, K, G, T, S)
    mask = allowed[:, :, None]                                      # (B, 1, 1, T, S)
    scores = np.where(mask, scores, np.finfo(q.dtype).min)
    probs = softmax(scores, axis=-1)                                # (B, K, G, T, S)
    probs = tap(rec, "attn_probs", probs.reshape(B, H, T, -1))      # (B, H, T, S)
    out = probs.reshape(B, K, G, T, -1) @ vt                        # (B, K, G, T, Dh)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)        # (B, T, H, Dh)


_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; math.erf is exact to 1 ulp


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)) (transformers ACT2FN["gelu"]), not the
    tanh approximation."""
    e = _erf(x / np.sqrt(x.dtype.type(2))).astype(x.dtype)
    return x * x.dtype.type(0.5) * (x.dtype.type(1) + e)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU / swish: x * sigmoid(x)."""
    return x / (x.dtype.type(1) + np.exp(-x))


ACTIVATIONS = {"silu": silu, "swish": silu, "gelu": gelu}


def mlp(h: np.ndarray, gate_w, up_w, down_w, act: str = "silu", rec=None) -> np.ndarray:
    """Gated MLP: down(act(gate(h)) * up(h)). h (B, T, D) -> (B, T, D); gate/up (B, T, F)."""
    gate = tap(rec, "mlp_gate", linear(h, gate_w))
    up = tap(rec, "mlp_up", linear(h, up_w))
    a = tap(rec, "mlp_act", ACTIVATIONS[act](gate) * up)
    return tap(rec, "mlp_out", linear(a, down_w))


def qkv_projection(h: np.ndarray, p: LayerParams, dims: Dims, state: ForwardState, rec=None):
    """Queries, keys and values of one layer from the normed input h (B, T, D): projections, then the
    q/k LayerNorm (qk-norm), then RoPE. -> q (B, T, H, Dh), k and v (B, T, K, Dh)."""
    B, T, _ = h.shape
    H, K, Dh = dims.H, dims.K, dims.Dh
    q = tap(rec, "q", linear(h, p.q_proj, p.q_bias).reshape(B, T, H, Dh))   # (B, T, H, Dh)
    k = tap(rec, "k", linear(h, p.k_proj, p.k_bias).reshape(B, T, K, Dh))   # (B, T, K, Dh)
    v = tap(rec, "v", linear(h, p.v_proj, p.v_bias).reshape(B, T, K, Dh))   # (B, T, K, Dh)
    if p.q_norm is not None:
        # COHERE: per-head q/k LayerNorm over Dh (Command R+), weights (H, Dh) / (K, Dh), before RoPE.
        q = tap(rec, "q_normed", layer_norm(q, p.q_norm, dims.eps))
        k = tap(rec, "k_normed", layer_norm(k, p.k_norm, dims.eps))
    # COHERE: Cohere2's full-attention layers skip RoPE entirely (NoPE); sliding layers use it.
    if p.use_rope:
        q = tap(rec, "q_rope", apply_rope(q, state.cos, state.sin))
        k = tap(rec, "k_rope", apply_rope(k, state.cos, state.sin))
    return q, k, v


def attention_block(h: np.ndarray, p: LayerParams, dims: Dims, state: ForwardState, cache_kv,
                    rec=None) -> np.ndarray:
    """Self-attention of one layer on the normed input h (B, T, D) -> (B, T, D).

    cache_kv(k, v) -> (k_all, v_all, start): appends this call's keys/values to the layer's cache and
    returns every stored one (B, S, K, Dh) with the absolute cache index of the first.
    """
    B, T, _ = h.shape
    q, k, v = qkv_projection(h, p, dims, state, rec)
    k_all, v_all, start = cache_kv(k, v)                              # (B, S, K, Dh)
    kv_index = np.arange(start, start + k_all.shape[1])               # (S,)
    kv_valid = None if state.kv_valid is None else state.kv_valid[:, kv_index]  # (B, S)
    allowed = attention_mask(state.q_index, kv_index, kv_valid, p.sliding_window, state.segments)  # (B|1, 1, T, S)
    o = tap(rec, "attn_context", attention(q, k_all, v_all, allowed, rec))     # (B, T, H, Dh)
    return tap(rec, "attn_out", linear(o.reshape(B, T, dims.H * dims.Dh), p.o_proj, p.o_bias))  # (B, T, D)


def decoder_layer(x: np.ndarray, p: LayerParams, dims: Dims, state: ForwardState, cache_kv,
                  rec=None) -> np.ndarray:
    """COHERE: the *parallel* residual block: one LayerNorm feeds both attention and the MLP,
    x_next = x + attn(LN(x)) + mlp(LN(x)) (Llama: two norms, sequential residuals)."""
    h = tap(rec, "input_layernorm", layer_norm(x, p.input_layernorm, dims.eps))
    a = attention_block(h, p, dims, state, cache_kv, rec)
    m = mlp(h, p.gate_proj, p.up_proj, p.down_proj, dims.act, rec)
    return tap(rec, "output", x + a + m)


def lm_head(h: np.ndarray, head_w, logit_scale: float) -> np.ndarray:
    """COHERE: logits = (h @ E.T) * logit_scale, with E the *tied* input embedding by default
    (Command-R: 0.0625). Forgetting the scale makes sampling temperatures meaningless."""
    return linear(h, head_w) * h.dtype.type(logit_scale)


def causal_lm_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean next-token cross-entropy: logits (B, T, V)[:, t] predicts labels (B, T)[:, t+1]; label
    -100 is ignored (transformers ``ForCausalLMLoss``). Computed in float64; nan when nothing counts."""
    shift_logits = logits[:, :-1].astype(np.float64)
    target = labels[:, 1:]
    keep = target != -100
    if not keep.any():
        return float("nan")  # transformers: mean over zero items is nan
    z = shift_logits[keep]                                            # (N, V)
    t = target[keep]                                                  # (N,)
    m = z.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(logz - z[np.arange(len(t)), t]))
