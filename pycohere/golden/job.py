"""Golden bundles of several checkpoints x one prompts file as a batch of tasks, for any executor.

A task is one (checkpoint, prompt chunk): it runs the chunk's prompts through the checkpoint's float64
spec exactly as ``make_bundle`` does (the decisions that look at every prompt, the attention-probability
cap and the generation counts, are taken first by ``plan_bundle``) and returns their inputs, taps and
outputs. A checkpoint's bundle is assembled from its chunks in prompt order, so it is byte-identical to
``make_bundle``'s whatever the chunk size, the number of workers or the order in which tasks finish.

Finished tasks are kept in a content-addressed store (``TaskStore``): a task's key is the sha256 of what
its result depends on (pycohere and NumPy versions, the checkpoint's config and file hashes, the chunk's
token ids and the options), so a rerun after an interruption runs only what is missing, and a changed
checkpoint or option never reuses a stale result.

The executor is anything with ``submit(fn, *args) -> future`` and ``as_completed(futures)``:
``SerialExecutor`` (in this process, one task after another) or Dask (``pycohere.parallel.golden_dask``:
workers keep their loaded checkpoint between tasks; a task whose worker dies runs again elsewhere).
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..checkpoints.probe import probe
from ..errors import InputError, TokenizerError
from ..version import __version__
from .bundle import DEFAULT_MAX_ATTN_BYTES, DEFAULT_TOP_K, SCHEMA, SCHEMA_VERSION, Bundle
from .make import assemble_bundle, model_info, plan_bundle, run_prompts

DEFAULT_CHUNK = 4


# --- what runs on a worker ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def load_model(path: str):
    """(the float64 NumPy spec model, its folder), kept for the next task on the same checkpoint."""
    from ..model import AutoModelForCausalLM  # (applications may import the model layer)
    found = probe(path)
    return AutoModelForCausalLM.from_pretrained(found, dtype="float64", backend="numpy"), found.path


def tokenize(model_dir: Path, texts: list[str]) -> list[list[int]]:
    if not (Path(model_dir) / "tokenizer.json").is_file():
        raise TokenizerError(f"{model_dir} has no tokenizer.json, so --prompts cannot be tokenized; pass token "
                             "ids instead with --ids FILE (one prompt a line, space-separated ids)")
    from ..text.tokenizer import CohereTokenizer
    tok = CohereTokenizer.from_pretrained(model_dir)
    return [list(tok.encode(t)) for t in texts]


def describe(path: str, texts: list[str] | None, ids: list[list[int]] | None) -> dict:
    """The manifest's facts about a checkpoint (with its file hashes) and the prompts as its token ids."""
    model, model_dir = load_model(path)
    return {"info": model_info(model, model_dir), "prompts": tokenize(model_dir, texts) if texts else ids}


def run_chunk(path: str, prompts, n_gen, taps, exclude, top_k) -> tuple[list, list, list]:
    """One task: (inputs, taps, outputs) of these prompts through the checkpoint at ``path``."""
    model, _ = load_model(path)
    return run_prompts(model, prompts, None, taps, exclude, n_gen, top_k)


# --- executors and the store -------------------------------------------------------------------------------
class SerialExecutor:
    """Runs each task when it is submitted, in this process."""

    @staticmethod
    def submit(fn, *args):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return future

    @staticmethod
    def as_completed(futures):
        return iter(futures)


class TaskStore:
    """Finished tasks by key: ``folder/<key>/`` is a small bundle of the chunk's prompts (written to a
    temporary folder and renamed, so an interrupted write leaves nothing that looks finished)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def has(self, key: str) -> bool:
        return (self.folder / key / "manifest.json").is_file()

    def save(self, key: str, parts: tuple[list, list, list]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.folder))
        try:
            Bundle({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "task": key}, *parts).save(tmp)
            os.replace(tmp, self.folder / key)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.has(key):  # (another run may have stored the same task meanwhile: fine)
                raise

    def load(self, key: str) -> tuple[list, list, list]:
        b = Bundle.load(self.folder / key)
        return b.inputs, b.taps, b.outputs


def task_key(info: dict, prompts, n_gen, taps, exclude, top_k) -> str:
    """sha256 of everything a task's result depends on."""
    what = {"pycohere": __version__, "numpy": np.__version__, "config": info["config"],
            "files": info["model"].get("files"), "dtype": info["dtype"], "backend": info["backend"],
            "prompts": [np.asarray(p).tolist() for p in prompts], "generate": list(n_gen), "taps": list(taps),
            "exclude": list(exclude), "top_k": top_k}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


