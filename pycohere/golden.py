"""Golden bundles: fixtures of every intermediate of a forward pass, and the tools that compare them.

A bundle is a folder any implementation (C++, Rust, JAX, ...) can write and read without pycohere;
the format is specified in ``docs/golden-format.md``. In short:

    inputs.safetensors   prompts.{p}.input_ids / attention_mask / position_ids       (T,) int64
    taps.safetensors     prompts.{p}.{tap}      every recorded intermediate, batch axis dropped
    outputs.safetensors  prompts.{p}.step_logits (N+1, V), generated_ids (N,),
                         topk_ids / topk_logprobs (N+1, K)
    manifest.json        schema, model hashes, versions, tap list in forward order, tolerances

``pycohere golden make`` writes one from the float64 NumPy spec; ``golden check`` re-runs pycohere on
a bundle's inputs and compares; ``golden diff A B`` compares two bundles from any producers. Both
print a per-tap table and name the first diverging layer and operation.

Comparison rule (per tap and prompt, normwise so near-zero entries do not blow up a relative error):
``max|B - A| <= atol + rtol * max|A|`` with (atol, rtol) for the tap's operation from the reference
bundle's manifest, in the tolerance profile of the less precise of the two producers.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from .cache import layer_windows
from .errors import (CheckpointNotFoundError, CorruptCheckpointError, InputError,
                     TokenizerError, UnsupportedFormatError, WeightMismatchError)

SCHEMA = "pycohere-golden"
SCHEMA_VERSION = 1
INPUTS, TAPS, OUTPUTS, MANIFEST = "inputs.safetensors", "taps.safetensors", "outputs.safetensors", "manifest.json"
BUNDLE_FILES = (INPUTS, TAPS, OUTPUTS, MANIFEST)
PREFIX = "prompts."
DEFAULT_TOP_K = 5
DEFAULT_MAX_ATTN_BYTES = 32 * 2**20

# --- tap names, forward order, descriptions ------------------------------------------------------
# Names are pycohere.trace's; the order is the order of the computation (attention before MLP inside a
# layer, although the two branches are parallel), which is what "first divergence" walks.
GLOBAL_BEFORE = {
    "embed_tokens": "embedding lookup E[ids]",
    "rope_cos": "RoPE cos table",
    "rope_sin": "RoPE sin table",
}
LAYER_OPS = {
    "input_layernorm": "LayerNorm, mean-centred, no bias",
    "q": "q projection",
    "k": "k projection",
    "v": "v projection",
    "q_normed": "per-head q LayerNorm (qk-norm)",
    "k_normed": "per-head k LayerNorm (qk-norm)",
    "q_rope": "RoPE, interleaved pairs",
    "k_rope": "RoPE, interleaved pairs",
    "attn_probs": "softmax(q.k / sqrt(Dh) + mask)",
    "attn_context": "attention-weighted sum of v",
    "attn_out": "o_proj",
    "mlp_gate": "gate_proj",
    "mlp_up": "up_proj",
    "mlp_act": "act(gate) * up",
    "mlp_out": "down_proj",
    "output": "parallel residual x + attn + mlp",
}
GLOBAL_AFTER = {
    "norm": "final LayerNorm",
    "logits": "lm_head x logit_scale",
}
OUTPUT_NAMES = {
    "step_logits": "logits of the next token after the prompt + j generated tokens",
    "generated_ids": "greedy continuation",
    "topk_logprobs": "top-k log-probabilities of each step",
    "topk_ids": "token ids of the top-k log-probabilities",
}
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids")


def parse_tap(name: str) -> tuple[int | None, str]:
    """'layers.3.q_rope' -> (3, 'q_rope'); 'logits' -> (None, 'logits')."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None, name


def tap_order_key(name: str) -> tuple:
    """Sort key giving forward order; unknown names (other producers' extras) sort after the known
    ones of their layer, or after everything, by name."""
    layer, op = parse_tap(name)
    if layer is not None:
        ops = list(LAYER_OPS)
        return (1, layer, ops.index(op) if op in ops else len(ops), op)
    if op in GLOBAL_BEFORE:
        return (0, list(GLOBAL_BEFORE).index(op), 0, "")
    if op in GLOBAL_AFTER:
        return (2, list(GLOBAL_AFTER).index(op), 0, "")
    return (3, 0, 0, op)


def describe(name: str) -> str:
    """Human name of a tap: 'layer 1, q_rope (RoPE, interleaved pairs)'."""
    layer, op = parse_tap(name)
    what = {**GLOBAL_BEFORE, **LAYER_OPS, **GLOBAL_AFTER, **OUTPUT_NAMES}.get(op)
    text = f"{op} ({what})" if what else op
    return text if layer is None else f"layer {layer}, {text}"


