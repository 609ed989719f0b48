"""The names of the intermediates a forward pass shows its tap (``rec``), in forward order.

Golden bundles, recorders, hooks and the explain walkthrough all use these names: ``embed_tokens``,
``rope_cos`` / ``rope_sin``, then per layer ``layers.{i}.<op>`` for every op of ``LAYER_OPS``, then
``norm`` and ``logits``. The order is the order of the computation (attention before MLP inside a layer,
although the two branches are parallel), which is what "first divergence" walks.
"""
from __future__ import annotations

GLOBAL_BEFORE = {
    "embed_tokens": "embedding lookup E[ids]",
    "rope_cos": "RoPE cos table",
    "rope_sin": "RoPE sin table",
}
LAYER_OPS = {
    "input_layernorm": "LayerNorm, mean-centred, no bias",
    "q": "q projection",
    "k": "k projection",
    "v": "v projection",
    "q_normed": "per-head q LayerNorm (qk-norm)",
    "k_normed": "per-head k LayerNorm (qk-norm)",
    "q_rope": "RoPE, interleaved pairs",
    "k_rope": "RoPE, interleaved pairs",
    "attn_probs": "softmax(q.k / sqrt(Dh) + mask)",
    "attn_context": "attention-weighted sum of v",
    "attn_out": "o_proj",
    "mlp_gate": "gate_proj",
    "mlp_up": "up_proj",
    "mlp_act": "act(gate) * up",
    "mlp_out": "down_proj",
    "output": "parallel residual x + attn + mlp",
}
GLOBAL_AFTER = {
    "norm": "final LayerNorm",
    "logits": "lm_head x logit_scale",
}


def parse_tap(name: str) -> tuple[int | None, str]:
    """'layers.3.q_rope' -> (3, 'q_rope'); 'logits' -> (None, 'logits')."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None, name


def tap_order_key(name: str) -> tuple:
    """Sort key giving forward order; unknown names (other producers' extras) sort after the known
    ones of their layer, or after everything, by name."""
    layer, op = parse_tap(name)
    if layer is not None:
        ops = list(LAYER_OPS)
        return (1, layer, ops.index(op) if op in ops else len(ops), op)
    if op in GLOBAL_BEFORE:
        return (0, list(GLOBAL_BEFORE).index(op), 0, "")
    if op in GLOBAL_AFTER:
        return (2, list(GLOBAL_AFTER).index(op), 0, "")
    return (3, 0, 0, op)


def describe(name: str, extra: dict | None = None) -> str:
    """Human name of a tap: 'layer 1, q_rope (RoPE, interleaved pairs)'; ``extra`` adds descriptions of
    other names (a golden bundle's outputs)."""
    layer, op = parse_tap(name)
    what = {**GLOBAL_BEFORE, **LAYER_OPS, **GLOBAL_AFTER, **(extra or {})}.get(op)
    text = f"{op} ({what})" if what else op
    return text if layer is None else f"layer {layer}, {text}"
