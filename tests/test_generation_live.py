"""generate() and the logits processors against transformers (needs the oracle extra: torch, transformers).

Tiny random Cohere / Cohere2 checkpoints from tools/oracle.py are saved with transformers and loaded
by pycohere from the same files; greedy ids must be token-for-token identical to transformers'
``generate(do_sample=False)``, and the NumPy processors must give transformers' processed scores.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="live generation parity needs the oracle extra (pip install .[oracle])")
transformers = pytest.importorskip("transformers", reason="live generation parity needs the oracle extra")
from transformers.generation import logits_process as hf_lp  # noqa: E402

import oracle  # noqa: E402  (tools/oracle.py)
import pycohere  # noqa: E402
from pycohere.generation import sampling  # noqa: E402

pytestmark = [pytest.mark.oracle, pytest.mark.usefixtures("one_torch_thread")]

N_NEW = 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case name -> (pycohere model, transformers model), both from the same saved files."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            hf = oracle.save_case(name, folder)
            cache[name] = (pycohere.AutoModelForCausalLM.from_pretrained(folder, backend="numpy"), hf)
        return cache[name]
    return get


def hf_generate(hf, ids, mask, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw)
    return out


def assert_same_step_logits(ours, ref, what, tol=1e-4):
    """Raw logits of every step (output_logits): a stricter check than the ids."""
    assert len(ours) == len(ref), what
    for step, (a, b) in enumerate(zip(ours, ref)):
        b = b.numpy()
        err = np.abs(a - b).max()
        assert err <= tol * max(1.0, np.abs(b).max()), f"{what}: step {step} max |dlogit| {err:.2e}"


def assert_same_ids(ours, ref, what):
    ref = ref.numpy()
    assert ours.shape == ref.shape, f"{what}: shapes {ours.shape} vs {ref.shape}"
    diff = np.argwhere(ours != ref)
    if diff.size:
        at = tuple(diff[0])
        pytest.fail(f"{what}: first difference at (row, position) {at}: pycohere {ours[at]}, transformers {ref[at]}")


# --- greedy parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mha", "gqa", "qk_norm", "left_padded", "cohere2_default",
                                  "cohere2_layer_types", "cohere2_pattern4x"])
def test_greedy_ids_match_transformers(name, saved):
    """Includes a left-padded batch (left_padded, cohere2_pattern4x) and Cohere2 prompts of 20 tokens
    with windows of 8, 5 and 6 (cohere2_*)."""
    ours_model, hf = saved(name)
    ids, mask = oracle.case_inputs(name)
    kw = dict(max_new_tokens=N_NEW, return_dict_in_generate=True, output_logits=True)
    ref = hf_generate(hf, ids, mask, do_sample=False, **kw)
    ours = ours_model.generate(ids, attention_mask=mask, **kw)
    assert_same_ids(ours.sequences, ref.sequences, name)
    assert_same_step_logits(ours.logits, ref.logits, name)
    assert len(np.unique(ours.sequences[:, ids.shape[1]:])) >= 3  # not one repeated token


def test_default_backend_greedy_ids_match_transformers(tmp_path):
    # The tests above run the NumPy spec; users get backend="auto" (numba kernels when installed).
    hf = oracle.save_case("cohere2_pattern4x", tmp_path)
    model = pycohere.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = oracle.case_inputs("cohere2_pattern4x")
    ref = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=N_NEW)
    assert_same_ids(model.generate(ids, attention_mask=mask, max_new_tokens=N_NEW), ref, f"backend {model.backend}")


def test_static_cache_matches_transformers_static_cache(saved):
    ours_model, hf = saved("cohere2_pattern4x")  # padded batch, window 6 < prompt 20
    ids, mask = oracle.case_inputs("cohere2_pattern4x")
    ref = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=N_NEW, cache_implementation="static")
    ours = ours_model.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, cache_implementation="static")
    assert_same_ids(ours, ref, "static")


def test_left_padding_with_dynamic_rope_matches(saved):
    # Dynamic NTK scaling depends on the largest position id in the batch, so positions
    # cumsum(mask) - 1 (not the raw index) change the logits here: both rows are padded (by 3 and 7),
    # so the largest position is 26, not 29. (With RoPE alone a per-row shift would cancel out.)
    ours_model, hf = saved("rope_dynamic")
    ids, mask = oracle.case_inputs("rope_dynamic")
    for row, pad in ((0, 3), (1, 7)):
        ids[row, :pad] = 0
        ids[row, pad] = 5
        mask[row, :pad] = 0
    kw = dict(max_new_tokens=10, return_dict_in_generate=True, output_logits=True)
    ref = hf_generate(hf, ids, mask, do_sample=False, **kw)
    with pytest.warns(UserWarning, match="max_position_embeddings"):  # 30 + 10 tokens > 16, allowed
        ours = ours_model.generate(ids, attention_mask=mask, **kw)
    assert_same_ids(ours.sequences, ref.sequences, "rope_dynamic padded")
    # the ids alone would not notice wrong positions (logits move by ~1e-2 here); the logits do
    assert_same_step_logits(ours.logits, ref.logits, "rope_dynamic padded")


def test_eos_padding_matches_transformers(saved):
    ours_model, hf = saved("gqa")
    ids, mask = oracle.case_inputs("gqa")
    T = ids.shape[1]
    free = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=N_NEW).numpy()[:, T:]
    # an eos that row 0 produces early and row 1 later (or never): row 0 must be padded afterwards
    eos = next(int(t) for s, t in enumerate(free[0]) if s >= 1 and t not in free[0][:s])
    ref = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=N_NEW, eos_token_id=eos)
    ours = ours_model.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, eos_token_id=eos)
    assert_same_ids(ours, ref, "eos")
    assert (ours[0, T:] == 0).sum() > 0  # the padding really happened (pad_token_id 0)


def test_repetition_penalty_and_min_new_tokens_greedy_match(saved):
    ours_model, hf = saved("left_padded")
    ids, mask = oracle.case_inputs("left_padded")
    T = ids.shape[1]
    free = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=4).numpy()[:, T:]
    kw = dict(do_sample=False, max_new_tokens=N_NEW, repetition_penalty=1.4, min_new_tokens=3,
              eos_token_id=int(free[0, 0]))  # the first greedy token is banned until 3 tokens are out
    ref = hf_generate(hf, ids, mask, **kw)
    ours = ours_model.generate(ids, attention_mask=mask, **kw)
    assert_same_ids(ours, ref, "penalty")
    plain = ours_model.generate(ids, attention_mask=mask, max_new_tokens=N_NEW)
    assert (ours[:, T:T + 3] != plain[:, T:T + 3]).any()  # the settings changed the output


def test_sampling_scores_match_transformers(saved):
    """Step 0 of sampling sees the same prompt on both sides: the processed scores (repetition penalty,
    min new tokens, temperature, top-k, top-p, min-p in transformers' order) must agree."""
    ours_model, hf = saved("left_padded")
    ids, mask = oracle.case_inputs("left_padded")
    kw = dict(do_sample=True, temperature=0.6, top_k=30, top_p=0.8, min_p=0.02, repetition_penalty=1.3,
              min_new_tokens=2, eos_token_id=[6, 7], max_new_tokens=3, output_scores=True,
              return_dict_in_generate=True)
    ref = hf_generate(hf, ids, mask, **kw).scores[0].numpy()
    ours = ours_model.generate(ids, attention_mask=mask, seed=0, **kw).scores[0]
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    assert 1 < finite.sum(-1).min() < 30  # several tokens survive, many were filtered
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-4, atol=1e-5)


