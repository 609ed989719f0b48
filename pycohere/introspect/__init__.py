"""Looking inside a forward pass: the terminal walkthrough of one token (``explain``), attention-mask
pictures (``masks``), analyses over a ``run_with_cache`` cache (``analysis``: logit lens, norms, attention
entropy, direct logit attribution, head ablation, activation patching), figures that render in a notebook
(``figures``) and the self-contained HTML report (``report``). ``Recorder`` (the tap that keeps copies) and
``Hooks`` are defined with the tap names in ``pycohere.spec.taps``.

May import: everything up to ``pycohere.text``; never ``pycohere.cli``.
"""
from . import analysis, figures
from .analysis import (Attribution, Patching, activation_patching, attention_entropy, direct_logit_attribution,
                       lens_logits, logit_lens, norms, patch_from, residual_stream, top_tokens, zero_head)
from .explain import explain
from .masks import AttentionMaskVisualizer, render_masks
from .report import Report, build_report, write_report
from ..spec.taps import Recorder

__all__ = ["AttentionMaskVisualizer", "Attribution", "Patching", "Recorder", "Report", "activation_patching",
           "analysis", "attention_entropy", "build_report", "direct_logit_attribution", "explain", "figures",
           "lens_logits", "logit_lens", "norms", "patch_from", "render_masks", "residual_stream", "top_tokens",
           "write_report", "zero_head"]
