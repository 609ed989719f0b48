"""One probe per checkpoint: a path (folder, ``.gguf`` file, hub repo id) is resolved once, its format
detected once, and its config, weight source and tokenizer all come from that one ``Probe``.

A GGUF file (with its 256k-token vocabulary) is parsed once per load: the probe keeps the parsed
``GGUFModelFile``, from which the config, the weight source and the tokenizer are built. safetensors
files are mapped once, when the weights are first asked for (reading a config needs only config.json).

=====================  ========================================================================
``Probe.format``       what it is
=====================  ========================================================================
``safetensors``        float safetensors (F32/F16/BF16), single or sharded
``pycohere``           pycohere's quantized safetensors (``pycohere quantize``)
``bitsandbytes``       bitsandbytes 4-bit / 8-bit safetensors (config.json's quantization_config)
``gptq``, ``awq``      GPTQ / AWQ 4-bit safetensors
``gguf``               llama.cpp GGUF, single or split
=====================  ========================================================================
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CohereConfig, config_from_dict, read_config_file
from ..io import hub
from ..io.safetensors import Checkpoint
from ..quant.config import METADATA_KEY, QUANT_METHOD
from .gguf import GGUFModelFile, GGUFSource, config_from_gguf
from .gguf import gguf_file as find_gguf_file
from .source import WeightSource

HF_QUANT_METHODS = ("bitsandbytes", "gptq", "awq")
FORMATS = ("safetensors", QUANT_METHOD, *HF_QUANT_METHODS, "gguf")
TOKENIZER_FILE = "tokenizer.json"


@dataclass(eq=False)
class Probe:
    """A checkpoint, resolved and detected once.

    ``path`` is the local folder or file (a hub repo id is downloaded first); ``gguf`` the parsed GGUF
    model (metadata, vocabulary, every split part) or None; ``config`` its config.
    """

    path: Path
    config: CohereConfig
    gguf: GGUFModelFile | None = None
    _safetensors: Checkpoint | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        """Where the side files live (tokenizer.json, generation_config.json, chat templates)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def safetensors(self) -> Checkpoint:
        """The mapped safetensors files (headers parsed once, on first use)."""
        if self._safetensors is None:
            self._safetensors = Checkpoint(self.path)
        return self._safetensors

    @functools.cached_property
    def format(self) -> str:
        if self.gguf is not None:
            return "gguf"
        qc = getattr(self.config, "quantization_config", None)
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if method in HF_QUANT_METHODS:
            return method
        if method == QUANT_METHOD or METADATA_KEY in self.safetensors.metadata:
            return QUANT_METHOD
        return "safetensors"

    @property
    def hf_tokenizer_file(self) -> Path | None:
        """tokenizer.json of a checkpoint folder, if it has one (it wins over a GGUF vocabulary)."""
        f = self.path / TOKENIZER_FILE
        return f if self.path.is_dir() and f.is_file() else None

    def open_weights(self, quantization=None, config=None) -> WeightSource:
        """The weight source for this checkpoint (``pycohere.checkpoints.source``)."""
        config = config or self.config
        fmt = self.format
        if fmt == "gguf":
            return GGUFSource(self.gguf, config, quantization)
        if fmt in HF_QUANT_METHODS:
            from .hf_quantized import HFQuantizedSource
            return HFQuantizedSource(self.safetensors, config, quantization)
        from .safetensors import QuantizedSafetensorsSource, SafetensorsSource
        cls = QuantizedSafetensorsSource if fmt == QUANT_METHOD else SafetensorsSource
        return cls(self.safetensors, config, quantization)


def probe(path_or_repo, *, revision: str | None = None, cache_dir=None, local_files_only: bool | None = None,
          token=None, gguf_file: str | None = None) -> Probe:
    """Resolve ``path_or_repo`` (a folder, a file, a hub repo id) and read its config, once.

    A ``Probe`` passed in is returned as it is (so every entry point accepts one)."""
    if isinstance(path_or_repo, Probe):
        return path_or_repo
    path = hub.resolve(path_or_repo, revision, cache_dir, local_files_only, token, gguf_file)
    g = find_gguf_file(path)
    if g is not None:
        model = GGUFModelFile(g)
        return Probe(g, config_from_gguf(model), model)
    return Probe(path, config_from_dict(read_config_file(path)))


def load_config(path) -> CohereConfig:
    """The model config of a checkpoint: config.json, or a GGUF file's metadata."""
    return probe(path).config


def open_weights(path, config=None, quantization=None) -> WeightSource:
    """The weight source for the checkpoint at ``path`` (a path or a Probe)."""
    return probe(path).open_weights(quantization, config)


class AutoConfig:
    """Dispatch on ``model_type`` like transformers' AutoConfig; ``from_pretrained`` reads config.json or a
    GGUF file's metadata (through the probe)."""

    @staticmethod
    def for_model(model_type: str, **kwargs) -> CohereConfig:
        return config_from_dict({"model_type": model_type, **kwargs})

    @staticmethod
    def from_dict(d: dict) -> CohereConfig:
        return config_from_dict(d)

    @staticmethod
    def from_pretrained(path, **hub_kwargs) -> CohereConfig:
        return probe(path, **hub_kwargs).config


__all__ = ["Probe", "probe", "load_config", "open_weights", "AutoConfig", "FORMATS", "HF_QUANT_METHODS"]
