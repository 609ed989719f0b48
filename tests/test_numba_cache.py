"""Numba's cache files go to a user cache folder, never into the installed package (issue 13).

In the package's ``__pycache__`` (numba's default) they made pip leave ``site-packages/pycohere/`` behind when
a regular install was replaced by an editable one, and that empty folder shadowed the editable install; in a
read-only install they cannot be written at all. Each case runs in a fresh interpreter, since numba picks a
function's cache folder once, when the function is decorated.
"""
import json
import os
import subprocess
import sys

import pytest

from pycohere.kernels.jit import kernels_digest

from conftest import ROOT

PACKAGE = ROOT / "pycohere"

# Every cached kernel's folder, then one small kernel compiled and saved (a few seconds).
PROBE = r"""
import json, sys
import numpy as np
import numba
from pycohere.kernels import attention, decode, dense, hf, kquant
paths, n = set(), 0
for mod in (attention, decode, dense, hf, kquant):
    for obj in vars(mod).values():
        cache = getattr(obj, "_cache", None)
        if isinstance(obj, numba.core.registry.CPUDispatcher) and hasattr(cache, "_cache_path"):
            paths.add(cache._cache_path)
            n += 1
dense.widen_bf16(np.zeros((2, 3), np.uint16))
print(json.dumps({"config": numba.config.CACHE_DIR, "paths": sorted(paths), "kernels": n}))
"""


def _probe(tmp_path, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(ROOT))
    env.update({k: str(v) for k, v in env_changes.items() if v is not None})
    (tmp_path / "tmp").mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc"))


def _package_cache_files_after(start):
    return [p for p in _files(PACKAGE) if p.stat().st_mtime >= start]


@pytest.mark.parametrize("xdg", [True, False], ids=["XDG_CACHE_HOME", "HOME/.cache"])
def test_the_cache_is_in_the_user_cache_folder_not_in_the_package(tmp_path, xdg):
    import time
    start = time.time() - 1
    expected = (tmp_path / "xdg" if xdg else tmp_path / "home" / ".cache") / "pycohere" / "numba"
    out = _probe(tmp_path, XDG_CACHE_HOME=tmp_path / "xdg" if xdg else None)
    expected = expected / kernels_digest()
    assert out["config"] == str(expected)
    assert out["kernels"] >= 20 and out["paths"] and all(p.startswith(str(expected)) for p in out["paths"]), out["paths"]
    written = _files(expected)
    assert any(p.name.startswith("dense.widen_bf16") and p.suffix == ".nbi" for p in written), written
    assert any(p.suffix == ".nbc" for p in written)
    assert not _package_cache_files_after(start)  # nothing was written into the package


def test_numba_cache_dir_wins(tmp_path):
    mine = tmp_path / "mine"
    out = _probe(tmp_path, XDG_CACHE_HOME=tmp_path / "xdg", NUMBA_CACHE_DIR=mine)
    assert out["config"] == str(mine) and all(p.startswith(str(mine)) for p in out["paths"])
    assert _files(mine) and not (tmp_path / "xdg").exists()


def test_an_unwritable_cache_folder_falls_back_to_the_temp_dir(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder's parent should be")
    out = _probe(tmp_path, XDG_CACHE_HOME=blocker)  # mkdir fails even as root
    uid = os.getuid()
    fallback = tmp_path / "tmp" / f"pycohere-numba-{uid}"
    fallback = fallback / kernels_digest()
    assert out["config"] == str(fallback) and all(p.startswith(str(fallback)) for p in out["paths"])
    assert _files(fallback)


def test_a_relative_xdg_cache_home_is_ignored(tmp_path):
    """The XDG base-directory spec: a relative path is invalid and must be ignored."""
    out = _probe(tmp_path, XDG_CACHE_HOME="relative/cache")
    assert out["config"] == str(tmp_path / "home" / ".cache" / "pycohere" / "numba" / kernels_digest())


def test_an_edited_kernel_source_gets_a_fresh_cache_folder(tmp_path):
    """Numba checks a cached function against its own file only: a changed inlined helper (rows.py) must
    not be served from the old machine code, so the folder name follows every kernel source."""
    import shutil
    copy = tmp_path / "kernels"
    shutil.copytree(PACKAGE / "kernels", copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = kernels_digest(copy)
    assert before == kernels_digest()  # the copy is the package's sources
    rows = copy / "rows.py"
    rows.write_text(rows.read_text() + "\n# an edit\n")
    assert kernels_digest(copy) != before
