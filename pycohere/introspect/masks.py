"""Attention-mask pictures in the terminal, like transformers' ``AttentionMaskVisualizer``.

The masks are built by the spec's own ``pycohere.spec.layers.attention_mask`` (the function every forward
pass uses), labelled with the real tokens (BOS included). For Cohere2 the sliding-window panel shows
what a sliding layer sees next to the full (NoPE) layers' causal mask.
"""
from __future__ import annotations

import numpy as np

from ..checkpoints.probe import probe
from ..config import CohereConfig
from ..errors import TokenizerError
from ..spec.layers import attention_mask
from ..text.tokenizer import CohereTokenizer

GREEN, RESET = "\033[92m", "\033[0m"
ON, OFF = "■", "⬚"


def render_masks(labels: list[str], window: int | None = None, kv_valid=None, color: bool = True) -> str:
    """Causal mask (and, with ``window``, the sliding-window mask) for tokens ``labels`` as text."""
    n = len(labels)
    idx = np.arange(n)
    valid = None if kv_valid is None else np.asarray(kv_valid, dtype=bool)[None]
    panels = [("full attention (causal)", attention_mask(idx, idx, valid, None)[0, 0])]
    if window is not None:
        panels.append((f"sliding window {window}", attention_mask(idx, idx, valid, window)[0, 0]))
    width = max(len(repr(t)) for t in labels)
    green = (lambda s: f"{GREEN}{s}{RESET}") if color else (lambda s: s)
    cell = lambda m, i, j: green(ON) if (i == j and m[i, j]) else (ON if m[i, j] else OFF)
    gap = "    |    "
    out = [f"{green(ON)}: i == j (diagonal)   {ON}: may attend   {OFF}: masked"]
    head = " " * (width + 5)
    pw = max([2 * n - 1] + [len(t) for t, _ in panels])  # panel width; cells are 2 characters apart
    pad = lambda row: row + " " * (pw - (2 * n - 1))
    out.append(head + gap.join(title.ljust(pw) for title, _ in panels))
    digits = len(str(n - 1))
    for d in range(digits):  # column numbers, written vertically
        row = " ".join(str(j).rjust(digits)[d] for j in range(n))
        out.append(head + gap.join(pad(row) for _ in panels))
    for i, label in enumerate(labels):
        rows = [pad(" ".join(cell(m, i, j) for j in range(n))) for _, m in panels]
        out.append(f"{repr(label).ljust(width)}: {str(i).rjust(2)} " + gap.join(rows).rstrip())
    return "\n".join(out)


class AttentionMaskVisualizer:
    """``AttentionMaskVisualizer(model_or_path)("text")`` prints the masks the model applies to the text.

    ``model`` may be a loaded pycohere model, a checkpoint path, or a config; a tokenizer is read from the
    same folder unless given. Returns the rendered text too.
    """

    def __init__(self, model, tokenizer=None, color: bool = True):
        if isinstance(model, CohereConfig):
            self.config, path = model, None
        elif hasattr(model, "config"):
            self.config = model.config
            path = getattr(model, "probe", None)
        else:
            path = probe(model)  # one probe: config and tokenizer
            self.config = path.config
        self.tokenizer = tokenizer if tokenizer is not None else (CohereTokenizer.from_pretrained(path) if path else None)
        self.color = color

    def render(self, text: str) -> str:
        if self.tokenizer is None:
            raise TokenizerError("AttentionMaskVisualizer needs a tokenizer: pass tokenizer=... or a checkpoint "
                                 "folder that has tokenizer files")
        ids = self.tokenizer.encode(text)
        labels = [self.tokenizer.decode([i]) for i in ids]  # readable pieces, special tokens included
        types = getattr(self.config, "layer_types", None)
        window = self.config.sliding_window if types and "sliding_attention" in types else None
        title = f"{self.config.model_type}: {len(ids)} tokens"
        if types:
            n_s = sum(t == "sliding_attention" for t in types)
            title += f"; {n_s} sliding layers (RoPE, window {window}), {len(types) - n_s} full layers (NoPE)"
        return title + "\n" + render_masks(labels, window, color=self.color)

    def __call__(self, text: str) -> str:
        s = self.render(text)
        print(s)
        return s