# --- tolerances -----------------------------------------------------------------------------------
# (atol, rtol) per operation for the rule max|B - A| <= atol + rtol * max|A|.
# float64: two float64 implementations differ only by summation order (~1e-15 relative); 1e-10 leaves
# room for long-context RoPE angles (pos * inv_freq ~ 1e5 rad carries ~1e-11 absolute error).
# float32: measured max|f32 - f64| / max|f64| <= 5e-6 on the 2-4 layer test models (rope tables,
# q_rope/k_rope worst, since a float32 angle pos * inv_freq loses ~pos * 6e-8 rad); 1e-4 leaves a
# 20x margin for deeper models, 1e-3 for the rotary tables and rotated q/k at longer positions.
_F64 = (1e-12, 1e-10)
_F32 = (1e-6, 1e-4)
_F32_ROPE = (1e-6, 1e-3)
ALL_OPS = [*GLOBAL_BEFORE, *LAYER_OPS, *GLOBAL_AFTER, "step_logits", "topk_logprobs"]
TOLERANCES = {
    "float64": {op: _F64 for op in ALL_OPS},
    "float32": {op: (_F32_ROPE if op in ("rope_cos", "rope_sin", "q_rope", "k_rope") else _F32) for op in ALL_OPS},
}
PROFILES = tuple(TOLERANCES)
TOLERANCE_RULE = "max|B - A| <= atol + rtol * max|A|, per tap and prompt (A = reference)"


def tolerance_manifest() -> dict:
    return {"rule": TOLERANCE_RULE,
            **{p: {op: {"atol": a, "rtol": r} for op, (a, r) in t.items()} for p, t in TOLERANCES.items()}}


