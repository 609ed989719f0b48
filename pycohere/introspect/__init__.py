"""Looking inside a forward pass: recording named intermediates (``recorder``), the terminal walkthrough
of one token (``explain``) and attention-mask pictures (``masks``).

May import: everything up to ``pycohere.text``; never ``pycohere.cli``.
"""
from .explain import explain
from .masks import AttentionMaskVisualizer, render_masks
from .recorder import Recorder

__all__ = ["AttentionMaskVisualizer", "Recorder", "explain", "render_masks"]
