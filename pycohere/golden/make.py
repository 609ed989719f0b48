"""Making a golden bundle: run a model on prompts, keep every tap, the step logits and top-k of a
greedy continuation (``pycohere golden make``; the float64 NumPy spec by default)."""
from __future__ import annotations

import datetime
import hashlib
import json
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from ..errors import InputError, UnsupportedFormatError
from ..io.safetensors import find_weight_files
from ..spec.cache import layer_windows
from ..spec.taps import GLOBAL_AFTER, GLOBAL_BEFORE, LAYER_OPS, parse_tap, tap_order_key
from ..version import __version__
from .bundle import (DEFAULT_MAX_ATTN_BYTES, DEFAULT_TOP_K, INPUT_NAMES, OUTPUT_NAMES, SCHEMA, SCHEMA_VERSION,
                     Bundle, tolerance_manifest)

HASHED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "model.safetensors.index.json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(folder: Path) -> dict[str, dict]:
    """{file name: {sha256, bytes}} of the config, tokenizer and weight files of a checkpoint folder."""
    names = [n for n in HASHED_FILES if (folder / n).is_file()]
    names += [p.name for p in find_weight_files(folder)]
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in sorted(set(names))}


class TapCollector:
    """Recorder callable keeping float64 copies (batch axis dropped) of the taps that match ``patterns``
    (fnmatch) and are not excluded."""

    def __init__(self, patterns=("*",), exclude=()):
        self.patterns, self.exclude = tuple(patterns), tuple(exclude)
        self.taps: dict[str, np.ndarray] = {}

    def wants(self, name: str) -> bool:
        return any(fnmatchcase(name, p) for p in self.patterns) and not any(fnmatchcase(name, p) for p in self.exclude)

    def __call__(self, name: str, value: np.ndarray) -> None:
        if self.wants(name):
            self.taps[name] = np.array(value[0], dtype=np.float64)  # (1, ...) -> (...)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def topk(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of the k largest entries per row, descending; ties go to the lower id."""
    order = np.argsort(-logprobs, axis=-1, kind="stable")[..., :k]
    return order.astype(np.int64), np.take_along_axis(logprobs, order, -1)


def run_prompt(model, ids, position_ids=None, collector=None, generate: int = 0, k: int = DEFAULT_TOP_K) -> dict:
    """One prompt (T,) through ``model``: taps into ``collector``; greedy continuation of ``generate``
    tokens with the KV cache (EOS is not special: exactly ``generate`` steps).

    Returns step_logits (N+1, V): row j = logits of the next token after the prompt and j generated
    tokens (row 0 is the prompt's last position); generated_ids (N,) = argmax of rows 0..N-1 (ties: the
    lower id, as numpy and torch argmax); topk_ids / topk_logprobs (N+1, k) of each row's log-softmax.
    """
    ids = np.asarray(ids, dtype=np.int64)
    pos = np.arange(len(ids), dtype=np.int64) if position_ids is None else np.asarray(position_ids, np.int64)
    out = model(ids[None], position_ids=pos[None], use_cache=True, recorder=collector)
    rows = [np.asarray(out.logits[0, -1], dtype=np.float64)]
    cache, generated, next_pos = out.past_key_values, [], int(pos[-1]) + 1
    for _ in range(generate):
        tok = int(np.argmax(rows[-1]))
        generated.append(tok)
        out = model(np.array([[tok]]), position_ids=np.array([[next_pos]]), past_key_values=cache, use_cache=True)
        rows.append(np.asarray(out.logits[0, -1], dtype=np.float64))
        next_pos += 1
    step_logits = np.stack(rows)                                          # (N+1, V)
    topk_ids, topk_lp = topk(log_softmax(step_logits), min(k, step_logits.shape[-1]))
    return {"step_logits": step_logits, "generated_ids": np.array(generated, dtype=np.int64),
            "topk_ids": topk_ids, "topk_logprobs": topk_lp}


def attn_probs_bytes(config, lengths, patterns=("*",), itemsize: int = 8) -> int:
    """Bytes of the attention probabilities (H, T, T) of the layers ``patterns`` select, over all prompts."""
    wanted = TapCollector(patterns)
    layers = sum(wanted.wants(f"layers.{i}.attn_probs") for i in range(config.num_hidden_layers))
    return sum(layers * config.num_attention_heads * T * T * itemsize for T in lengths)


