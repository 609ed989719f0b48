"""Writing outputs safely (``pycohere quantize``, ``pycohere convert``): free space checked first,
parent folders created and removed again on failure, and one message for every OS error that says
what happened and that nothing was left behind."""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

_REASONS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit was reached (disk quota or ulimit -f)",
            errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
            errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a parent of it is not a folder"}


def os_error_message(e: OSError, dst: Path, what: str) -> str:
    """``what`` names the output ("the GGUF file", "the quantized checkpoint")."""
    reason = _REASONS.get(e.errno, e.strerror or str(e))
    where = f" ({e.filename})" if e.filename else ""
    return (f"could not write {what} {dst}: {reason}{where}; nothing was written (the partial output was "
            f"removed); free space or choose another destination")


def check_writable(folder: Path, dst: Path, what: str, error: type[Exception]) -> None:
    """Raise ``error`` unless a file can be created in folder (an existing folder). Tried for real with a
    temporary file, which is gone at once: permission bits do not tell (root passes them; /proc and
    read-only mounts still refuse)."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        # an existing folder that answers "no such file" to a create is a virtual file system (/proc, /sys)
        reason = ("a virtual file system that holds no files" if e.errno in (errno.ENOENT, errno.EOPNOTSUPP)
                  else _REASONS.get(e.errno, e.strerror or str(e)))
        raise error(f"could not write {what} {dst}: {folder} does not accept new files ({reason}); nothing was "
                    "written; choose a destination in a writable folder") from None


def check_free_space(dst: Path, needed: int, what: str, error: type[Exception]) -> None:
    """Raise ``error`` if the destination's folder is not writable or has less than ``needed`` bytes free."""
    probe = dst.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise error(f"could not write {what} {dst}: {probe} is a file, not a folder; nothing was written; "
                    "choose another destination")
    check_writable(probe, dst, what, error)  # before the space: a read-only or virtual file system has none
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise error(f"{what} needs {needed / 2**30:.2f} GiB but {probe} has {free / 2**30:.2f} GiB free; "
                    "free some space or choose another destination")


def make_parents(folder: Path, what: str, error: type[Exception]) -> list[Path]:
    """mkdir -p, returning the folders it created (for ``remove_folders`` on failure)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError as e:
        remove_folders(created)
        raise error(os_error_message(e, folder, what)) from None
    return created


def remove_folders(created: list[Path]) -> None:
    """Remove folders made by ``make_parents`` (innermost first), leaving any that are not empty."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def progress_bar(total: int, desc: str, progress: bool | None):
    """A tqdm bar over ``total`` bytes on stderr (``progress=None``: only when stderr is a terminal)."""
    from tqdm.auto import tqdm  # (a dependency of huggingface_hub)
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=disable, mininterval=0.5)