# --- the job -----------------------------------------------------------------------------------------------
@dataclass
class GoldenJob:
    """``pycohere golden make CKPT... --prompts|--ids FILE -o OUT``: one bundle per checkpoint (``OUT`` itself
    for one checkpoint, ``OUT/<checkpoint name>`` for several)."""

    checkpoints: list[str]
    output: Path
    texts: list[str] | None = None
    ids: list[list[int]] | None = None
    taps: list[str] = field(default_factory=lambda: ["*"])
    generate: int = 0
    top_k: int = DEFAULT_TOP_K
    max_attn_bytes: int = DEFAULT_MAX_ATTN_BYTES
    timestamp: bool = False
    chunk: int = DEFAULT_CHUNK
    store: TaskStore | None = None
    task: Callable = field(default=run_chunk, repr=False)  # (a test replaces it with a failing twin)

    def destinations(self) -> list[Path]:
        if len(self.checkpoints) == 1:
            return [Path(self.output)]
        names = [Path(str(c).rstrip("/")).name for c in self.checkpoints]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"two checkpoints are named {twice[0]!r}, so their bundles would share "
                             f"{Path(self.output) / twice[0]}; make one golden job per name")
        return [Path(self.output) / n for n in names]

    def run(self, executor=SerialExecutor, progress: bool | None = None) -> list[tuple[Path, Bundle, int, int]]:
        """Run the missing tasks on ``executor`` and write every bundle; (path, bundle, tasks run, tasks
        found in the store) per checkpoint."""
        if self.chunk < 1:
            raise InputError(f"--chunk must be at least 1 prompt per task, got {self.chunk}")
        dests = self.destinations()
        futures = [executor.submit(describe, str(c), self.texts, self.ids) for c in self.checkpoints]
        described = [f.result() for f in futures]  # (in checkpoint order, not the order they finish in)
        plans, pending, found = [], {}, [0] * len(self.checkpoints)
        for c, d in enumerate(described):
            info = d["info"]
            prompts, n_gen, exclude, omitted = plan_bundle(SimpleNamespace(**info), d["prompts"], self.taps,
                                                           self.generate, self.top_k, self.max_attn_bytes)
            keys = []
            for start in range(0, len(prompts), self.chunk):
                chunk, gen = prompts[start:start + self.chunk], n_gen[start:start + self.chunk]
                key = task_key(info, chunk, gen, self.taps, exclude, self.top_k)
                keys.append(key)
                if self.store is not None and self.store.has(key):
                    found[c] += 1
                elif key not in pending.values():
                    future = executor.submit(self.task, str(self.checkpoints[c]), chunk, gen, self.taps, exclude,
                                             self.top_k)
                    pending[future] = key
            plans.append((info, prompts, n_gen, exclude, omitted, keys))
        results = self._collect(executor, pending, sum(found), progress)
        out = []
        for c, (info, prompts, n_gen, exclude, omitted, keys) in enumerate(plans):
            inputs, taps, outputs = [], [], []
            for key in keys:
                part = results[key] if key in results else self.store.load(key)
                inputs += part[0]
                taps += part[1]
                outputs += part[2]
            bundle = assemble_bundle(info, prompts, self.texts, self.taps, n_gen, self.top_k, self.max_attn_bytes,
                                     omitted, exclude, inputs, taps, outputs, self.timestamp)
            bundle.save(dests[c])
            out.append((dests[c], bundle, len(keys) - found[c], found[c]))
        return out

    def _collect(self, executor, pending: dict, done_before: int, progress) -> dict:
        from tqdm.auto import tqdm  # (a dependency of huggingface_hub)
        disable = (not sys.stderr.isatty()) if progress is None else not progress
        results = {}
        with tqdm(total=len(pending) + done_before, initial=done_before, desc="golden tasks", unit="task",
                  file=sys.stderr, disable=disable) as bar:
            for future in executor.as_completed(list(pending)):
                key = pending[future]
                results[key] = future.result()
                if self.store is not None:
                    self.store.save(key, results[key])
                bar.update(1)
        return results