def plan_bundle(config, prompts, taps=("*",), generate=0, top_k: int = DEFAULT_TOP_K,
                max_attn_bytes: int = DEFAULT_MAX_ATTN_BYTES):
    """The decisions taken over *all* prompts before any runs: prompts as int64 arrays, generated tokens per
    prompt, and the tap patterns excluded by the size cap (with the manifest's reason). A job that runs
    the prompts in chunks takes them here, so each chunk computes what the whole run would."""
    prompts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    if not prompts or any(p.size == 0 for p in prompts):
        raise InputError("a golden bundle needs at least one prompt and every prompt at least one token")
    n_gen = list(generate) if isinstance(generate, (list, tuple)) else [int(generate)] * len(prompts)
    if any(g < 0 for g in n_gen) or top_k < 1:
        raise InputError(f"--generate must be >= 0 and --top-k >= 1 (got {generate}, {top_k})")
    exclude, omitted = [], {}
    need = attn_probs_bytes(config, [len(p) for p in prompts], taps)
    if need > max_attn_bytes:
        exclude.append("*attn_probs")
        omitted["attn_probs"] = (f"size cap: the selected attention probabilities would take {need} bytes > "
                                 f"max_attn_bytes {max_attn_bytes}")
    return prompts, n_gen, exclude, omitted


def run_prompts(model, prompts, positions, taps, exclude, n_gen, top_k) -> tuple[list, list, list]:
    """(inputs, taps, outputs) of each prompt, one after another (``make_bundle``'s loop; a job's chunk)."""
    inputs, taps_out, outputs = [], [], []
    for p, ids in enumerate(prompts):
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.arange(len(ids), dtype=np.int64) if positions is None else np.asarray(positions[p], np.int64)
        collector = TapCollector(taps, exclude)
        outputs.append(run_prompt(model, ids, pos, collector, n_gen[p], top_k))
        taps_out.append(collector.taps)
        inputs.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": pos})
    return inputs, taps_out, outputs


def make_bundle(model, prompts, *, texts=None, taps=("*",), generate: int = 0, top_k: int = DEFAULT_TOP_K,
                max_attn_bytes: int = DEFAULT_MAX_ATTN_BYTES, model_dir: Path | None = None,
                position_ids=None, timestamp: bool = False) -> Bundle:
    """Run ``model`` on each prompt (a list of token-id lists) and build a Bundle in memory.

    taps: fnmatch patterns of the tap names to keep; attention probabilities are dropped (and the
    manifest says so) when the selected ones would take more than ``max_attn_bytes``. ``generate``
    may be an int or one int per prompt; ``position_ids``: one array per prompt (default 0..T-1).
    """
    prompts, n_gen, exclude, omitted = plan_bundle(model.config, prompts, taps, generate, top_k, max_attn_bytes)
    inputs, taps_out, outputs = run_prompts(model, prompts, position_ids, taps, exclude, n_gen, top_k)
    return assemble_bundle(model_info(model, model_dir), prompts, texts, taps, n_gen, top_k, max_attn_bytes,
                           omitted, exclude, inputs, taps_out, outputs, timestamp)


def assemble_bundle(info: dict, prompts, texts, taps, n_gen, top_k, max_attn_bytes, omitted, exclude,
                    inputs, taps_out, outputs, timestamp: bool = False) -> Bundle:
    """The Bundle of every prompt's results and its manifest (``info``: ``model_info`` of the model)."""
    _check_patterns(taps, taps_out, exclude)
    manifest = build_manifest(info, prompts, texts, taps, n_gen, top_k, max_attn_bytes, omitted,
                              taps_out, outputs, timestamp)
    return Bundle(manifest, inputs, taps_out, outputs, None, {"F64"})


def _check_patterns(patterns, taps_out, exclude) -> None:
    seen = set().union(*(t.keys() for t in taps_out))
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in seen) and not any(fnmatchcase(pat, e) for e in exclude):
            example = ", ".join(sorted(seen, key=tap_order_key)[:6]) or "embed_tokens, layers.0.q, logits"
            raise InputError(f"--taps pattern {pat!r} matches no tap of this model; tap names look like "
                             f"{example} (fnmatch patterns, comma-separated, e.g. 'layers.0.*,logits')")


