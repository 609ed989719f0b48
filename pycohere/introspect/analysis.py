"""Analyses of one forward pass, as small pure functions over its cache (``model.run_with_cache``).

A cache maps tap names (``pycohere.spec.taps``) to activations with their batch axis: ``embed_tokens``
(B, T, D), ``layers.{i}.attn_out`` (B, T, D), ``layers.{i}.attn_probs`` (B, H, T, S), ... The residual
stream of Cohere's parallel block is x(0) = ``embed_tokens``, x(l+1) = ``layers.{l}.output`` = x(l) +
``attn_out`` + ``mlp_out``; the model's logits are ``lm_head(LN(x(L)))`` (the final mean-centred LayerNorm,
the tied head, ``logit_scale``). Everything here reads those taps and the model's own spec functions
(``pycohere.spec.layers``), so the lens at the last layer *is* the model's output, not a re-derivation.

Interventions (``zero_head``, ``patch_from``) build ``hooks`` dicts for ``model(ids, hooks=...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from ..spec import layers as L
from ..spec.taps import LAYER_OPS, parse_tap


# --- the residual stream --------------------------------------------------------------------------
def n_layers(cache: dict, model=None) -> int:
    """Number of decoder layers whose ``output`` the cache holds (0..L-1, none missing; with ``model``, all
    of its layers)."""
    found = sorted(layer for layer, op in map(parse_tap, cache) if layer is not None and op == "output")
    if not found or found != list(range(len(found))):
        raise InputError("this cache has no complete set of layers.{i}.output taps; record them with "
                         "model.run_with_cache(ids) (names=None keeps everything)")
    if model is not None and len(found) != model.config.num_hidden_layers:
        raise InputError(f"this cache has layers 0..{len(found) - 1} of the model's {model.config.num_hidden_layers}; "
                         "record every layer (model.run_with_cache(ids), names=None)")
    return len(found)


def require(cache: dict, name: str) -> np.ndarray:
    """``cache[name]``, or an InputError saying how to record it."""
    if name not in cache:
        raise InputError(f"the cache has no {name!r}; run model.run_with_cache(ids) without names= (or with a "
                         f"pattern matching {name!r})")
    return cache[name]


def residual_stream(cache: dict, model=None) -> list[np.ndarray]:
    """[x(0), x(1), ..., x(L)]: the residual entering layer 0 (the embeddings), then each layer's output;
    each (B, T, D). With ``model``, the cache must hold all of its layers."""
    return [require(cache, "embed_tokens")] + [require(cache, f"layers.{i}.output")
                                              for i in range(n_layers(cache, model))]


def _head_params(model):
    params = getattr(model, "params", None)
    if params is None or getattr(params, "lm_head", None) is None:
        raise InputError(f"{type(model).__name__} has no output head; pass a CohereForCausalLM / Cohere2ForCausalLM")
    return params.norm, params.lm_head, float(model.config.layer_norm_eps), float(model.config.logit_scale)


# --- logit lens ------------------------------------------------------------------------------------
def lens_logits(model, x: np.ndarray) -> np.ndarray:
    """The model's own output head on any residual x (..., D): final LayerNorm (mean-centred, no bias),
    then the (tied) head times ``logit_scale``, each exactly once -> (..., V). On x(L) this is the forward's
    own computation (``CohereModel._forward`` then ``lm_head``), so it returns the model's logits."""
    norm, head, eps, scale = _head_params(model)
    return L.lm_head(L.layer_norm(x, norm, eps), head, scale)


