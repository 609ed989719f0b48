"""Hooks and run_with_cache on the tap names (pycohere.spec.taps): interventions replace an activation for the
rest of the forward; no hook leaves the forward (and its fast path) unchanged."""
import numpy as np
import pytest

import pycohere
from pycohere.errors import InputError

IDS = np.array([[5, 17, 250, 3, 99, 481, 8]])


@pytest.fixture(scope="module", params=["numba", "numpy"])
def demo(request):
    return pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend=request.param)


def test_run_with_cache_returns_every_tap_and_the_same_logits(demo):
    plain = demo(IDS).logits
    out, cache = demo.run_with_cache(IDS)
    np.testing.assert_allclose(out.logits, plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache["logits"], out.logits)
    assert cache["layers.3.q_rope"].shape == (1, 7, 8, 32) and cache["layers.0.attn_probs"].shape == (1, 8, 7, 7)
    _, some = demo.run_with_cache(IDS, names=["layers.1.*"])
    assert some and all(k.startswith("layers.1.") for k in some)


def test_a_hook_replaces_the_activation_downstream(demo):
    _, clean = demo.run_with_cache(IDS)
    out, cache = demo.run_with_cache(IDS, hooks={"layers.2.mlp_out": lambda a, name: np.zeros_like(a)})
    assert not cache["layers.2.mlp_out"].any()            # the cache holds what the forward used
    np.testing.assert_array_equal(cache["layers.1.output"], clean["layers.1.output"])  # upstream untouched
    # layer 2's output is x + attn + 0
    np.testing.assert_allclose(cache["layers.2.output"], clean["layers.1.output"] + clean["layers.2.attn_out"],
                               rtol=1e-6, atol=1e-6)
    assert np.abs(out.logits - clean["logits"]).max() > 1e-3


def test_identity_hooks_change_nothing_and_bad_hooks_are_named(demo):
    ref = demo(IDS).logits
    same = demo(IDS, hooks={"*": lambda a, name: a}).logits
    np.testing.assert_allclose(same, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="matched no intermediate"):
        demo(IDS, hooks={"layers.0.q_rotated": lambda a, name: a})
    with pytest.raises(InputError, match="same shape"):
        demo(IDS, hooks={"layers.0.q": lambda a, name: a[:, :1]})
    with pytest.raises(InputError, match="hooks must be a dict"):
        demo(IDS, hooks=[lambda a, n: a])


def test_no_hook_is_the_plain_forward_bit_for_bit(demo):
    np.testing.assert_array_equal(demo(IDS, hooks=None).logits, demo(IDS).logits)
