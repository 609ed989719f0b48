"""Golden bundles: fixtures of every intermediate of a forward pass, and the tools that compare them
(``bundle``: the format; ``make``: run a model into one; ``compare``: diff two, naming the first divergence).

May import: everything up to ``pycohere.text`` (it runs models and tokenizes prompts); never ``pycohere.cli``.
"""
from .bundle import (BUNDLE_FILES, DEFAULT_MAX_ATTN_BYTES, DEFAULT_TOP_K, INPUTS, MANIFEST, OUTPUTS, PROFILES,
                     SCHEMA, SCHEMA_VERSION, TAPS, TOLERANCES, Bundle, describe)
from .compare import Report, Row, compare_bundles, verify_model
from .make import TapCollector, make_bundle, rerun, run_prompt
from ..spec.taps import GLOBAL_AFTER, GLOBAL_BEFORE, LAYER_OPS

__all__ = ["BUNDLE_FILES", "DEFAULT_MAX_ATTN_BYTES", "DEFAULT_TOP_K", "INPUTS", "MANIFEST", "OUTPUTS", "PROFILES",
           "SCHEMA", "SCHEMA_VERSION", "TAPS", "TOLERANCES", "Bundle", "describe", "Report", "Row",
           "compare_bundles", "verify_model", "TapCollector", "make_bundle", "rerun", "run_prompt",
           "GLOBAL_AFTER", "GLOBAL_BEFORE", "LAYER_OPS"]