def logit_lens(model, cache: dict, positions=None) -> np.ndarray:
    """(L+1, B, T', V): row l is ``lens_logits(x(l))``, the logits the model would give if the residual
    stopped after l layers (row 0: the embeddings alone; row L: the model's logits). ``positions``
    (indices into T) keeps fewer positions, which a large vocabulary may need (V = 256000)."""
    _head_params(model)  # a model with a head, before reading its layer count
    rows = residual_stream(cache, model)
    if positions is not None:
        rows = [x[:, positions] for x in rows]
    return np.stack([lens_logits(model, x) for x in rows])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def top_tokens(logits: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(ids, probabilities) of the k most likely tokens of each row of logits (..., V), most likely first
    (ties: the lower id, as ``np.argsort(kind="stable")``)."""
    lp = log_softmax(logits)
    ids = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    return ids, np.exp(np.take_along_axis(lp, ids, -1))


def token_rank(logits: np.ndarray, token: np.ndarray) -> np.ndarray:
    """Rank (0 = top) of ``token`` (...) in each row of logits (..., V): how many tokens score higher."""
    t = np.asarray(token)[..., None]
    return (logits > np.take_along_axis(logits, np.broadcast_to(t, logits.shape[:-1] + (1,)), -1)).sum(-1)


# --- norms and entropy ----------------------------------------------------------------------------
def norms(cache: dict) -> dict[str, np.ndarray]:
    """L2 norms over D at every position: ``residual`` (L+1, B, T) of x(0..L), ``attn_out`` and ``mlp_out``
    (L, B, T) of what each layer's two parallel branches add."""
    n = n_layers(cache)

    def norm(a):
        return np.linalg.norm(a.astype(np.float64), axis=-1)
    return {"residual": np.stack([norm(x) for x in residual_stream(cache)]),
            "attn_out": np.stack([norm(require(cache, f"layers.{i}.attn_out")) for i in range(n)]),
            "mlp_out": np.stack([norm(require(cache, f"layers.{i}.mlp_out")) for i in range(n)])}


def attention_entropy(cache: dict) -> np.ndarray:
    """(L, B, H, T) entropy in nats of each query's attention distribution, -sum_s p log p (0 log 0 = 0):
    0 when a head looks at one key, log(n) when it spreads evenly over n keys."""
    out = []
    for i in range(n_layers(cache)):
        p = require(cache, f"layers.{i}.attn_probs").astype(np.float64)       # (B, H, T, S)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        out.append(-plogp.sum(-1))
    return np.stack(out)


# --- direct logit attribution ---------------------------------------------------------------------
@dataclass
class Attribution:
    """Direct logit attribution: ``terms[c]`` is component ``labels[c]``'s share of the logits of
    ``tokens``; ``terms.sum(0)`` equals ``logits`` (the model's) up to rounding.

    labels: "embed_tokens", then "layers.{i}.attn_out", "layers.{i}.mlp_out" for each layer.
    terms (C, B, T, K), tokens (B, T, K), logits (B, T, K), scale (B, T) the frozen LayerNorm divisor.
    """

    labels: list[str]
    terms: np.ndarray
    tokens: np.ndarray
    logits: np.ndarray
    scale: np.ndarray

    def layer_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(attn, mlp), each (L, B, T, K): the two parallel branches of every layer."""
        return self.terms[1::2], self.terms[2::2]


def direct_logit_attribution(model, cache: dict, tokens=None) -> Attribution:
    """Split the logits of ``tokens`` into the direct contributions of the embeddings and of every layer's
    attention and MLP branch.

    The decomposition: x(L) = embed + sum_l (attn_l + mlp_l) (the parallel block adds both branches to the
    residual, so they are separable), and the final LayerNorm is LN(x) = w * (x - mean(x)) / s with
    s = sqrt(var(x) + eps). LN is not linear, but with s *frozen at its value on this run* the rest is:
    centring is linear, so LN(x) = sum_c w * (c - mean(c)) / s over the components c, and
    logits = LN(x) E^T * logit_scale = sum_c [w * (c - mean(c)) / s] E^T * logit_scale exactly. Each term
    is thus "what c writes along the token's unembedding direction, as the final norm scaled it on this
    run" (TransformerLens's ``apply_ln_to_stack`` with the cached scale). Computed in float64, with the head's
    float rows: a model loaded with ``activations="llama.cpp"`` rounds the head's input to 8-bit blocks, so
    its logits differ from the sum by that rounding (~1e-3).

    tokens: None (the model's top token at each position, K = 1), ids (K,) for every position, or
    (B, T, K) ids per position.
    """
    norm, head, eps, scale = _head_params(model)
    n = n_layers(cache, model)
    labels = ["embed_tokens"] + [f"layers.{i}.{op}" for i in range(n) for op in ("attn_out", "mlp_out")]
    parts = [require(cache, name).astype(np.float64) for name in labels]     # each (B, T, D)
    x_final = require(cache, f"layers.{n - 1}.output").astype(np.float64)    # (B, T, D)
    gap = np.abs(sum(parts) - x_final).max() / max(1.0, np.abs(x_final).max())
    if gap > 1e-3:
        raise InputError(f"the cache's residual is not embed_tokens + the layers' attn_out and mlp_out (off by "
                         f"{gap:.1e} relative): a hook replaced a layers.{{i}}.output; attribute a run "
                         "whose interventions act on attn_out / mlp_out (or earlier) instead")
    logits = require(cache, "logits")                                        # (B, T, V)
    B, T, _ = x_final.shape
    if tokens is None:
        tokens = logits.argmax(-1)[..., None]                              # (B, T, 1)
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim == 1:
        tokens = np.broadcast_to(tokens, (B, T, tokens.shape[0]))
    if tokens.ndim != 3 or tokens.shape[:2] != (B, T) or tokens.min() < 0 or tokens.max() >= logits.shape[-1]:
        raise InputError(f"tokens must be None, ids (K,) or ids (B, T, K) = ({B}, {T}, K) in [0, "
                         f"{logits.shape[-1]}); got shape {tokens.shape}")
    centred_final = x_final - x_final.mean(-1, keepdims=True)
    s = np.sqrt((centred_final * centred_final).mean(-1) + eps)             # (B, T): the frozen divisor
    w = np.asarray(norm, dtype=np.float64)
    rows = head.rows(tokens, np.float64)                                   # (B, T, K, D) unembedding rows
    terms = np.stack([np.einsum("btd,btkd->btk", w * (c - c.mean(-1, keepdims=True)) / s[..., None], rows) * scale
                      for c in parts])                                     # (C, B, T, K)
    return Attribution(labels, terms, tokens, np.take_along_axis(logits, tokens, -1), s)


# --- interventions --------------------------------------------------------------------------------
def zero_head(layer: int, head: int) -> dict:
    """Hooks that zero-ablate query head ``head`` of layer ``layer``: its slice of ``attn_context``
    (B, T, H, Dh) becomes 0, so it adds nothing through o_proj (o_proj's bias, if any, stays)."""
    def fn(a, name):
        if not 0 <= head < a.shape[2]:
            raise InputError(f"head {head} out of range: layer {layer} has heads 0..{a.shape[2] - 1}")
        out = a.copy()
        out[:, :, head] = 0
        return out
    return {f"layers.{layer}.attn_context": fn}


def position_axis(name: str) -> int:
    """The token axis of a tap with its batch axis: 2 for attn_probs (B, H, T, S), else 1."""
    return 2 if parse_tap(name)[1] == "attn_probs" else 1


def patch_from(cache: dict, names="*", positions=None) -> dict:
    """Hooks that replace every activation matching ``names`` (patterns, as hooks) with its value in
    ``cache`` (another run's, e.g. a clean prompt's), at ``positions`` (token indices; None: all)."""
    patterns = [names] if isinstance(names, str) else list(names)

    def fn(a, name):
        if name not in cache:
            raise InputError(f"cannot patch {name!r}: the source cache has no such activation")
        src = cache[name]
        if src.shape != a.shape:
            raise InputError(f"cannot patch {name!r}: the source run's activation is {src.shape}, this run's "
                             f"{a.shape}; patch between prompts of the same length")
        if positions is None:
            return src
        ax = position_axis(name)
        out = a.copy()
        index = (slice(None),) * ax + (positions,)
        out[index] = src[index]
        return out
    return {p: fn for p in patterns}


# --- activation patching --------------------------------------------------------------------------
@dataclass
class Patching:
    """An activation-patching sweep: the corrupted prompt run with ``layers.{l}.{site}`` at position t
    taken from the clean run. ``effect[l, t]`` = (metric(patched) - metric(corrupted)) /
    (metric(clean) - metric(corrupted)): 1 where that one activation restores the clean behaviour, 0
    where it does nothing."""

    site: str
    metric: np.ndarray     # (L, T) metric of each patched run
    effect: np.ndarray     # (L, T) normalised as above
    clean: float
    corrupted: float
    answer: int            # the clean run's next token at the last position
    foil: int              # the corrupted run's


def single_prompt(ids, what: str) -> np.ndarray:
    a = np.asarray(ids, dtype=np.int64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] != 1 or a.shape[1] == 0:
        raise InputError(f"{what} must be one prompt of token ids, (T,) or (1, T); got shape {a.shape}")
    return a


def activation_patching(model, clean_ids, corrupted_ids, site: str = "output",
                        metric: Callable[[np.ndarray], float] | None = None, layers=None) -> Patching:
    """Patch ``layers.{l}.{site}`` at one position at a time from the clean run into the corrupted run.

    site: a per-layer tap name (``output``: the residual after layer l; ``attn_out``, ``mlp_out``, ...).
    metric: logits (1, T, V) -> float; default the logit difference at the last position between the clean
    run's next token and the corrupted run's (or the clean token's logit when they agree).
    layers: which layers to sweep (default all). Costs len(layers) x T forward passes.
    """
    if site not in LAYER_OPS:
        raise InputError(f"site {site!r} is not a per-layer tap; use one of {', '.join(LAYER_OPS)}")
    clean_ids, corrupted_ids = single_prompt(clean_ids, "clean_ids"), single_prompt(corrupted_ids, "corrupted_ids")
    if clean_ids.shape != corrupted_ids.shape:
        raise InputError(f"clean and corrupted prompts must have the same length to patch position by position; "
                         f"got {clean_ids.shape[1]} and {corrupted_ids.shape[1]} tokens")
    # every run on the spec path (hooks and recorders take it), so a patch that changes nothing gives
    # exactly the corrupted metric, not one off by the fast path's rounding
    out_clean, cache = model.run_with_cache(clean_ids)
    corrupted_logits = model.run_with_cache(corrupted_ids, names=["logits"])[0].logits
    answer, foil = int(out_clean.logits[0, -1].argmax()), int(corrupted_logits[0, -1].argmax())
    if metric is None:
        def metric(logits):
            last = logits[0, -1].astype(np.float64)
            return float(last[answer] - (last[foil] if foil != answer else 0.0))
    m_clean, m_corr = float(metric(out_clean.logits)), float(metric(corrupted_logits))
    if m_clean == m_corr:
        raise InputError("the clean and corrupted prompts give the same metric value, so no patch can restore "
                         "anything; choose a corrupted prompt that changes the prediction (or another metric)")
    n = model.config.num_hidden_layers
    layers = list(range(n)) if layers is None else list(layers)
    T = clean_ids.shape[1]
    values = np.full((n, T), np.nan)
    for layer in layers:
        name = f"layers.{layer}.{site}"
        if name not in cache:
            raise InputError(f"this model computes no {name!r} (qk-norm and RoPE taps exist only where the layer "
                             "uses them)")
        for t in range(T):
            values[layer, t] = metric(model(corrupted_ids, hooks=patch_from(cache, name, [t])).logits)
    return Patching(site, values, (values - m_corr) / (m_clean - m_corr), m_clean, m_corr, answer, foil)

