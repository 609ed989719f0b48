"""Looking inside a forward pass: the terminal walkthrough of one token (``explain``) and attention-mask
pictures (``masks``); ``Recorder`` (the tap that keeps copies) is defined with the tap names in
``pycohere.spec.taps``.

May import: everything up to ``pycohere.text``; never ``pycohere.cli``.
"""
from .explain import explain
from .masks import AttentionMaskVisualizer, render_masks
from ..spec.taps import Recorder

__all__ = ["AttentionMaskVisualizer", "Recorder", "explain", "render_masks"]
