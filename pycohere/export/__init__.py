"""Writing checkpoints out: ``gguf`` (a GGUF file llama.cpp loads: ``pycohere convert``) and ``quantized``
(a pycohere quantized safetensors checkpoint: ``pycohere quantize``), both streaming and atomic.

May import: everything up to ``pycohere.text``; never ``pycohere.cli``.
"""
from .gguf import FILE_TYPES, convert_to_gguf
from .quantized import quantize_checkpoint

__all__ = ["FILE_TYPES", "convert_to_gguf", "quantize_checkpoint"]