# --- safetensors I/O ------------------------------------------------------------------------------
_ST_DTYPES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16",
              np.dtype("<i8"): "I64", np.dtype("<i4"): "I32"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file byte-for-byte deterministically: tensors and header keys sorted by name,
    compact JSON, header padded with spaces to a multiple of 8 (the format's rule). Written here rather
    than with ``safetensors.numpy.save_file`` because that library serialises ``__metadata__`` from a
    hash map whose order is not guaranteed."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in _ST_DTYPES:
            raise InputError(f"cannot store tensor {name!r} of dtype {a.dtype} in a golden bundle")
        raw = a.tobytes()
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file of any producer: float tensors (F64/F32/F16/BF16) come back as float64,
    integers as int64; returns ({name: array}, {name: stored dtype name})."""
    from .tensors import widen
    from .weights import open_safetensors

    refs, _ = open_safetensors(path)
    arrays, dtypes = {}, {}
    for name, ref in refs.items():
        if ref.dtype in ("F64", "F32", "F16", "BF16"):
            arrays[name] = np.array(widen(ref.array, ref.dtype, np.float64), dtype=np.float64)
        elif ref.dtype.startswith(("I", "U")) or ref.dtype == "BOOL":
            arrays[name] = np.array(ref.array, dtype=np.int64)
        else:  # pragma: no cover - open_safetensors already rejects unknown dtypes
            raise UnsupportedFormatError(f"{path}: tensor {name!r} has dtype {ref.dtype}")
        dtypes[name] = ref.dtype
    return arrays, dtypes


def prompt_key(p: int, name: str) -> str:
    return f"{PREFIX}{p}.{name}"


def split_key(key: str, where: str) -> tuple[int, str]:
    """'prompts.3.layers.0.q' -> (3, 'layers.0.q')."""
    parts = key.split(".", 2)
    if len(parts) != 3 or parts[0] + "." != PREFIX or not parts[1].isdigit():
        raise CorruptCheckpointError(f"{where}: tensor name {key!r} is not 'prompts.<index>.<name>' as the "
                                     "golden bundle format requires (docs/golden-format.md)")
    return int(parts[1]), parts[2]


# --- the bundle in memory -------------------------------------------------------------------------
@dataclass
class Bundle:
    """A golden bundle: per prompt, dicts of named arrays, plus the manifest.

    ``inputs[p]``, ``taps[p]`` and ``outputs[p]`` map names (without the ``prompts.{p}.`` prefix) to
    arrays; taps and float outputs are float64 in memory whatever their stored dtype.
    """

    manifest: dict
    inputs: list[dict[str, np.ndarray]]
    taps: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    path: Path | None = None
    stored_dtypes: set = field(default_factory=set)

    @property
    def num_prompts(self) -> int:
        return len(self.inputs)

    @property
    def precision(self) -> str:
        """'float64' or 'float32': the arithmetic precision the producer declares (or, when its manifest
        does not say, the lowest precision of its stored floats)."""
        declared = self.manifest.get("precision")
        if declared in PROFILES:
            return declared
        return "float32" if self.stored_dtypes & {"F32", "F16", "BF16"} else "float64"

    def tap_names(self) -> list[str]:
        names = set().union(*(t.keys() for t in self.taps)) if self.taps else set()
        return sorted(names, key=tap_order_key)

    def producer(self) -> str:
        p = self.manifest.get("producer") or {}
        return f"{p.get('name', 'unknown producer')} {p.get('version', '')}".strip()

    # -- files ------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        _prepare_output_folder(folder)
        for fname, part in ((INPUTS, self.inputs), (TAPS, self.taps), (OUTPUTS, self.outputs)):
            flat = {prompt_key(p, n): a for p, d in enumerate(part) for n, a in d.items()}
            write_safetensors(folder / fname, flat, {"format": SCHEMA, "schema_version": str(SCHEMA_VERSION)})
        text = json.dumps(self.manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        (folder / MANIFEST).write_text(text, encoding="utf-8")
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Bundle":
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointNotFoundError(f"golden bundle {folder} does not exist or is not a folder; "
                                          "make one with 'pycohere golden make'")
        manifest = _read_manifest(folder)
        missing = [f for f in (INPUTS, TAPS, OUTPUTS) if not (folder / f).is_file()]
        if missing:
            raise CheckpointNotFoundError(f"golden bundle {folder} lacks {', '.join(missing)}; a bundle holds "
                                          f"{', '.join(BUNDLE_FILES)} (docs/golden-format.md)")
        parts, dtypes = [], set()
        for fname in (INPUTS, TAPS, OUTPUTS):
            arrays, stored = read_safetensors(folder / fname)
            per: dict[int, dict[str, np.ndarray]] = {}
            for key, a in arrays.items():
                p, name = split_key(key, str(folder / fname))
                per.setdefault(p, {})[name] = a
            parts.append(per)
            if fname != INPUTS:
                dtypes |= set(stored.values())
        n = _check_prompt_indices(folder, parts[0], manifest)
        inputs, taps, outputs = ([part.get(p, {}) for p in range(n)] for part in parts)
        return cls(manifest, inputs, taps, outputs, folder, dtypes)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointNotFoundError(f"{folder} is not a golden bundle: it has no {MANIFEST} "
                                      "(make one with 'pycohere golden make')")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({e}); re-make the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise UnsupportedFormatError(f"{path}: 'schema' is {found!r}, expected {SCHEMA!r}; this is not a "
                                     "golden bundle manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise UnsupportedFormatError(f"{path}: schema_version {version!r} is not supported by this pycohere "
                                     f"(reads 1..{SCHEMA_VERSION}); upgrade pycohere or re-make the bundle")
    return manifest


def _check_prompt_indices(folder: Path, inputs: dict[int, dict], manifest: dict) -> int:
    n = len(inputs)
    if n == 0:
        raise CorruptCheckpointError(f"{folder / INPUTS} holds no prompts (expected prompts.0.input_ids ...)")
    if sorted(inputs) != list(range(n)):
        raise CorruptCheckpointError(f"{folder / INPUTS}: prompt indices {sorted(inputs)} are not 0..{n - 1}")
    for p, d in inputs.items():
        if "input_ids" not in d or d["input_ids"].ndim != 1 or d["input_ids"].size == 0:
            raise CorruptCheckpointError(f"{folder / INPUTS}: prompt {p} needs a non-empty 1-D input_ids tensor")
    declared = manifest.get("prompts")
    if isinstance(declared, list) and len(declared) != n:
        raise CorruptCheckpointError(f"{folder / MANIFEST} lists {len(declared)} prompts but {INPUTS} holds {n}")
    return n


def _prepare_output_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"-o {folder} exists and is not a folder; choose a new folder name")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in BUNDLE_FILES)
        if foreign:
            raise InputError(f"refusing to write a bundle into {folder}: it holds other files "
                             f"({', '.join(foreign[:5])}); choose an empty or new folder")
    folder.mkdir(parents=True, exist_ok=True)


# --- making a bundle --------------------------------------------------------------------------------
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
    from .weights import find_weight_files

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


def make_bundle(model, prompts, *, texts=None, taps=("*",), generate: int = 0, top_k: int = DEFAULT_TOP_K,
                max_attn_bytes: int = DEFAULT_MAX_ATTN_BYTES, model_dir: Path | None = None,
                position_ids=None, timestamp: bool = False) -> Bundle:
    """Run ``model`` on each prompt (a list of token-id lists) and build a Bundle in memory.

    taps: fnmatch patterns of the tap names to keep; attention probabilities are dropped (and the
    manifest says so) when the selected ones would take more than ``max_attn_bytes``. ``generate``
    may be an int or one int per prompt; ``position_ids``: one array per prompt (default 0..T-1).
    """
    prompts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    if not prompts or any(p.size == 0 for p in prompts):
        raise InputError("a golden bundle needs at least one prompt and every prompt at least one token")
    n_gen = list(generate) if isinstance(generate, (list, tuple)) else [int(generate)] * len(prompts)
    if any(g < 0 for g in n_gen) or top_k < 1:
        raise InputError(f"--generate must be >= 0 and --top-k >= 1 (got {generate}, {top_k})")
    exclude, omitted = [], {}
    need = attn_probs_bytes(model.config, [len(p) for p in prompts], taps)
    if need > max_attn_bytes:
        exclude.append("*attn_probs")
        omitted["attn_probs"] = (f"size cap: the selected attention probabilities would take {need} bytes > "
                                 f"max_attn_bytes {max_attn_bytes}")
    inputs, taps_out, outputs = [], [], []
    for p, ids in enumerate(prompts):
        pos = np.arange(len(ids), dtype=np.int64) if position_ids is None else np.asarray(position_ids[p], np.int64)
        collector = TapCollector(taps, exclude)
        outputs.append(run_prompt(model, ids, pos, collector, n_gen[p], top_k))
        taps_out.append(collector.taps)
        inputs.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": pos})
    _check_patterns(taps, taps_out, exclude)
    manifest = build_manifest(model, prompts, texts, taps, n_gen, top_k, max_attn_bytes, omitted,
                              taps_out, outputs, model_dir, timestamp)
    return Bundle(manifest, inputs, taps_out, outputs, None, {"F64"})


def _check_patterns(patterns, taps_out, exclude) -> None:
    seen = set().union(*(t.keys() for t in taps_out))
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in seen) and not any(fnmatchcase(pat, e) for e in exclude):
            example = ", ".join(sorted(seen, key=tap_order_key)[:6]) or "embed_tokens, layers.0.q, logits"
            raise InputError(f"--taps pattern {pat!r} matches no tap of this model; tap names look like "
                             f"{example} (fnmatch patterns, comma-separated, e.g. 'layers.0.*,logits')")


def build_manifest(model, prompts, texts, patterns, n_gen, k, max_attn_bytes, omitted, taps_out, outputs,
                   model_dir, timestamp) -> dict:
    from . import __version__

    config = model.config
    names = sorted(set().union(*(t.keys() for t in taps_out)), key=tap_order_key)
    what = {**GLOBAL_BEFORE, **LAYER_OPS, **GLOBAL_AFTER}
    tap_list = [{"name": n, "layer": parse_tap(n)[0], "op": parse_tap(n)[1], "description": what.get(parse_tap(n)[1]),
                 "dtype": "F64", "shapes": [list(t[n].shape) if n in t else None for t in taps_out]}
                for n in names]
    out_list = [{"name": n, "description": OUTPUT_NAMES[n], "dtype": "I64" if n.endswith("ids") else "F64",
                 "shapes": [list(o[n].shape) for o in outputs]} for n in OUTPUT_NAMES]
    windows = layer_windows(config)
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "producer": {"name": "pycohere", "version": __version__, "numpy": np.__version__,
                     "backend": getattr(model, "backend", "numpy")},
        "precision": "float64" if np.dtype(model.dtype) == np.float64 else "float32",
        "dtype": "F64",
        "made_with": {"command": "pycohere golden make", "taps": list(patterns), "generate": n_gen,
                      "top_k": k, "max_attn_bytes": max_attn_bytes, "compute_dtype": str(np.dtype(model.dtype))},
        "model": _model_section(config, model_dir),
        "config": _config_dict(config, model_dir),
        "layers": [{"index": i, "attention": "full" if w is None else "sliding", "window": w,
                    "rope": bool(model.model.layer_uses_rope(i))} for i, w in enumerate(windows)],
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


# --- comparing bundles ------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the comparison table."""

    name: str
    status: str                 # "ok", "FAIL", "missing" (not in B), "empty"
    shape: tuple | None = None
    max_abs: float | None = None
    rel: float | None = None    # max_abs / max|A| of the worst prompt
    worst: str = ""             # "p{prompt} [i, j, ...]"
    ratio: float | None = None  # max_abs / (atol + rtol * max|A|); > 1 fails
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


@dataclass
class Report:
    rows: list[Row]
    profile: str
    scale: float
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if r.failed), None)

    @property
    def compared(self) -> int:
        return sum(r.status in ("ok", "FAIL") for r in self.rows)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None and self.compared > 0

    def summary(self) -> str:
        first = self.first_divergence
        if first is not None:
            where = f": max abs {first.max_abs:.3e} at {first.worst}" if first.max_abs is not None else ""
            return f"first divergence: {describe(first.name)}{where}{' (' + first.note + ')' if first.note else ''}"
        if self.compared == 0:
            return "nothing compared: the two bundles have no tap or output in common"
        return f"PASS: all {self.compared} compared taps and outputs agree within tolerance"

    def format(self, failures_only: bool = False) -> str:
        lines = [self.title] if self.title else []
        lines.append(f"tolerance profile {self.profile}" + (f" x{self.scale:g}" if self.scale != 1 else "")
                     + f": pass iff {TOLERANCE_RULE}")
        w = max([len(r.name) for r in self.rows] + [4])
        lines.append(f"{'tap':<{w}}  {'shape':<16} {'max abs':>10} {'rel':>9}  {'worst index':<22} status")
        for r in self.rows:
            if failures_only and not r.failed:
                continue
            shape = str(tuple(r.shape)) if r.shape is not None else "-"
            mabs = f"{r.max_abs:.3e}" if r.max_abs is not None else "-"
            rel = f"{r.rel:.2e}" if r.rel is not None else "-"
            note = f"  {r.note}" if r.note else ""
            lines.append(f"{r.name:<{w}}  {shape:<16} {mabs:>10} {rel:>9}  {r.worst or '-':<22} {r.status}{note}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.summary())
        return "\n".join(lines)


def tolerance_for(ref: Bundle, op: str, profile: str, scale: float) -> tuple[float, float]:
    """(atol, rtol) of an operation: the reference manifest's, else pycohere's defaults."""
    table = (ref.manifest.get("tolerances") or {}).get(profile) or {}
    entry = table.get(op)
    if isinstance(entry, dict) and "atol" in entry and "rtol" in entry:
        atol, rtol = float(entry["atol"]), float(entry["rtol"])
    else:
        atol, rtol = TOLERANCES[profile].get(op, TOLERANCES[profile]["output"])
    return atol * scale, rtol * scale


def compare_arrays(name: str, refs: list, cands: list, atol: float, rtol: float) -> Row:
    """Float comparison of one tap over prompts (``None`` entries are skipped)."""
    worst = Row(name, "ok", max_abs=0.0, rel=0.0, ratio=-1.0)
    for p, (a, b) in enumerate(zip(refs, cands)):
        if a is None or b is None:
            continue
        if worst.shape is None:
            worst.shape = a.shape
        if a.shape != b.shape:
            return Row(name, "FAIL", a.shape, worst=f"p{p}", note=f"shape {tuple(b.shape)} in B, {tuple(a.shape)} in A")
        if a.size == 0:
            continue
        finite_a, finite_b = np.isfinite(a), np.isfinite(b)
        if not np.array_equal(finite_a, finite_b) or not np.array_equal(a[~finite_a], b[~finite_b], equal_nan=True):
            idx = np.unravel_index(np.argmax(finite_a != finite_b), a.shape) if (finite_a != finite_b).any() else ()
            return Row(name, "FAIL", a.shape, worst=f"p{p} {list(map(int, idx))}", note="non-finite values differ")
        err = np.where(finite_a, np.abs(np.where(finite_a, b, 0) - np.where(finite_a, a, 0)), 0.0)
        scale = float(np.abs(a[finite_a]).max()) if finite_a.any() else 0.0
        max_abs = float(err.max())
        ratio = max_abs / (atol + rtol * scale)
        worst.max_abs = max(worst.max_abs, max_abs)
        worst.rel = max(worst.rel, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))
        if ratio > worst.ratio:
            worst.ratio = ratio
            worst.worst = f"p{p} {list(map(int, np.unravel_index(np.argmax(err), a.shape)))}" if max_abs else ""
    if worst.shape is None:
        worst.status = "empty"
    elif worst.ratio > 1:
        worst.status = "FAIL"
    return worst


