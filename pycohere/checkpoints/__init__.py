"""Checkpoints: a path probed once (``probe``) -> its config and a ``WeightSource`` serving its tensors in
transformers' names, for every format: float and pycohere-quantized safetensors, bitsandbytes / GPTQ /
AWQ safetensors, GGUF. ``manifest`` checks a source against the config before anything loads.

May import: ``pycohere.kernels`` and below (a GPTQ act-order permutation is repacked by a kernel).
"""
from .manifest import check_manifest, expected_tensors
from .probe import FORMATS, AutoConfig, Probe, load_config, open_weights, probe
from .source import TensorInfo, WeightSource

__all__ = ["AutoConfig", "FORMATS", "Probe", "TensorInfo", "WeightSource", "check_manifest", "expected_tensors",
           "load_config", "open_weights", "probe"]
