"""pycohere: a readable, exact NumPy reference implementation of Cohere's Command-R family.

This module is the public facade: it imports from the subpackages (their order and what each may import
are declared in ``pycohere.layout``) and nothing inside the package imports it.
"""
from . import checkpoints, errors
from .checkpoints import AutoConfig
from .config import Cohere2Config, CohereConfig
from .demo import DEMO_MODEL
from .export import convert_to_gguf, quantize_checkpoint
from .generation import (BaseStreamer, GenerateDecoderOnlyOutput, GenerationConfig, GenerationMixin,
                         TextIteratorStreamer, TextStreamer)
from .introspect import Recorder
from .model import (AutoModel, BaseModelOutputWithPast, CausalLMOutput, Cohere2ForCausalLM, Cohere2Model,
                    CohereForCausalLM, CohereModel)
# transformers' AutoModelForCausalLM, which also takes tensor_parallel= (pycohere.parallel): the model layer
# cannot import the services above it, so the facade offers the combined entry point.
from .parallel import TensorParallelAutoModelForCausalLM as AutoModelForCausalLM
from .pipeline import TextGenerationPipeline, pipeline
from .quant.config import QuantizationConfig
from .spec.cache import KVCache
from .text import CohereTokenizer, IncrementalDetokenizer, apply_chat_template, parse_grounded_answer, parse_tool_calls
from .version import __version__

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "BaseModelOutputWithPast", "CausalLMOutput",
    "Cohere2Config", "Cohere2ForCausalLM", "Cohere2Model", "CohereConfig", "CohereForCausalLM",
    "CohereModel", "KVCache", "Recorder", "errors", "__version__", "DEMO_MODEL",
    "CohereTokenizer", "IncrementalDetokenizer", "apply_chat_template", "parse_grounded_answer", "parse_tool_calls",
    "BaseStreamer", "GenerateDecoderOnlyOutput", "GenerationConfig", "GenerationMixin", "TextGenerationPipeline",
    "TextIteratorStreamer", "TextStreamer", "pipeline", "QuantizationConfig", "quantize_checkpoint",
    "convert_to_gguf", "checkpoints",
]
