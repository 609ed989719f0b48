"""A weight source's tensors -> the typed parameters the layer functions take (``ModelParams``), by the
one parameter table (``pycohere.spec.params``)."""
from __future__ import annotations

import numpy as np

from ..checkpoints.manifest import check_manifest
from ..kernels.dispatch import fast_weight
from ..quant.activations import LlamaCppActivations
from ..spec.params import LAYER_PARAMETERS, MATRIX, LayerParams, ModelParams, hf_name, present


def load_params(source, config, dtype, backend: str, materialize: bool = False,
                activations: str = "float32") -> ModelParams:
    """Every tensor of ``source`` (a ``pycohere.checkpoints.WeightSource``) as the model's parameters.

    Matrices become ``Weight`` objects over the mmap'd views (widened per use unless ``materialize``;
    ``QuantizedWeight`` over packed views of quantized checkpoints, or quantized now when the source
    was opened with a QuantizationConfig); the small vectors (norms, biases) are widened to the
    compute dtype now. ``activations="llama.cpp"`` rounds the input of every matmul as llama.cpp's
    CPU dot products do for the weight's type (``pycohere.quant.activations``). With the numba
    backend (float32) every matrix is wrapped in its kernels, chosen once here
    (``pycohere.kernels.dispatch.fast_weight``).
    """
    check_manifest(config, source.shapes, where=str(source.path), problems=source.problems)
    source.check_quantization_plan()  # every group size fits, before quantizing anything
    fast = backend == "numba" and np.dtype(dtype) == np.float32

    def matrix(name):
        w = source.weight(name, dtype, materialize)
        if activations == "llama.cpp":
            w = LlamaCppActivations(w, name)
        return fast_weight(w) if fast else w

    def tensor(param, layer=None):
        name = hf_name(param, layer)
        return matrix(name) if param.kind == MATRIX else source.vector(name, dtype)

    layers = [LayerParams(**{p.field: tensor(p, i) for p in LAYER_PARAMETERS if present(p, config)})
              for i in range(config.num_hidden_layers)]
    embed = matrix("model.embed_tokens.weight")
    # COHERE: the output head is the input embedding (tied) unless tie_word_embeddings is false.
    # A file that carries lm_head.weight anyway is used as it is, as transformers 5 does (it does
    # not tie two different saved tensors).
    head = matrix("lm_head.weight") if "lm_head.weight" in source.shapes else embed  # (logical names)
    return ModelParams(embed_tokens=embed, layers=layers, norm=source.vector("model.norm.weight", dtype),
                       lm_head=head)
