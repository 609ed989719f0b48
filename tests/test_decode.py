"""The compiled one-token step (pycohere.kernels.decode) in whole models: greedy generation with the numba
backend equals the NumPy spec step for step, on every parity fixture (GQA/MQA, qk-norm, biases, GELU,
every RoPE type, Cohere2 windows and NoPE layers, F32/F16/BF16 files, left-padded batches) and on
quantized weights."""
import numpy as np
import pytest

import pycohere
from conftest import DATA

PARITY = DATA / "parity"
CASES = sorted(p.name for p in PARITY.iterdir() if p.is_dir())


def _generate(model, exp, n=6):
    mask = exp["attention_mask"] if bool(exp["use_mask"]) else None
    return model.generate(exp["input_ids"], attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=[],
                          return_dict_in_generate=True, output_logits=True)


@pytest.mark.parametrize("name", CASES)
def test_decode_steps_equal_the_spec(name):
    exp = np.load(PARITY / name / "expected.npz")
    fast = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / name, backend="numba")
    spec = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / name, backend="numpy")
    assert fast.model._decoder is not None  # every matrix of these files has a decode kernel
    a, b = _generate(fast, exp), _generate(spec, exp)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    for step, (la, lb) in enumerate(zip(a.logits, b.logits)):
        scale = max(1.0, float(np.abs(lb).max()))
        assert np.abs(la - lb).max() <= 1e-5 * scale, f"{name}, step {step}"


@pytest.mark.parametrize("scheme", ["int8", "int4", "int4-asym", "nf4", "q8_0", "q4_0", "q4_1"])
def test_quantized_decode_steps_equal_the_spec(scheme):
    qc = pycohere.QuantizationConfig(scheme)
    fast = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numba", quantization_config=qc)
    spec = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numpy", quantization_config=qc)
    assert fast.model._decoder is not None
    ids = np.array([[5, 17, 250, 3, 99], [5, 480, 21, 7, 1000]])
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=[], return_dict_in_generate=True, output_logits=True)
    a, b = fast.generate(ids, **kw), spec.generate(ids, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    for la, lb in zip(a.logits, b.logits):
        assert np.abs(la - lb).max() <= 1e-5 * max(1.0, float(np.abs(lb).max()))


def test_sliding_window_caches_compact_under_the_step():
    """A Cohere2 model decoding past its window: the sliding layers' caches compact (absolute indices move)
    while the step writes straight into them."""
    name = next(c for c in CASES if c.startswith("cohere2"))
    exp = np.load(PARITY / name / "expected.npz")
    fast = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / name, backend="numba")
    spec = pycohere.AutoModelForCausalLM.from_pretrained(PARITY / name, backend="numpy")
    a, b = _generate(fast, exp, n=40), _generate(spec, exp, n=40)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert any(layer.start > 0 for layer in a.past_key_values.layers)
    np.testing.assert_allclose(a.logits[-1], b.logits[-1], rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b.logits[-1]).max())))


def test_the_step_rounds_activations_as_llama_cpp_when_asked():
    """activations="llama.cpp": the compiled step (kernels.rounding, then the integer rows of kernels.irows or
    the block kernels) follows the spec's rounded matmuls, not the exact ones. The two modes differ by ~0.05-0.1
    here; the step sits within float32 noise (~1e-5) of the rounded spec, except where a value on a rounding
    boundary rounds the other way (summation order): one such flip moved one step's logits by 9% of the modes'
    gap. So: most step-rows within 0.1% of the gap, none beyond 25%; dropping the rounding puts all near 100%."""
    ids = np.array([[5, 17, 250, 3, 99], [5, 480, 21, 7, 1000]])
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=[], return_dict_in_generate=True, output_logits=True)

    def run(backend, activations):
        model = pycohere.AutoModelForCausalLM.from_pretrained(
            pycohere.DEMO_MODEL, backend=backend, activations=activations,
            quantization_config=pycohere.QuantizationConfig("q8_0"))
        return model, model.generate(ids, **kw)
    fast_model, fast = run("numba", "llama.cpp")
    assert fast_model.model._decoder is not None
    report = "\n".join(fast_model.kernel_report())
    assert "rounded as llama.cpp (q8_0)" in report
    from pycohere.kernels import dispatch, int8_dot, irows, tiles
    prefill = ("integer GEMM on repacked 16-row tiles from" if irows.TILES
               else f"dequantized tiles, then kernels.tiles.{tiles.gemm.__name__}, on the rounded activations from"
               if dispatch._float_prefill(tiles.BROADCAST_MIN_ROWS, "q8_0") else "integer rows, four activation rows")
    assert f"prefill matmuls: q8_0: {prefill}" in report if int8_dot.AVAILABLE else "rounded activations" in report
    _, rounded = run("numpy", "llama.cpp")
    _, exact = run("numpy", "float32")
    ratios = []
    for step in range(1, len(fast.logits)):  # the one-token steps (logits[0] is the prompt's)
        mode_gap = np.abs(rounded.logits[step] - exact.logits[step]).max(axis=-1)
        assert (mode_gap > 1e-2).all(), step  # the modes really differ on this model
        ratios += list(np.abs(fast.logits[step] - rounded.logits[step]).max(axis=-1) / mode_gap)
    ratios = np.array(ratios)
    assert ratios.max() <= 0.25 and np.mean(ratios <= 1e-3) >= 0.75, ratios

def test_the_kernel_report_names_the_prefill_kernels():
    """bf16 weights: the float GEMM in exact mode; under activations="llama.cpp" the bf16 dot products where
    the CPU has AVX512-BF16 (kernels.bf16_dot), else the float kernels on the rounded activations."""
    from pycohere.kernels import bf16_dot
    exact = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numba")
    assert "prefill matmuls: BF16: register-tiled GEMM, read in place" in "\n".join(exact.kernel_report())
    fast = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numba", activations="llama.cpp")
    want = "bf16 dot products (vdpbf16ps" if bf16_dot.AVAILABLE else "float kernels on the rounded activations"
    assert f"prefill matmuls: BF16: {want}" in "\n".join(fast.kernel_report())
    spec = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend="numpy")
    assert "prefill matmuls" not in "\n".join(spec.kernel_report())
