"""The names of the intermediates a forward pass shows its tap (``rec``), in forward order.

Golden bundles, recorders, hooks and the explain walkthrough all use these names: ``embed_tokens``,
``rope_cos`` / ``rope_sin``, then per layer ``layers.{i}.<op>`` for every op of ``LAYER_OPS``, then
``norm`` and ``logits``. The order is the order of the computation (attention before MLP inside a layer,
although the two branches are parallel), which is what "first divergence" walks.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np

from ..errors import InputError

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


# --- taps: what a forward shows its intermediates to ---------------------------------------------------
class Recorder:
    """Keep copies of the intermediates whose names match any of ``patterns`` (fnmatch, default all)."""

    def __init__(self, patterns=("*",)):
        self.patterns = tuple([patterns] if isinstance(patterns, str) else patterns)
        self.records: dict[str, np.ndarray] = {}

    def __call__(self, name: str, value: np.ndarray) -> None:
        if any(fnmatchcase(name, p) for p in self.patterns):
            self.records[name] = np.array(value, copy=True)

    def __getitem__(self, name):
        return self.records[name]

    def __contains__(self, name):
        return name in self.records

    def keys(self):
        return self.records.keys()


def matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatchcase(name, pattern)


class Hooks:
    """A tap that runs hooks and then a recorder: ``hooks`` maps tap names or fnmatch patterns to
    ``fn(activation, name)``; a hook's non-None return value replaces the activation for the rest of the
    forward (it must keep the shape), and the recorder (if any) sees the final value.
    ``unmatched()`` lists the patterns that saw no tap (a typo in a hook name)."""

    def __init__(self, hooks: dict, recorder=None):
        if not isinstance(hooks, dict) or not all(isinstance(k, str) and callable(f) for k, f in hooks.items()):
            raise InputError("hooks must be a dict {tap name or pattern: fn(activation, name) -> array or None}, "
                             "e.g. {'layers.0.attn_out': lambda a, name: 0 * a}")
        self.hooks, self.recorder = dict(hooks), recorder
        self.seen: set[str] = set()

    def __call__(self, name: str, value: np.ndarray):
        for pattern, fn in self.hooks.items():
            if matches(name, pattern):
                self.seen.add(pattern)
                out = fn(value, name)
                if out is not None:
                    out = np.asarray(out)
                    if out.shape != value.shape:
                        raise InputError(f"the hook for {pattern!r} returned shape {out.shape} for {name!r}, whose "
                                         f"activation is {value.shape}; a hook must return an array of the same shape "
                                         "(or None to leave the activation as it is)")
                    value = out.astype(value.dtype, copy=False)
        if self.recorder is not None:
            self.recorder(name, value)
        return value

    def unmatched(self) -> list[str]:
        return [p for p in self.hooks if p not in self.seen]


def make_tap(recorder=None, hooks=None):
    """The one tap of a forward call: the recorder alone, or hooks then the recorder (None: no tap)."""
    return Hooks(hooks, recorder) if hooks else recorder
