"""Recording named intermediates of a forward pass (per-layer traces, golden bundles).

Layer functions call ``rec(name, array)`` for every intermediate they compute; a ``Recorder`` keeps
copies of those whose names match its patterns. Names are dotted: ``embed_tokens``, ``rope_cos``,
``layers.{i}.input_layernorm``, ``layers.{i}.q`` / ``k`` / ``v`` (after projection),
``q_normed`` / ``k_normed`` (after q/k norm), ``q_rope`` / ``k_rope`` (after RoPE),
``attn_probs`` (B, H, T, S), ``attn_context``, ``attn_out`` (after o_proj), ``mlp_gate``, ``mlp_up``,
``mlp_act``, ``mlp_out``, ``output`` (block output), then ``norm`` and ``logits``.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np


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