# --- processors on random logits --------------------------------------------------------------------------
def _random_inputs(seed=0, B=4, V=50, S=12):
    rng = np.random.default_rng(seed)
    scores = (3 * rng.standard_normal((B, V))).astype(np.float32)
    ids = rng.integers(0, V, size=(B, S))
    return ids, scores


PAIRS = [
    ("repetition", lambda: sampling.RepetitionPenaltyLogitsProcessor(1.7),
     lambda: hf_lp.RepetitionPenaltyLogitsProcessor(1.7)),
    ("repetition_ignore", lambda: sampling.RepetitionPenaltyLogitsProcessor(0.6, np.array([0, 3, 5, 11])),
     lambda: hf_lp.RepetitionPenaltyLogitsProcessor(0.6, torch.tensor([0, 3, 5, 11]))),
    ("temperature", lambda: sampling.TemperatureLogitsWarper(0.37),
     lambda: hf_lp.TemperatureLogitsWarper(0.37)),
    ("top_k", lambda: sampling.TopKLogitsWarper(7), lambda: hf_lp.TopKLogitsWarper(7)),
    ("top_k_keep", lambda: sampling.TopKLogitsWarper(2, min_tokens_to_keep=5),
     lambda: hf_lp.TopKLogitsWarper(2, min_tokens_to_keep=5)),
    ("top_p", lambda: sampling.TopPLogitsWarper(0.83), lambda: hf_lp.TopPLogitsWarper(0.83)),
    ("top_p_keep", lambda: sampling.TopPLogitsWarper(0.1, min_tokens_to_keep=3),
     lambda: hf_lp.TopPLogitsWarper(0.1, min_tokens_to_keep=3)),
    ("min_p", lambda: sampling.MinPLogitsWarper(0.15), lambda: hf_lp.MinPLogitsWarper(0.15)),
    ("min_p_keep", lambda: sampling.MinPLogitsWarper(0.9, min_tokens_to_keep=4),
     lambda: hf_lp.MinPLogitsWarper(0.9, min_tokens_to_keep=4)),
    ("min_new_tokens", lambda: sampling.MinNewTokensLengthLogitsProcessor(8, 5, [3, 17]),
     lambda: hf_lp.MinNewTokensLengthLogitsProcessor(8, 5, [3, 17])),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name, ours_factory, hf_factory", PAIRS, ids=[p[0] for p in PAIRS])
def test_processor_matches_transformers(name, ours_factory, hf_factory, seed):
    ids, scores = _random_inputs(seed)
    ref = hf_factory()(torch.tensor(ids), torch.tensor(scores)).numpy()
    ours = ours_factory()(ids, scores)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=0, atol=1e-6)
    if name not in ("repetition", "repetition_ignore", "temperature"):  # filters must filter something
        assert finite.sum() < finite.size
    else:
        assert (ours != scores).any()
