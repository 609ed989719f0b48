"""pycohere: a readable, exact NumPy reference implementation of Cohere's Command-R family."""
import os as _os

from .cache import KVCache
from .config import AutoConfig, Cohere2Config, CohereConfig
from .model import (AutoModel, AutoModelForCausalLM, BaseModelOutputWithPast, CausalLMOutput,
                    Cohere2ForCausalLM, Cohere2Model, CohereForCausalLM, CohereModel)
from .generation import (BaseStreamer, GenerateDecoderOnlyOutput, GenerationConfig, GenerationMixin,
                         TextIteratorStreamer, TextStreamer)
from .pipeline import TextGenerationPipeline, pipeline
from .tokenizer import CohereTokenizer, IncrementalDetokenizer
from .chat import apply_chat_template, parse_grounded_answer, parse_tool_calls
from .trace import Recorder
from .quant.config import QuantizationConfig
from .quant.convert import quantize_checkpoint
from .gguf_export import convert_to_gguf
from . import formats
from . import errors

__version__ = "0.1.0"

# the bundled demo model (a small Cohere-architecture model trained in this project: pycohere/demo)
DEMO_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "demo")

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "BaseModelOutputWithPast", "CausalLMOutput",
    "Cohere2Config", "Cohere2ForCausalLM", "Cohere2Model", "CohereConfig", "CohereForCausalLM",
    "CohereModel", "KVCache", "Recorder", "errors", "__version__", "DEMO_MODEL",
    "CohereTokenizer", "IncrementalDetokenizer", "apply_chat_template", "parse_grounded_answer", "parse_tool_calls",
    "BaseStreamer", "GenerateDecoderOnlyOutput", "GenerationConfig", "GenerationMixin", "TextGenerationPipeline",
    "TextIteratorStreamer", "TextStreamer", "pipeline", "QuantizationConfig", "quantize_checkpoint",
    "convert_to_gguf", "formats",
]
