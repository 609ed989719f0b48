"""The golden bundle format: constants, tolerances, and the ``Bundle`` in memory and on disk.

A bundle is a folder any implementation (C++, Rust, JAX, ...) can write and read without pycohere;
the format is specified in ``docs/golden-format.md``. In short:

    inputs.safetensors   prompts.{p}.input_ids / attention_mask / position_ids       (T,) int64
    taps.safetensors     prompts.{p}.{tap}      every recorded intermediate, batch axis dropped
    outputs.safetensors  prompts.{p}.step_logits (N+1, V), generated_ids (N,),
                         topk_ids / topk_logprobs (N+1, K)
    manifest.json        schema, model hashes, versions, tap list in forward order, tolerances
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, InputError, UnsupportedFormatError
from ..io.safetensors import read_safetensors, write_safetensors
from ..spec.taps import GLOBAL_AFTER, GLOBAL_BEFORE, LAYER_OPS, tap_order_key
from ..spec.taps import describe as describe_tap

SCHEMA = "pycohere-golden"
SCHEMA_VERSION = 1
INPUTS, TAPS, OUTPUTS, MANIFEST = "inputs.safetensors", "taps.safetensors", "outputs.safetensors", "manifest.json"
BUNDLE_FILES = (INPUTS, TAPS, OUTPUTS, MANIFEST)
PREFIX = "prompts."
DEFAULT_TOP_K = 5
DEFAULT_MAX_ATTN_BYTES = 32 * 2**20

OUTPUT_NAMES = {
    "step_logits": "logits of the next token after the prompt + j generated tokens",
    "generated_ids": "greedy continuation",
    "topk_logprobs": "top-k log-probabilities of each step",
    "topk_ids": "token ids of the top-k log-probabilities",
}
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids")


def describe(name: str) -> str:
    """Human name of a tap or output: 'layer 1, q_rope (RoPE, interleaved pairs)'."""
    return describe_tap(name, OUTPUT_NAMES)


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