def compare_bundles(ref: Bundle, cand: Bundle, profile: str | None = None, scale: float = 1.0,
                    title: str = "") -> Report:
    """Compare ``cand`` (B) against ``ref`` (A): taps in forward order, then the outputs."""
    _check_same_inputs(ref, cand)
    profile = profile or ("float32" if "float32" in (ref.precision, cand.precision) else "float64")
    if profile not in PROFILES:
        raise InputError(f"unknown tolerance profile {profile!r}; use one of {', '.join(PROFILES)}")
    if not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"--tolerance-scale must be a positive number, got {scale}")
    report = Report([], profile, scale, title)
    cand_names = set(cand.tap_names())
    for name in ref.tap_names():
        refs = [t.get(name) for t in ref.taps]
        if name not in cand_names:
            report.rows.append(Row(name, "missing", _first_shape(refs), note="not in B"))
            continue
        atol, rtol = tolerance_for(ref, parse_tap(name)[1], profile, scale)
        report.rows.append(compare_arrays(name, refs, [t.get(name) for t in cand.taps], atol, rtol))
    extra = sorted(cand_names - set(ref.tap_names()), key=tap_order_key)
    if extra:
        report.notes.append(f"{len(extra)} tap(s) only in B, not compared: {', '.join(extra[:8])}"
                            + (" ..." if len(extra) > 8 else ""))
    for name, omitted in (ref.manifest.get("omitted_taps") or {}).items():
        report.notes.append(f"A omits {name}: {omitted}")
    report.rows += compare_outputs(ref, cand, profile, scale)
    return report


