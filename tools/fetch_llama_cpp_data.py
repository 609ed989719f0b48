#!/usr/bin/env python
"""Fetch llama.cpp's Command-R tokenizer test data and chat templates from PyPI.

The real Command-R vocabulary (256000 tokens, 253333 merges) and llama.cpp's 46 reference
tokenizations ship inside the llama-cpp-python *source* distribution, under
``vendor/llama.cpp/models/``. This script downloads that sdist with pip (PyPI only, ~77 MB),
extracts just the few files pycohere's tests need into a cache directory and deletes the rest.

Cache: ``$PYCOHERE_CACHE`` if set, else ``~/.cache/pycohere``; files land in
``<cache>/llama-cpp-0.3.36/``. Running again when the files are present does nothing.

    python tools/fetch_llama_cpp_data.py [--cache-dir DIR]

Tests import :func:`fetch` by path and catch :class:`RegistryUnreachableError` (and only that)
to skip when PyPI cannot be reached.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
PACKAGE = "llama-cpp-python"
PREFIX = "vendor/llama.cpp/models/"
# Files we need, relative to PREFIX (exact names).
VOCAB_FILES = (
    "ggml-vocab-command-r.gguf",
    "ggml-vocab-command-r.gguf.inp",
    "ggml-vocab-command-r.gguf.out",
)
# Jinja chat templates for Cohere models (e.g. CohereForAI-c4ai-command-r-plus-tool_use.jinja).
TEMPLATE_GLOBS = ("templates/*ohere*", "templates/*ommand*")

# Substrings of pip's output that mean "could not reach the registry" rather than "broke".
_NETWORK_MARKERS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "Read timed out",
    "ProxyError",
    "NewConnectionError",
    "Max retries exceeded",
)


class RegistryUnreachableError(RuntimeError):
    """PyPI could not be reached, so the sdist cannot be downloaded."""


def default_cache_dir() -> Path:
    root = os.environ.get("PYCOHERE_CACHE") or os.path.join("~", ".cache", "pycohere")
    return Path(root).expanduser() / f"llama-cpp-{VERSION}"


def _is_complete(cache_dir: Path) -> bool:
    return all((cache_dir / name).is_file() for name in VOCAB_FILES) and any(
        (cache_dir / "templates").glob("*.jinja")
    )


def _download_sdist(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "-d", str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if any(marker in output for marker in _NETWORK_MARKERS):
            raise RegistryUnreachableError(
                f"could not download {PACKAGE}=={VERSION} from PyPI (registry unreachable):\n"
                + output[-2000:]
            )
        raise RuntimeError(f"pip download failed (exit {proc.returncode}):\n{output[-4000:]}")
    archives = sorted(dest.glob("*.tar.gz"))
    if not archives:
        raise RuntimeError(f"pip download produced no .tar.gz sdist in {dest}: {os.listdir(dest)}")
    return archives[0]


def _wanted(relative: str) -> bool:
    if relative in VOCAB_FILES:
        return True
    return any(fnmatch.fnmatch(relative, pattern) for pattern in TEMPLATE_GLOBS)


def _extract(archive: Path, cache_dir: Path) -> list[Path]:
    written = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            # Members look like "llama_cpp_python-0.3.36/vendor/llama.cpp/models/...".
            _, _, inner = member.name.partition("/")
            if not member.isfile() or not inner.startswith(PREFIX):
                continue
            relative = inner[len(PREFIX):]
            if not _wanted(relative):
                continue
            target = cache_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(source.read())
            tmp.replace(target)  # atomic: a killed run never leaves half a file under the real name
            written.append(target)
    return written


def fetch(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the Command-R vocab files and templates are in ``cache_dir``; return it."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _is_complete(cache):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pycohere-sdist-") as tmp:
        archive = _download_sdist(Path(tmp))
        written = _extract(archive, cache)
    if not _is_complete(cache):
        raise RuntimeError(
            f"{archive.name} lacked some expected files under {PREFIX}; extracted {written}"
        )
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="default: $PYCOHERE_CACHE or ~/.cache/pycohere")
    args = parser.parse_args(argv)
    path = fetch(args.cache_dir)
    for file in sorted(path.rglob("*")):
        if file.is_file():
            print(f"{file.stat().st_size:>10}  {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
