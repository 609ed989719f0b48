"""``pycohere mask``: picture the attention masks the model applies to a prompt."""
from __future__ import annotations

import sys

from ..introspect.masks import AttentionMaskVisualizer


def cmd_mask(args) -> int:
    """Print the attention masks the model applies to the prompt."""
    AttentionMaskVisualizer(args.model, color=sys.stdout.isatty() and not args.no_color)(args.prompt)
    return 0


def register(sub) -> None:
    mask = sub.add_parser("mask", help="picture the attention masks for a prompt",
                          description="Show which tokens attend to which, with the sliding-window panel for "
                                      "Cohere2 models (as transformers' AttentionMaskVisualizer).")
    mask.add_argument("model", help="checkpoint folder or hub repo id (with tokenizer files)")
    mask.add_argument("prompt")
    mask.add_argument("--no-color", action="store_true")
    mask.set_defaults(func=cmd_mask)