def _first_shape(arrays):
    return next((a.shape for a in arrays if a is not None), None)


def _check_same_inputs(ref: Bundle, cand: Bundle) -> None:
    if ref.num_prompts != cand.num_prompts:
        raise InputError(f"the bundles hold different numbers of prompts ({ref.num_prompts} in A, "
                         f"{cand.num_prompts} in B); compare bundles made from the same inputs")
    for p, (a, b) in enumerate(zip(ref.inputs, cand.inputs)):
        for name in INPUT_NAMES:
            if name in a and name in b and not np.array_equal(a[name], b[name]):
                raise InputError(f"prompt {p}: {name} differs between the bundles (A {a[name][:8].tolist()}..., "
                                 f"B {b[name][:8].tolist()}...); compare bundles made from the same inputs")


def compare_outputs(ref: Bundle, cand: Bundle, profile: str, scale: float) -> list[Row]:
    """Greedy continuation, then the logits/top-k rows computed from an identical prefix."""
    if not any("generated_ids" in o for o in ref.outputs) and not any("step_logits" in o for o in ref.outputs):
        return []
    lp_tol = tolerance_for(ref, "topk_logprobs", profile, scale)
    gen_row, keep = _compare_generated(ref, cand, lp_tol)
    rows = [] if gen_row is None else [gen_row]
    for name in ("step_logits", "topk_logprobs"):
        refs = [o.get(name) for o in ref.outputs]
        if all(a is None for a in refs):
            continue
        cands = [o.get(name) for o in cand.outputs]
        if all(b is None for b in cands):
            rows.append(Row(name, "missing", _first_shape(refs), note="not in B"))
            continue
        refs, cands = _trim_rows(refs, cands, keep)
        rows.append(compare_arrays(name, refs, cands, *tolerance_for(ref, name, profile, scale)))
    rows += [r for r in [_compare_topk_ids(ref, cand, keep, lp_tol)] if r is not None]
    order = list(OUTPUT_NAMES)
    return sorted(rows, key=lambda r: order.index(r.name))


