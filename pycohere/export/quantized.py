"""``pycohere quantize SRC DST``: a float checkpoint -> a pycohere quantized checkpoint.

    pycohere quantize ./c4ai-command-r-v01 ./command-r-int4 --scheme int4 --group-size 64

Streaming: tensors are read in row chunks with ``os.pread`` and their packed rows written at
their final offsets (:class:`pycohere.io.safetensors.SafetensorsWriter`), so peak memory is a
few chunks of rows whatever the model size. Atomic: everything is written into a hidden
temporary folder beside DST (``.DST.partial-XXXX``) and renamed to DST only when every file is
complete and synced; on any error (disk full, permission, bad weights, Ctrl-C) the temporary
folder is removed and DST is untouched. Python API: :func:`quantize_checkpoint`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..checkpoints.manifest import check_manifest, expected_tensors
from ..checkpoints.probe import probe
from ..checkpoints.safetensors import read_metadata
from ..errors import QuantizationError
from ..io.files import check_free_space, make_parents, os_error_message, progress_bar, remove_folders, umask
from ..io.safetensors import (INDEX_NAME, PICKLE_SUFFIXES, Checkpoint, RowReader, SafetensorsWriter, TensorSpec,
                              plan_shards, safetensors_dtype, shard_file_names, write_index)
from ..quant.config import (QUANT_METHOD, STORAGE_VERSION, QuantizationConfig, array_name, metadata_entry)
from ..quant.schemes import FORMAT_VERSION, array_shapes
from ..quant.stream import quantize_stream, resolve_group

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' save_pretrained default ("5GB")
_MARKERS = ("config.json", INDEX_NAME)  # a folder holding one of these (or *.safetensors) is a checkpoint


WHAT = "the quantized checkpoint"


def quantize_checkpoint(src, dst, scheme: str = "int8", group_size: int | None = None,
                        keep_embeddings: bool = False, force: bool = False, *,
                        max_shard_size: int | None = DEFAULT_MAX_SHARD_SIZE, progress: bool | None = None) -> Path:
    """Quantize the float checkpoint ``src`` (folder or hub repo id) into the folder ``dst``.

    scheme / group_size / keep_embeddings: see :class:`pycohere.QuantizationConfig`.
    force: replace an existing ``dst`` (only if it is a checkpoint folder or a file).
    max_shard_size: bytes per safetensors file (None: one file).
    progress: tqdm bar on stderr (None: only when stderr is a terminal).
    Returns ``dst`` as a Path. Raises QuantizationError (nothing written) on any failure.
    """
    qc = QuantizationConfig(scheme=scheme, group_size=group_size, keep_embeddings=keep_embeddings)
    found = probe(src)
    src = found.path
    dst = Path(os.path.expanduser(str(dst))).absolute()
    config = found.config
    ckpt = found.safetensors
    _refuse_quantized_source(src, config, ckpt)
    check_manifest(config, {n: t.shape for n, t in ckpt.tensors.items()}, where=str(src))
    jobs = _plan(ckpt, config, qc)
    _check_destination(src, dst, force)
    shards = plan_shards([specs for _, _, specs in jobs], max_shard_size)
    check_free_space(dst, sum(s.nbytes for specs in shards for s in specs), WHAT, QuantizationError)

    created = make_parents(dst.parent, WHAT, QuantizationError)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
        _write_weights(tmp, ckpt, jobs, shards, qc, progress)
        _copy_side_files(src, tmp)
        _write_config(src, tmp, qc)
        _replace(tmp, dst)
        tmp = None
    except OSError as e:
        raise QuantizationError(os_error_message(e, dst, WHAT)) from None
    finally:
        if tmp is not None:  # any failure, including KeyboardInterrupt: leave nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
            remove_folders(created)
    return dst


# --- planning --------------------------------------------------------------------------------------
def _refuse_quantized_source(src: Path, config, ckpt: Checkpoint) -> None:
    entry = getattr(config, "quantization_config", None)
    if entry is not None or read_metadata(ckpt) is not None:
        method = entry.get("quant_method") if isinstance(entry, dict) else QUANT_METHOD
        raise QuantizationError(
            f"{src} is already quantized ({method}); quantizing it again would compound the rounding "
            f"errors: quantize the original float checkpoint instead")


def _plan(ckpt: Checkpoint, config, qc: QuantizationConfig) -> list[tuple[str, int | None, list[TensorSpec]]]:
    """[(tensor name, group size or None for a float copy, the arrays it becomes)], in manifest
    order. Every group-size problem is found here, before anything is written."""
    jobs = []
    names = list(expected_tensors(config))
    if "lm_head.weight" in ckpt and "lm_head.weight" not in names:
        names.append("lm_head.weight")  # a saved head is used even when tied (as model.load_params does)
    for name in names:
        ref = ckpt[name]
        if qc.applies_to(name):
            group = resolve_group(name, ref.shape, qc)
            specs = [TensorSpec(array_name(name, a), safetensors_dtype(dt), shape)
                     for a, (shape, dt) in array_shapes(qc.scheme, ref.shape, group).items()]
            jobs.append((name, group, specs))
        else:  # norms, biases, kept embeddings: copied in their stored dtype
            jobs.append((name, None, [TensorSpec(name, ref.dtype, ref.shape)]))
    return jobs


def _is_checkpoint_folder(p: Path) -> bool:
    return any((p / m).exists() for m in _MARKERS) or any(p.glob("*.safetensors"))


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    if dst.resolve() == Path(src).resolve() or Path(src).resolve() in dst.resolve().parents:
        raise QuantizationError(f"the destination {dst} is (inside) the source checkpoint; choose another folder")
    if not (dst.exists() or dst.is_symlink()):
        return
    if not force:
        raise QuantizationError(f"{dst} already exists; pass --force (force=True) to replace it, or choose "
                                "another destination")
    if dst.is_dir() and not dst.is_symlink() and any(dst.iterdir()) and not _is_checkpoint_folder(dst):
        raise QuantizationError(f"{dst} is a non-empty folder that does not look like a checkpoint (no config.json "
                                "or safetensors); refusing to replace it even with --force")


# --- writing ---------------------------------------------------------------------------------------
def _write_weights(folder: Path, ckpt: Checkpoint, jobs, shards, qc: QuantizationConfig, progress) -> None:
    tensors_meta = {name: {"scheme": qc.scheme, "group_size": group, "shape": list(ckpt[name].shape),
                           "version": FORMAT_VERSION}
                    for name, group, _ in jobs if group is not None}
    metadata = metadata_entry(tensors_meta)
    names = shard_file_names(len(shards))
    file_of = {s.name: i for i, specs in enumerate(shards) for s in specs}
    total = sum(ckpt[name].nbytes for name, _, _ in jobs)
    bar = progress_bar(total, f"quantizing to {qc.scheme}", progress)
    writers = [SafetensorsWriter(folder / n, specs, metadata) for n, specs in zip(names, shards)]
    try:
        for name, group, specs in jobs:
            w = writers[file_of[specs[0].name]]
            ref = ckpt[name]
            if group is None:
                _copy_tensor(w, ref)
            else:
                quantize_stream(name, RowReader(ref), ref.shape, qc.scheme, group,
                                lambda array, start, rows: w.write(array_name(name, array), rows, start))
            bar.update(ref.nbytes)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        bar.close()
    if len(shards) > 1:
        write_index(folder, shards, names)


def _copy_tensor(writer: SafetensorsWriter, ref) -> None:
    """A float tensor copied unchanged (bytes as stored: bf16 stays bf16), 16 MiB at a time."""
    read = RowReader(ref).raw
    rows = ref.shape[0]
    step = max(1, (16 << 20) // max(1, ref.nbytes // max(1, rows)))
    for start in range(0, rows, step):
        writer.write(ref.name, read(start, min(rows, start + step)), start)


def _copy_side_files(src: Path, folder: Path) -> None:
    """Tokenizer, generation config, chat templates, README...: every regular file that is not a
    weight file, an index or config.json (rewritten). Pickles are never copied."""
    if not src.is_dir():
        return
    for f in sorted(src.iterdir()):
        if (not f.is_file() or f.name.startswith(".") or f.suffix == ".safetensors"
                or f.name in ("config.json", INDEX_NAME) or f.suffix in PICKLE_SUFFIXES):
            continue
        shutil.copyfile(f, folder / f.name)


def _write_config(src: Path, folder: Path, qc: QuantizationConfig) -> None:
    """config.json of the source, unchanged but for the quantization_config entry; written last,
    so a folder without it was never completed."""
    cfg_path = src / "config.json" if src.is_dir() else src.parent / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = {**qc.to_dict(), "format_version": STORAGE_VERSION}
    data = json.dumps(cfg, indent=2, sort_keys=False) + "\n"
    with open(folder / "config.json", "x") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(tmp: Path, dst: Path) -> None:
    """Move the finished folder into place; an existing dst (force) is swapped out first and removed
    only after the rename succeeded."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / "replaced")
    try:
        os.rename(tmp, dst)
    except OSError:
        if old is not None:
            os.rename(old / "replaced", dst)
            old.rmdir()
        raise
    if old is not None:
        target = old / "replaced"
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            target.unlink()
            old.rmdir()
    os.chmod(dst, 0o777 & ~umask())  # (mkdtemp made it 0700)
