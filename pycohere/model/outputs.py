"""What a forward pass returns: transformers' output classes (fields by name, also indexable by name)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec.cache import KVCache


@dataclass
class BaseModelOutputWithPast:
    last_hidden_state: np.ndarray                 # (B, T, D), after the final LayerNorm
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None            # L + 1 of (B, T, D) (the last after the final norm)
    attentions: tuple | None = None               # L of (B, H, T, S)

    def __getitem__(self, key):  # transformers outputs are also indexable by name
        return getattr(self, key)


@dataclass
class CausalLMOutput:
    logits: np.ndarray                            # (B, T', V), already times logit_scale
    loss: float | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None

    def __getitem__(self, key):
        return getattr(self, key)