def _row_tol(lp_row: np.ndarray, tol) -> float:
    atol, rtol = tol
    return atol + rtol * float(np.abs(lp_row).max())


def _compare_generated(ref: Bundle, cand: Bundle, lp_tol) -> tuple[Row | None, list[int]]:
    """Compare greedy ids step by step. A step whose reference top-2 log-probs are within twice the
    tolerance is a near tie: either token is right, and later steps are not compared. Returns the row
    and, per prompt, how many leading step rows saw identical prefixes (for the logits rows)."""
    keep, row = [], Row("generated_ids", "ok")
    for p, (a, b) in enumerate(zip(ref.outputs, cand.outputs)):
        ga, gb = a.get("generated_ids"), b.get("generated_ids")
        if ga is None or gb is None:
            keep.append(1)
            if ga is not None and len(ga):
                row.status, row.note = "missing", "not in B"
            continue
        row.shape = row.shape or ga.shape
        n = min(len(ga), len(gb))
        lp = a.get("topk_logprobs")
        stop = n
        for j in range(n):
            if ga[j] == gb[j]:
                continue
            stop = j
            has_gap = lp is not None and lp.ndim == 2 and lp.shape[1] > 1 and j < len(lp)
            gap = float(lp[j, 0] - lp[j, 1]) if has_gap else math.inf
            if not has_gap or gap > 2 * _row_tol(lp[j], lp_tol):
                row.status, row.worst = "FAIL", f"p{p} [{j}]"
                row.note = f"step {j}: A chose {int(ga[j])}, B chose {int(gb[j])} (A's top-2 gap {gap:.2e})"
            elif row.status == "ok":
                row.note = f"p{p} step {j}: near tie in A (top-2 gap {gap:.2e}); later steps not compared"
            break
        if len(ga) != len(gb) and row.status == "ok" and not row.note:
            row.note = f"p{p}: A generated {len(ga)} tokens, B {len(gb)}; compared the first {n}"
        keep.append(stop + 1)
        if row.failed:
            break
    if row.shape is None and row.status == "ok":
        return None, keep
    return row, keep


def _trim_rows(refs, cands, keep):
    out_a, out_b = [], []
    for a, b, k in zip(refs, cands, keep + [1] * (len(refs) - len(keep))):
        if a is None or b is None:
            out_a.append(None), out_b.append(None)
            continue
        k = min(k, len(a), len(b))
        out_a.append(a[:k, :b.shape[1]] if a.ndim == 2 else a[:k])
        out_b.append(b[:k, :a.shape[1]] if b.ndim == 2 else b[:k])
    return out_a, out_b


def _compare_topk_ids(ref: Bundle, cand: Bundle, keep, lp_tol) -> Row | None:
    """Top-k ids must agree where A's log-probs are not near-tied with a neighbour (ties may reorder)."""
    row = Row("topk_ids", "ok")
    for p, (a, b) in enumerate(zip(ref.outputs, cand.outputs)):
        ia, ib, lp = a.get("topk_ids"), b.get("topk_ids"), a.get("topk_logprobs")
        if ia is None:
            continue
        if ib is None:
            return Row("topk_ids", "missing", ia.shape, note="not in B")
        row.shape = row.shape or ia.shape
        rows = min(keep[p] if p < len(keep) else 1, len(ia), len(ib), len(lp) if lp is not None else len(ia))
        k = min(ia.shape[1], ib.shape[1])
        for j in range(rows):
            tol = 2 * _row_tol(lp[j], lp_tol) if lp is not None else 0.0
            for c in range(k):
                if ia[j, c] == ib[j, c]:
                    continue
                # rank c is decided when its log-prob is clear of both neighbours; the last stored rank
                # never is (the unstored next entry may tie with it)
                left = lp is None or c == 0 or lp[j, c - 1] - lp[j, c] > tol
                right = lp is None or (c + 1 < lp.shape[1] and lp[j, c] - lp[j, c + 1] > tol)
                if left and right:
                    row.status, row.worst = "FAIL", f"p{p} [{j}, {c}]"
                    row.note = f"rank {c} of step {j}: A {int(ia[j, c])}, B {int(ib[j, c])}"
                    return row
    return row if row.shape is not None else None


