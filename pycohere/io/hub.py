"""Local folders and Hugging Face hub repo ids, resolved to a local checkpoint folder.

A repo id ("CohereLabs/c4ai-command-r7b-12-2024") is fetched with ``huggingface_hub.snapshot_download``
into the standard hub cache, limited to the files pycohere reads (safetensors, JSON, tokenizer files;
never pickles). ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) resolves from the cache only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointNotFoundError

# No "*.gguf": GGUF repos hold one file per quantization (often hundreds of GB in all); ask for one
# with gguf_file= (transformers' argument), which also fetches its split parts.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.txt"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def allow_patterns(gguf_file: str | None = None) -> list[str]:
    """What to download: config, safetensors, tokenizer files, and the one GGUF file asked for
    (with every part of a split file: name-00001-of-00003.gguf -> name-*-of-00003.gguf)."""
    if not gguf_file:
        return list(ALLOW_PATTERNS)
    return ALLOW_PATTERNS + [gguf_file, re.sub(r"-00001-of-(\d+)", r"-*-of-\1", gguf_file)]


def resolve(path_or_repo, revision: str | None = None, cache_dir=None, local_files_only: bool | None = None,
            token=None, gguf_file: str | None = None) -> Path:
    """Return a local path for a folder/file path or a hub repo id; with ``gguf_file`` the path of
    that GGUF file inside the folder or repo (only it and its split parts are downloaded)."""
    p = Path(os.path.expanduser(str(path_or_repo)))
    if p.exists():
        return p / gguf_file if gguf_file else p
    name = str(path_or_repo)
    if not _REPO_ID.match(name) or name.startswith((".", "/", "~")):
        raise CheckpointNotFoundError(f"{name} is neither an existing file or folder (so there is no config.json, "
                                      "safetensors or GGUF file to read) nor a hub repo id ('organisation/name'); "
                                      "check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    offline = local_files_only if local_files_only is not None else \
        os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                   allow_patterns=allow_patterns(gguf_file), token=token)
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(
            f"{name} is not in the local hub cache and downloading is off (HF_HUB_OFFLINE / local_files_only) "
            "or the hub cannot be reached; download it once with network access or pass a local folder") from None
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointNotFoundError(f"could not fetch {name} from the hub ({type(e).__name__}: {e}); "
                                      "check the repo id, your token and network, or pass a local folder") from None
    return Path(folder) / gguf_file if gguf_file else Path(folder)
