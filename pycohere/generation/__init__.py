"""Generation: ``GenerationConfig`` (``config``), logits processors and sampling (``sampling``), stop strings
(``stopping``), streamers (``streamers``) and the loop, ``GenerationMixin`` (``utils``), as transformers'
``generate``.

May import: ``pycohere.spec`` and below. It never imports the model: the loop drives any causal LM through
the small protocol documented on ``GenerationMixin``.
"""
from .config import GENERATION_CONFIG_NAME, GenerateDecoderOnlyOutput, GenerationConfig
from .stopping import StopStringCriteria, TokenBytes
from .streamers import BaseStreamer, TextIteratorStreamer, TextStreamer
from .utils import GenerationMixin

__all__ = ["GENERATION_CONFIG_NAME", "BaseStreamer", "GenerateDecoderOnlyOutput", "GenerationConfig",
           "GenerationMixin", "StopStringCriteria", "TextIteratorStreamer", "TextStreamer", "TokenBytes"]