# --- check: re-run pycohere on a bundle -------------------------------------------------------------
def verify_model(bundle: Bundle, model_dir: Path) -> None:
    """Raise WeightMismatchError when the checkpoint's config/weight hashes differ from the manifest's."""
    recorded = (bundle.manifest.get("model") or {}).get("files") or {}
    if not recorded:
        return
    actual = model_files(model_dir)
    problems = []
    for name, info in sorted(recorded.items()):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja",
                                                    "generation_config.json"):
            continue  # the forward pass does not read them
        if name not in actual:
            problems.append(f"{name} is missing")
        elif actual[name]["sha256"] != info.get("sha256"):
            problems.append(f"{name} sha256 {actual[name]['sha256'][:12]}... != bundle's {str(info.get('sha256'))[:12]}...")
    if problems:
        made_from = (bundle.manifest.get("model") or {}).get("name", "?")
        raise WeightMismatchError(f"{model_dir} is not the checkpoint this bundle was made from ({made_from}): "
                                  + "; ".join(problems) + ". Pass that checkpoint, or --allow-model-mismatch "
                                  "to compare anyway (e.g. a re-saved or converted copy).")


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
    from . import __version__
    manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "precision": precision,
                "producer": {"name": "pycohere", "version": __version__, "backend": model.backend}}
    return Bundle(manifest, inputs, taps, outputs, None, {"F64" if precision == "float64" else "F32"})


class _ExactCollector(TapCollector):
    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def wants(self, name: str) -> bool:
        return name in self.names


# --- command line -------------------------------------------------------------------------------------
def read_ids_file(path: str | Path) -> list[list[int]]:
    """One prompt a line, space-separated token ids; blank lines and lines starting with '#' skipped."""
    text = _read_text(path, "--ids")
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            prompts.append([int(t) for t in line.replace(",", " ").split()])
        except ValueError:
            bad = next(t for t in line.replace(",", " ").split() if not t.lstrip("-").isdigit())
            raise InputError(f"{path} line {n}: {bad!r} is not an integer token id; --ids files hold one "
                             "prompt a line as space-separated token ids") from None
    if not prompts:
        raise InputError(f"{path} holds no prompt; write one prompt a line as space-separated token ids")
    return prompts


def read_prompts_file(path: str | Path) -> list[str]:
    """One text prompt a line (blank lines skipped); '\\n' inside a line stands for a newline."""
    lines = [line.replace("\\n", "\n") for line in _read_text(path, "--prompts").splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path} holds no prompt; write one text prompt a line")
    return lines


def _read_text(path, flag) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{flag} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"{flag} file {path} is not UTF-8 text") from None


def tokenize_prompts(model_dir: Path, texts: list[str]) -> list[list[int]]:
    if not (Path(model_dir) / "tokenizer.json").is_file():
        raise TokenizerError(f"{model_dir} has no tokenizer.json, so --prompts cannot be tokenized; pass token "
                             "ids instead with --ids FILE (one prompt a line, space-separated ids)")
    from .tokenizer import CohereTokenizer
    tok = CohereTokenizer.from_pretrained(model_dir)
    return [list(tok.encode(t)) for t in texts]


def _load_model(path, dtype: str = "float64", backend: str = "numpy"):
    from . import hub
    from .model import AutoModelForCausalLM
    model_dir = hub.resolve(path)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, backend=backend), model_dir


def cmd_make(args) -> int:
    model, model_dir = _load_model(args.model, "float64", "numpy")
    if args.prompts:
        texts = read_prompts_file(args.prompts)
        prompts = tokenize_prompts(model_dir, texts)
    else:
        texts, prompts = None, read_ids_file(args.ids)
    patterns = [p.strip() for p in args.taps.split(",") if p.strip()] if args.taps else ["*"]
    bundle = make_bundle(model, prompts, texts=texts, taps=patterns, generate=args.generate, top_k=args.top_k,
                         max_attn_bytes=args.max_attn_bytes, model_dir=model_dir, timestamp=args.timestamp)
    bundle.save(args.output)
    n_taps = sum(len(t) for t in bundle.taps)
    print(f"wrote {args.output}: {bundle.num_prompts} prompt(s), {n_taps} tap tensors, "
          f"{args.generate} generated token(s) each (float64 spec)")
    for name, why in bundle.manifest["omitted_taps"].items():
        print(f"  omitted {name}: {why}")
    return 0


