"""The manifest: every tensor a config implies, with its shape, checked against a checkpoint before loading.

Names and shapes come from the one parameter table (``pycohere.spec.params.PARAMETERS``).
"""
from __future__ import annotations

from ..errors import WeightMismatchError
from ..spec.params import LAYER_PARAMETERS, MODEL_PARAMETERS, Dims, hf_name, present

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # stale buffers saved by old transformers versions


def expected_tensors(config) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its shape (transformers' parameter names), in the order
    the converters write them: embedding, final norm, the layers, then an untied head."""
    dims = Dims.from_config(config)
    first = [p for p in MODEL_PARAMETERS if p.field != "lm_head"]
    last = [p for p in MODEL_PARAMETERS if p.field == "lm_head"]
    m = {hf_name(p): p.shape_for(dims) for p in first if present(p, config)}
    for i in range(config.num_hidden_layers):
        m.update({hf_name(p, i): p.shape_for(dims) for p in LAYER_PARAMETERS if present(p, config)})
    m.update({hf_name(p): p.shape_for(dims) for p in last if present(p, config)})
    return m


def check_manifest(config, shapes: dict[str, tuple[int, ...]], where: str = "checkpoint",
                   problems: list[str] | tuple = ()) -> None:
    """Compare the file's tensors with the manifest; report every problem in one error.

    ``shapes`` are in transformers' (logical) names; a quantized checkpoint gives each quantized
    weight's logical shape and lists its missing/misshaped packed arrays in ``problems``
    (``pycohere.checkpoints.safetensors``), reported in the same error."""
    want = expected_tensors(config)
    ignorable = lambda n: n.endswith(IGNORED_SUFFIXES) or (n == "lm_head.weight" and config.tie_word_embeddings)
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(n for n in set(shapes) - set(want) if not ignorable(n))
    misshaped = sorted(f"{n}: file {list(shapes[n])}, config wants {list(want[n])}"
                       for n in set(want) & set(shapes) if tuple(shapes[n]) != tuple(want[n]))
    if missing or unexpected or misshaped or problems:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped),
                             ("incomplete quantized", sorted(problems))):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise WeightMismatchError(
            f"{where} does not match its config (config.json or GGUF metadata) ({config.model_type}, {config.num_hidden_layers} layers, "
            f"hidden {config.hidden_size}): " + "; ".join(parts) +
            ". Check that config.json belongs to these weights (use_qk_norm, attention_bias, "
            "tie_word_embeddings, head counts).")
