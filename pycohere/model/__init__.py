"""The model: typed parameters loaded from a weight source (``params``), validation at the boundary
(``inputs``), the forward and the transformers-named classes (``modeling``), the numba backend's fast
layer (``engine``) and the output classes (``outputs``).

May import: ``pycohere.generation`` and below (the model classes inherit the generation loop).
"""
from .modeling import (AutoModel, AutoModelForCausalLM, Cohere2ForCausalLM, Cohere2Model, CohereForCausalLM,
                       CohereModel)
from .outputs import BaseModelOutputWithPast, CausalLMOutput

__all__ = ["AutoModel", "AutoModelForCausalLM", "BaseModelOutputWithPast", "CausalLMOutput", "Cohere2ForCausalLM",
           "Cohere2Model", "CohereForCausalLM", "CohereModel"]