def cmd_check(args) -> int:
    ref = Bundle.load(args.bundle)
    from . import hub
    model_dir = hub.resolve(args.model)
    if not args.allow_model_mismatch:
        verify_model(ref, Path(model_dir))
    model, _ = _load_model(model_dir, args.dtype, args.backend)
    cand = rerun(ref, model)
    title = (f"golden check: A = {args.bundle} ({ref.producer()}, {ref.precision})  "
             f"B = pycohere on {args.model} ({args.dtype}, {model.backend})")
    return _finish(compare_bundles(ref, cand, args.profile, args.tolerance_scale, title), args)


def cmd_diff(args) -> int:
    a, b = Bundle.load(args.a), Bundle.load(args.b)
    title = f"golden diff: A = {args.a} ({a.producer()}, {a.precision})  B = {args.b} ({b.producer()}, {b.precision})"
    return _finish(compare_bundles(a, b, args.profile, args.tolerance_scale, title), args)


def _finish(report: Report, args) -> int:
    print(report.format(failures_only=args.failures_only))
    return 0 if report.passed else 1


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _add_compare_options(p) -> None:
    p.add_argument("--profile", choices=PROFILES, help="tolerance profile (default: float32 if either side "
                   "computes in float32, else float64)")
    p.add_argument("--tolerance-scale", type=float, default=1.0, metavar="X",
                   help="multiply every tolerance by X (deeper models accumulate more rounding)")
    p.add_argument("--failures-only", action="store_true", help="print only failing rows and the summary")


def register(subparsers) -> None:
    """Add ``golden make|check|diff`` to the ``pycohere`` command line."""
    g = subparsers.add_parser("golden", help="golden bundles: make fixtures, check an implementation, diff two bundles",
                              description="Golden bundles of every intermediate (docs/golden-format.md). "
                              "Exit codes: 0 agree, 1 mismatch, 2 usage or input error.")
    gsub = g.add_subparsers(dest="golden_command", metavar="{make,check,diff}")
    g.set_defaults(func=lambda args: (g.print_help(), 2)[1])

    mk = gsub.add_parser("make", help="run the float64 spec and write a bundle")
    mk.add_argument("model", help="checkpoint folder or hub repo id")
    src = mk.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", metavar="FILE", help="text prompts, one a line (needs the model's tokenizer.json)")
    src.add_argument("--ids", metavar="FILE", help="token ids, one prompt a line, space-separated")
    mk.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="folder to write")
    mk.add_argument("--taps", metavar="PATTERNS", help="comma-separated fnmatch patterns of tap names "
                    "(default: all), e.g. 'embed_tokens,layers.0.*,logits'")
    mk.add_argument("--generate", type=_positive_int, default=0, metavar="N", help="greedy tokens to generate")
    mk.add_argument("--top-k", type=_positive_int, default=DEFAULT_TOP_K, metavar="K", help="top-k log-probs kept per step")
    mk.add_argument("--max-attn-bytes", type=_positive_int, default=DEFAULT_MAX_ATTN_BYTES, metavar="N",
                    help="omit attention probabilities when they would take more bytes (0: always omit)")
    mk.add_argument("--timestamp", action="store_true", help="record the creation time (makes files differ run to run)")
    mk.set_defaults(func=cmd_make)

    ck = gsub.add_parser("check", help="re-run pycohere on a bundle's inputs and compare")
    ck.add_argument("bundle")
    ck.add_argument("--model", required=True, help="checkpoint folder or hub repo id")
    ck.add_argument("--backend", default="numpy", help="pycohere backend (numpy, numba, auto)")
    ck.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ck.add_argument("--allow-model-mismatch", action="store_true",
                    help="compare even if the checkpoint's hashes differ from the bundle's")
    _add_compare_options(ck)
    ck.set_defaults(func=cmd_check)

    df = gsub.add_parser("diff", help="compare two bundles (A is the reference)")
    df.add_argument("a")
    df.add_argument("b")
    _add_compare_options(df)
    df.set_defaults(func=cmd_diff)


def run_cli(register_fn, argv=None) -> int:
    """A ``pycohere``-like command line with only ``register_fn``'s commands; same error handling as
    ``pycohere.cli.main`` (one line on stderr, exit 2)."""
    parser = argparse.ArgumentParser(prog="pycohere")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    register_fn(parser.add_subparsers(dest="command"))
    from .cli import run  # the one place that turns errors into a line on stderr and exit 2
    return run(parser, argv)


def main(argv=None) -> int:
    """``python -m pycohere.golden make|check|diff ...``: the same as ``pycohere golden ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = ["--debug"] if "--debug" in argv[:1] else []
    return run_cli(register, debug + ["golden"] + argv[len(debug):])


if __name__ == "__main__":
    raise SystemExit(main())
