"""The package's layers, in data-flow order: the one place that says which module may import which.

A module may import modules of its own layer or of lower layers (earlier in ``LAYERS``), never of a
higher one, and no import cycle may exist at all. ``tests/test_layout.py`` reads every module's
imports with ``ast`` (nothing is imported) and names any edge that breaks this;
``tools/draw_layout.py`` draws the diagram of ``docs/architecture.md`` from the same reading.

The order follows the data, with two choices the code asked for:

* **checkpoints sits above quant and kernels.** A weight source (bytes on disk -> logical tensors)
  hands out the spec's ``Weight`` objects: dense ones, quantized ones (``quant``), repacked ones (the
  GPTQ act-order permutation runs as a kernel at load). So it needs both below it.
* **generation sits below model.** The generation loop drives any causal LM through a small protocol
  (``GenerationMixin``: a checked public forward and a trusting internal one); it never imports the
  model. That is what lets the model classes inherit it without a cycle, and what lets the server and
  a tensor-parallel model reuse the same loop.

This module is data only: importing it has no side effects.
"""
from __future__ import annotations

#: (layer name, module prefixes). ``pycohere`` itself (the package ``__init__``) is the public facade:
#: it may import anything and nothing inside the package imports it. A ``__main__`` module belongs to
#: the ``cli`` layer wherever it lives.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("pycohere.errors", "pycohere.constants", "pycohere.layout", "pycohere.version", "pycohere.demo")),
    ("config", ("pycohere.config",)),
    ("io", ("pycohere.io",)),
    ("spec", ("pycohere.spec",)),
    ("quant", ("pycohere.quant",)),
    ("kernels", ("pycohere.kernels",)),
    ("checkpoints", ("pycohere.checkpoints",)),
    ("generation", ("pycohere.generation",)),
    ("model", ("pycohere.model",)),
    ("text", ("pycohere.text",)),
    ("applications", ("pycohere.pipeline", "pycohere.golden", "pycohere.introspect", "pycohere.export")),
    ("services", ("pycohere.serve", "pycohere.parallel")),
    ("cli", ("pycohere.cli",)),
)
FACADE = "pycohere"
CLI_LAYER = "cli"

#: What each layer holds, in a line (the diagram's labels).
ROLES = {
    "base": "errors, constants, version, the demo model's path",
    "config": "config.json -> CohereConfig / Cohere2Config",
    "io": "bytes on disk: safetensors, GGUF, hub, safe writes",
    "spec": "the maths in NumPy: layers, RoPE, cache, Weight",
    "quant": "block formats: schemes (their NumPy spec), QuantizedWeight",
    "kernels": "Numba twins of spec and quant, the twin registry, CPU dispatch",
    "checkpoints": "one probe per path; weight sources for every format",
    "generation": "GenerationConfig, processors, stopping, streamers, the loop",
    "model": "typed parameters, validation, the forward, the fast engine",
    "text": "tokenizer, chat templates, tool-call and citation parsers",
    "applications": "pipeline, golden bundles, introspection, export",
    "services": "HTTP server, tensor parallelism",
    "cli": "one module per command",
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (None for the facade and for modules outside pycohere)."""
    if module.split(".")[-1] == "__main__":
        return CLI_LAYER
    best = None
    for name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (name, p)
    return None if best is None else best[0]


def layer_index(layer: str) -> int:
    return [name for name, _ in LAYERS].index(layer)
