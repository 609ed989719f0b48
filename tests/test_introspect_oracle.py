"""The logit lens against transformers (needs the oracle extra): transformers' hidden states put through
transformers' own final norm, lm_head and logit_scale (CohereForCausalLM.forward: logits = lm_head(h) *
logit_scale) give pycohere's lens at every layer; and a head ablation done with a torch forward hook on
o_proj's input gives pycohere's zero_head logits."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the lens oracle needs the oracle extra (pip install .[oracle])")
pytest.importorskip("transformers", reason="the lens oracle needs the oracle extra")

import pycohere  # noqa: E402
from pycohere.introspect import analysis as A  # noqa: E402

import oracle  # noqa: E402  (tools/oracle.py)

CASES = ["qk_norm", "untied", "cohere2_layer_types", "gqa"]


@pytest.mark.oracle
@pytest.mark.parametrize("name", CASES)
def test_lens_equals_transformers_norm_and_head_on_its_hidden_states(tmp_path, one_torch_thread, name):
    folder, hf = tmp_path, oracle.save_case(name, tmp_path)
    ids, _ = oracle.case_inputs(name)
    ref = oracle.hf_forward(hf, ids, output_hidden_states=True)
    hidden = [h.numpy() for h in ref.hidden_states]  # transformers: inputs of layers 0..L-1, then the final norm's output
    with torch.no_grad():
        hf_lens = [(hf.lm_head(hf.model.norm(torch.tensor(h))) * hf.logit_scale).numpy() for h in hidden[:-1]]
    model = pycohere.AutoModelForCausalLM.from_pretrained(folder)
    out, cache = model.run_with_cache(ids)
    lens = A.logit_lens(model, cache)
    L = model.config.num_hidden_layers
    assert lens.shape[0] == L + 1 and len(hf_lens) == L
    scale = np.abs(ref.logits.numpy()).max()
    for layer in range(L):   # row l: the residual entering layer l
        np.testing.assert_allclose(lens[layer], hf_lens[layer], rtol=0, atol=2e-5 * max(1.0, scale), err_msg=str(layer))
    np.testing.assert_allclose(lens[L], ref.logits.numpy(), rtol=0, atol=2e-5 * max(1.0, scale))
    assert np.std(hf_lens[-1]) > 0.1  # varied numbers: the comparison has teeth


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["gqa", "cohere2_layer_types"])
def test_zero_head_equals_a_torch_hook_on_o_proj(tmp_path, one_torch_thread, name):
    folder, hf = tmp_path, oracle.save_case(name, tmp_path)
    ids, _ = oracle.case_inputs(name)
    layer, head, Dh = 1, 2, hf.config.hidden_size // hf.config.num_attention_heads

    def zero_head(module, args):
        x = args[0].clone()
        x[..., head * Dh:(head + 1) * Dh] = 0   # o_proj's input is the heads' contexts, concatenated
        return (x,)
    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        ref = oracle.hf_forward(hf, ids).logits.numpy()
    finally:
        handle.remove()
    model = pycohere.AutoModelForCausalLM.from_pretrained(folder)
    ours = model(ids, hooks=A.zero_head(layer, head)).logits
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))
    assert np.abs(ref - oracle.hf_forward(hf, ids).logits.numpy()).max() > 1e-3  # the ablation mattered
