"""``pycohere mask``: picture the attention masks the model applies to a prompt."""
from __future__ import annotations

import sys

from ..introspect.masks import AttentionMaskVisualizer
from .common import add_model_option, model_path


def cmd_mask(args) -> int:
    """Print the attention masks the model applies to the prompt."""
    AttentionMaskVisualizer(model_path(args), color=sys.stdout.isatty() and not args.no_color)(args.prompt)
    return 0


def register(sub) -> None:
    mask = sub.add_parser("mask", help="picture the attention masks for a prompt",
                          description="Show which tokens attend to which, with the sliding-window panel for "
                                      "Cohere2 models (as transformers' AttentionMaskVisualizer).")
    # no --dtype/--backend: the masks follow from the config and the tokens alone, no model is run
    add_model_option(mask, positional=True)
    mask.add_argument("prompt")
    mask.add_argument("--no-color", action="store_true")
    mask.set_defaults(func=cmd_mask)