def model_info(model, model_dir: Path | None) -> dict:
    """What the manifest says about the model (plain data: a job computes it where the checkpoint is)."""
    config = model.config
    return {"backend": getattr(model, "backend", "numpy"), "dtype": str(np.dtype(model.dtype)),
            "model": _model_section(config, model_dir), "config": _config_dict(config, model_dir),
            "layers": [{"index": i, "attention": "full" if w is None else "sliding", "window": w,
                        "rope": bool(model.model.layer_uses_rope(i))} for i, w in enumerate(layer_windows(config))],
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads}


def build_manifest(info, prompts, texts, patterns, n_gen, k, max_attn_bytes, omitted, taps_out, outputs,
                   timestamp) -> dict:
    names = sorted(set().union(*(t.keys() for t in taps_out)), key=tap_order_key)
    what = {**GLOBAL_BEFORE, **LAYER_OPS, **GLOBAL_AFTER}
    tap_list = [{"name": n, "layer": parse_tap(n)[0], "op": parse_tap(n)[1], "description": what.get(parse_tap(n)[1]),
                 "dtype": "F64", "shapes": [list(t[n].shape) if n in t else None for t in taps_out]}
                for n in names]
    out_list = [{"name": n, "description": OUTPUT_NAMES[n], "dtype": "I64" if n.endswith("ids") else "F64",
                 "shapes": [list(o[n].shape) for o in outputs]} for n in OUTPUT_NAMES]
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "producer": {"name": "pycohere", "version": __version__, "numpy": np.__version__,
                     "backend": info["backend"]},
        "precision": "float64" if info["dtype"] == "float64" else "float32",
        "dtype": "F64",
        "made_with": {"command": "pycohere golden make", "taps": list(patterns), "generate": n_gen,
                      "top_k": k, "max_attn_bytes": max_attn_bytes, "compute_dtype": info["dtype"]},
        "model": info["model"],
        "config": info["config"],
        "layers": info["layers"],
        "prompts": [{"index": p, "num_tokens": int(len(ids)), "generated": n_gen[p],
                     "text": texts[p] if texts else None} for p, ids in enumerate(prompts)],
        "inputs": [{"name": n, "dtype": "I64", "shape": "(T,)"} for n in INPUT_NAMES],
        "taps": tap_list,
        "outputs": out_list,
        "omitted_taps": omitted,
        "tolerances": tolerance_manifest(),
    }
    if timestamp:
        manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return manifest


def _model_section(config, model_dir: Path | None) -> dict:
    section = {"model_type": config.model_type, "num_hidden_layers": config.num_hidden_layers}
    if model_dir is not None:
        section["name"] = Path(model_dir).resolve().name
        section["files"] = model_files(Path(model_dir))
    return section


def _config_dict(config, model_dir: Path | None) -> dict:
    """config.json as written in the checkpoint (what other implementations read)."""
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def rerun(bundle: Bundle, model) -> Bundle:
    """The bundle's inputs through ``model``, keeping the taps and outputs the bundle has."""
    names = bundle.tap_names()
    prompts = [d["input_ids"] for d in bundle.inputs]
    positions = [d.get("position_ids", np.arange(len(d["input_ids"]))) for d in bundle.inputs]
    for p, d in enumerate(bundle.inputs):
        if "attention_mask" in d and not (d["attention_mask"] == 1).all():
            raise UnsupportedFormatError(f"prompt {p} of {bundle.path} has padding in its attention_mask; golden "
                                         "bundle schema 1 holds unpadded prompts only (one entry per prompt)")
    n_gen = [len(o.get("generated_ids", ())) for o in bundle.outputs]
    k = max([o["topk_ids"].shape[-1] for o in bundle.outputs if "topk_ids" in o] or [DEFAULT_TOP_K])
    inputs, taps, outputs = [], [], []
    for p, ids in enumerate(prompts):
        collector = _ExactCollector(names)
        outputs.append(run_prompt(model, ids, positions[p], collector, n_gen[p], k))
        taps.append(collector.taps)
        inputs.append(bundle.inputs[p])
    precision = "float64" if np.dtype(model.dtype) == np.float64 else "float32"
    manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "precision": precision,
                "producer": {"name": "pycohere", "version": __version__, "backend": model.backend}}
    return Bundle(manifest, inputs, taps, outputs, None, {"F64" if precision == "float64" else "F32"})


class _ExactCollector(TapCollector):
    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def wants(self, name: str) -> bool:
        return name in self.names
