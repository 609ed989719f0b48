"""Bytes on disk: safetensors and GGUF files (read in place, written streaming), hub downloads, safe writes.

May import: ``pycohere.errors``, ``pycohere.constants``. Knows nothing of models: tensors are named arrays.
"""
